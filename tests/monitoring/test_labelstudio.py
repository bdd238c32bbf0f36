"""Label Studio's formats (monitoring/labelstudio.py) and ``garbage labels``: exports parsed back
to logged predictions, tasks with pre-annotations, the labelling config, and the import through
the real collector's /feedback (tests/monitoring/data/ holds exports in Label Studio's shape)."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli.app import app
from garbage.core.names import TRASHNET_CLASSES
from monitoring.collector import CollectorAuth, create_app, parse_credentials
from monitoring.labelstudio import (
    FROM_NAME,
    ImportedLabel,
    LabelStudioFormatError,
    build_task,
    labelling_config,
    load_export,
    parse_export,
)
from monitoring.review_cli import (
    CollectorRefusedError,
    CollectorTokenError,
    client_token,
    send_labels,
)
from monitoring.store import EventMeta, InferenceStore

DATA = Path(__file__).resolve().parent / "data"
EXPORT = DATA / "labelstudio_export.json"
INVALID = DATA / "labelstudio_export_invalid.json"
runner = CliRunner()
#: The credential of the in-process collectors below (the real one's is secured_collector's).
LABELLER, TOKEN = "sorting-team", "sorting-team-token-0123456789"


def _auth() -> CollectorAuth:
    return CollectorAuth(feedback=parse_credentials(f"{LABELLER}:{TOKEN}", "the test"))


def _labels(parsed) -> dict[tuple[str, int], str]:
    return {(label.inference_id, label.item): label.label for label in parsed.labels}


def _annotation(choice: str, updated_at: str, *, cancelled: bool = False, ident: int = 1) -> dict:
    result = [
        {
            "id": f"r{ident}",
            "from_name": FROM_NAME,
            "to_name": "image",
            "type": "choices",
            "value": {"choices": [choice]},
        }
    ]
    return {
        "id": ident,
        "result": [] if cancelled else result,
        "was_cancelled": cancelled,
        "created_at": updated_at,
        "updated_at": updated_at,
        "completed_by": 1,
    }


def _task(ident: int, inference_id: str, annotations: list[dict], item: object = 0) -> dict:
    return {
        "id": ident,
        "data": {"image": "http://x/i.jpg", "inference_id": inference_id, "item": item},
        "annotations": annotations,
    }


# --- parsing an export -------------------------------------------------------------------------


def test_the_export_gives_the_latest_non_cancelled_annotation_of_each_task() -> None:
    parsed = load_export(EXPORT)
    assert parsed.tasks == 5
    assert _labels(parsed) == {
        ("req-a", 0): "glass",
        ("req-b", 0): "cardboard",  # the later of two, listed first; a newer cancelled one ignored
        ("req-e", 1): "metal",
    }
    assert parsed.skipped_by_reason() == {"cancelled": 1, "not annotated": 1}
    assert sorted(t.task_id for t in parsed.skipped) == [103, 104]
    by_id = {label.inference_id: label for label in parsed.labels}
    assert by_id["req-b"].completed_by == "4" and by_id["req-b"].annotation_id == 5003
    assert by_id["req-e"].completed_by == "sorter@example.com"  # newer exports: a user object
    assert by_id["req-e"].annotated_at == datetime(2026, 11, 22, 8, 15)  # naive UTC
    # The task's selection (how the review picked the image) travels with the label.
    assert by_id["req-a"].feedback() == {
        "inference_id": "req-a",
        "item": 0,
        "label": "glass",
        "selection": "uncertain",
    }


def test_a_task_without_a_known_selection_sends_none() -> None:
    when = "2026-11-20T10:00:00Z"
    tasks = [
        _task(1, "req-x", [_annotation("glass", when)]),
        _task(2, "req-y", [_annotation("paper", when)]),
    ]
    tasks[1]["data"]["selection"] = "by hand"
    parsed = parse_export(tasks)
    assert [label.selection for label in parsed.labels] == [None, None]
    assert "selection" not in parsed.labels[0].feedback()


def test_the_latest_annotation_wins_whatever_the_order_of_the_list() -> None:
    older = _annotation("paper", "2026-11-20T10:00:00Z", ident=1)
    newer = _annotation("glass", "2026-11-20T09:00:00-03:00", ident=2)  # 12:00 UTC
    for listed in ([older, newer], [newer, older]):
        parsed = parse_export([_task(1, "r", listed)])
        assert _labels(parsed) == {("r", 0): "glass"}


def test_a_cancelled_annotation_never_counts_even_when_it_is_the_latest() -> None:
    live = _annotation("metal", "2026-11-20T10:00:00Z", ident=1)
    skipped = _annotation("glass", "2026-11-21T10:00:00Z", ident=2, cancelled=True)
    skipped["result"] = live["result"]  # a cancelled annotation that still carries a result
    assert _labels(parse_export([_task(1, "r", [live, skipped])])) == {("r", 0): "metal"}
    only_cancelled = parse_export([_task(2, "s", [skipped])])
    assert only_cancelled.labels == [] and only_cancelled.skipped_by_reason() == {"cancelled": 1}


def test_two_tasks_of_one_image_give_the_later_label_and_the_other_is_skipped() -> None:
    first = _task(1, "r", [_annotation("paper", "2026-11-20T10:00:00Z")])
    second = _task(2, "r", [_annotation("trash", "2026-11-20T11:00:00Z")])
    for export in ([first, second], [second, first]):
        parsed = parse_export(export)
        assert _labels(parsed) == {("r", 0): "trash"}
        [skipped] = parsed.skipped
        assert (
            skipped.task_id == 1 and "superseded" in skipped.reason and "task 2" in skipped.reason
        )


def test_a_choice_that_is_not_a_class_and_a_task_without_our_ids_are_errors_naming_the_task() -> (
    None
):
    with pytest.raises(LabelStudioFormatError) as error:
        load_export(INVALID)
    message = str(error.value)
    assert message.startswith("2 task(s) cannot be imported")
    assert "task 201" in message and "'styrofoam'" in message and "glass" in message
    assert "task 202" in message and "inference_id" in message
    assert len(error.value.problems) == 2


def test_without_strict_the_valid_tasks_are_returned_with_the_problems() -> None:
    parsed = load_export(INVALID, strict=False)
    assert _labels(parsed) == {("req-h", 0): "trash"}
    assert [p.task for p in parsed.invalid] == ["task 201", "task 202"]
    assert "styrofoam" in parsed.invalid[0].reason


def test_choices_are_checked_against_the_given_classes() -> None:
    parsed = parse_export(
        json.loads(INVALID.read_text()), [*TRASHNET_CLASSES, "styrofoam"], strict=False
    )
    assert ("req-f", 0) in _labels(parsed)
    with pytest.raises(LabelStudioFormatError, match="'glass', which is not one of the classes"):
        parse_export(json.loads(EXPORT.read_text()), ["bottle", "can"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not JSON"),
        ('{"tasks": []}', "list of tasks, got dict"),
        ("[1, 2]", "entry 0 of the export is int"),
        ('[{"image": "http://x/1.jpg", "material": "glass", "id": 3}]', "JSON_MIN"),
    ],
)
def test_a_malformed_file_is_an_error_saying_what_it_is(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "export.json"
    path.write_text(text)
    with pytest.raises(LabelStudioFormatError, match=message):
        load_export(path)


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(LabelStudioFormatError, match=r"cannot read the export .*missing\.json"):
        load_export(tmp_path / "missing.json")


def test_one_task_object_is_read_as_an_export_of_one() -> None:
    task = _task(9, "r", [_annotation("glass", "2026-11-20T10:00:00Z")])
    assert _labels(parse_export(task)) == {("r", 0): "glass"}


@pytest.mark.parametrize(
    ("item", "expected"), [(2, 2), ("3", 3), (-1, None), (True, None), ("x", None)]
)
def test_item_is_a_number_from_zero_or_its_digits(item: object, expected: int | None) -> None:
    parsed = parse_export(
        [_task(1, "r", [_annotation("glass", "2026-11-20T10:00:00Z")], item=item)], strict=False
    )
    if expected is None:
        assert parsed.labels == [] and "no inference_id" in parsed.invalid[0].reason
    else:
        assert _labels(parsed) == {("r", expected): "glass"}


def test_two_choices_in_a_single_choice_config_are_an_error() -> None:
    annotation = _annotation("glass", "2026-11-20T10:00:00Z")
    annotation["result"][0]["value"]["choices"] = ["glass", "metal"]
    parsed = parse_export([_task(1, "r", [annotation])], strict=False)
    assert parsed.labels == [] and "chooses 2 classes" in parsed.invalid[0].reason


def test_an_annotation_without_our_choice_is_skipped() -> None:
    annotation = _annotation("glass", "2026-11-20T10:00:00Z")
    annotation["result"][0]["from_name"] = "comment"
    parsed = parse_export([_task(1, "r", [annotation])])
    assert parsed.labels == [] and parsed.skipped_by_reason() == {"no 'material' choice": 1}


# --- tasks and the labelling config ------------------------------------------------------------


def test_a_task_carries_the_image_our_ids_and_the_prediction_as_a_pre_annotation() -> None:
    sha = "ab" * 32
    task = build_task(
        image_url=f"http://c/images/{sha}",
        inference_id="req-1",
        item=2,
        sha256=sha,
        prediction="glass",
        score=0.42,
        model_version="garbage-classifier:3",
        extra={"selection": "random"},
    )
    assert task["data"] == {
        "image": f"http://c/images/{sha}",
        "inference_id": "req-1",
        "item": 2,
        "sha256": sha,
        "selection": "random",
    }
    [prediction] = task["predictions"]
    assert prediction["model_version"] == "garbage-classifier:3" and prediction["score"] == 0.42
    [result] = prediction["result"]
    assert {k: result[k] for k in ("from_name", "to_name", "type", "value")} == {
        "from_name": "material",
        "to_name": "image",
        "type": "choices",
        "value": {"choices": ["glass"]},
    }
    bare = build_task(image_url="u", inference_id="r", item=0, sha256=sha)
    assert "predictions" not in bare
    with pytest.raises(ValueError, match="may not replace"):
        build_task(image_url="u", inference_id="r", item=0, sha256=sha, extra={"item": 5})


def test_a_task_annotated_in_label_studio_comes_back_as_its_label() -> None:
    task = build_task(
        image_url="u", inference_id="req-9", item=1, sha256="c" * 64, prediction="glass"
    )
    exported = copy.deepcopy(task) | {"id": 77}
    result = copy.deepcopy(task["predictions"][0]["result"])
    result[0]["value"]["choices"] = ["plastic"]  # the annotator corrected the pre-annotation
    exported["annotations"] = [
        {"id": 1, "result": result, "was_cancelled": False, "updated_at": "2026-11-20T10:00:00Z"}
    ]
    [label] = parse_export([exported]).labels
    assert label == ImportedLabel(
        "req-9", 1, "plastic", task_id=77, annotation_id=1, annotated_at=datetime(2026, 11, 20, 10)
    )


def test_the_labelling_config_lists_the_classes_as_single_choices_on_the_image() -> None:
    root = ET.fromstring(labelling_config())
    [image] = root.iter("Image")
    assert image.attrib == {"name": "image", "value": "$image"}
    [choices] = root.iter("Choices")
    assert choices.attrib["name"] == FROM_NAME and choices.attrib["toName"] == "image"
    assert choices.attrib["choice"] == "single"
    assert [c.attrib["value"] for c in choices.iter("Choice")] == list(TRASHNET_CLASSES)
    odd = ET.fromstring(labelling_config(['tin & "foil"', "glass"]))
    assert [c.attrib["value"] for c in odd.iter("Choice")] == ['tin & "foil"', "glass"]
    with pytest.raises(ValueError, match="distinct"):
        labelling_config(["glass", "glass"])


def test_labels_config_prints_the_config_for_the_given_classes() -> None:
    result = runner.invoke(app, ["labels", "config", "--classes", "bottle, can"])
    assert result.exit_code == 0, result.output
    choices = ET.fromstring(result.stdout).iter("Choice")
    assert [c.attrib["value"] for c in choices] == ["bottle", "can"]


# --- the credential and the sender -------------------------------------------------------------


def test_the_client_token_is_the_one_entry_of_the_variable_or_the_file(tmp_path: Path) -> None:
    token = "t" * 20
    assert client_token({"GARBAGE_COLLECTOR_TOKEN": f"me:{token}"}, None) == token
    assert client_token({"GARBAGE_COLLECTOR_TOKEN": token}, None) == token
    file = tmp_path / "token"
    file.write_text(f"# mine\nme:{token}\n")
    assert client_token({"GARBAGE_COLLECTOR_TOKEN": "other:" + "x" * 20}, file) == token
    with pytest.raises(CollectorTokenError, match="holds no entry"):
        client_token({}, None)
    with pytest.raises(CollectorTokenError, match="holds 2 entries"):
        client_token({"GARBAGE_COLLECTOR_TOKEN": f"a:{token},b:{token}"}, None)
    with pytest.raises(CollectorTokenError, match="cannot read the token file"):
        client_token({}, tmp_path / "missing")


def _logged_store(tmp_path: Path, ids: list[tuple[str, int]]) -> InferenceStore:
    store = InferenceStore(str(tmp_path / "log.db"))
    for inference_id in dict.fromkeys(i for i, _ in ids):
        items = max(item for i, item in ids if i == inference_id) + 1
        meta = EventMeta(inference_id=inference_id, time=datetime.now(UTC).replace(tzinfo=None))
        store.record_response(meta, [("plastic", 0.5, None)] * items)
    return store


def _label(inference_id: str, label: str, item: int = 0, task: int = 1) -> ImportedLabel:
    return ImportedLabel(inference_id, item, label, task_id=task)


def test_a_batch_the_collector_refuses_is_resent_one_by_one_so_each_failure_has_its_reason(
    tmp_path: Path,
) -> None:
    store = _logged_store(tmp_path, [("a", 0), ("b", 0), ("c", 0)])
    labels = [
        _label("a", "glass", task=1),
        _label("b", "styrofoam", task=2),  # not one of the collector's classes: 422
        _label("c", "metal", item=4, task=3),  # out of range: 422
        _label("zzz", "paper", task=4),  # never logged
        _label("c", "metal", task=5),
    ]
    with TestClient(create_app(store, list(TRASHNET_CLASSES), auth=_auth())) as client:
        result = send_labels(labels, "http://testserver", TOKEN, batch_size=3, client=client)
    assert result.imported == 2 and result.labeller == LABELLER
    reasons = {f["task"]: f["reason"] for f in result.failed}
    assert set(reasons) == {2, 3, 4}
    assert "unknown labels ['styrofoam']" in reasons[2]
    assert "item must be 0..0" in reasons[3]
    assert reasons[4] == "no logged prediction with this inference_id and item"
    assert store.label_history("a")[0]["label"] == "glass"
    store.close()


def test_a_refused_credential_stops_the_import(tmp_path: Path) -> None:
    store = _logged_store(tmp_path, [("a", 0)])
    with (
        TestClient(create_app(store, list(TRASHNET_CLASSES), auth=_auth())) as client,
        pytest.raises(CollectorRefusedError, match="403"),
    ):
        send_labels([_label("a", "glass")], "http://testserver", "w" * 32, client=client)
    assert store.label_history("a") == []
    store.close()


def test_an_unreachable_collector_fails_every_label_with_the_reason() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with httpx.Client(transport=httpx.MockTransport(refuse)) as client:
        result = send_labels(
            [_label(str(i), "glass", task=i) for i in range(5)],
            "http://collector",
            "t" * 20,
            batch_size=2,
            client=client,
            attempts=2,
            backoff=0,
        )
    assert result.imported == 0 and len(result.failed) == 5
    assert "cannot be reached: ConnectError" in result.failed[0]["reason"]
    assert result.failed[-1]["reason"] == "not sent: the collector was unavailable"


def test_a_server_error_is_retried() -> None:
    calls: list[int] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(503, json={"detail": "retry later"})
        body = json.loads(request.content)
        results = [{**entry, "matched": True} for entry in body]
        return httpx.Response(
            200, json={"matched": len(body), "labeller": "me", "results": results}
        )

    with httpx.Client(transport=httpx.MockTransport(flaky)) as client:
        result = send_labels([_label("a", "glass")], "http://c", "t" * 20, client=client, backoff=0)
    assert result.imported == 1 and result.failed == [] and len(calls) == 2


# --- `garbage labels import` against the real collector ---------------------------------------


def _env(header: dict[str, str] | None) -> dict[str, str]:
    """The command's credential: the fixture's token under a name the collector does not use."""
    token = header["Authorization"].removeprefix("Bearer ") if header else ""
    return {"GARBAGE_COLLECTOR_TOKEN": f"whoever-i-say:{token}" if token else ""}


def _import(export: Path, url: str, *extra: str, env: dict[str, str]):
    return runner.invoke(
        app, ["labels", "import", str(export), "--collector", url, *extra], env=env
    )


def _log_fixture_rows(store: InferenceStore) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    for inference_id, items in (
        ("req-a", 1),
        ("req-b", 1),
        ("req-c", 1),
        ("req-d", 1),
        ("req-e", 2),
    ):
        store.record_response(
            EventMeta(inference_id=inference_id, time=now), [("plastic", 0.4, None)] * items
        )


@pytest.mark.integration
def test_labels_import_sends_the_export_through_feedback_and_keeps_the_history(
    secured_collector, collector_auth_header, tmp_path: Path
) -> None:
    store: InferenceStore = secured_collector.store
    env = _env(collector_auth_header)
    _log_fixture_rows(store)
    result = _import(EXPORT, secured_collector.url, "--batch-size", "2", env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["tasks"], report["imported"], report["skipped"], report["failed"]) == (
        5,
        3,
        2,
        0,
    )
    assert report["skipped_reasons"] == {"cancelled": 1, "not annotated": 1}
    labeller = report["labeller"]  # the name the collector knows the credential by
    assert labeller and labeller != "whoever-i-say"
    rows = store.load_window(columns=["inference_id", "item", "true_label", "label_selection"])
    labels = {(r.inference_id, r.item): r.true_label for r in rows.itertuples()}
    assert labels[("req-a", 0)] == "glass" and labels[("req-b", 0)] == "cardboard"
    picked = {(r.inference_id, r.item): r.label_selection for r in rows.itertuples()}
    # How the review picked each image came back with the export and reached the store.
    assert picked[("req-a", 0)] == "uncertain" and picked[("req-b", 0)] == "random"
    assert picked[("req-c", 0)] is None
    assert labels[("req-e", 1)] == "metal" and labels[("req-e", 0)] is None
    assert labels[("req-c", 0)] is None  # cancelled in Label Studio: no label

    # A re-label in Label Studio, exported and imported again: the latest counts, both are kept.
    relabelled = json.loads(EXPORT.read_text())
    relabelled[0]["annotations"][0]["result"][0]["value"]["choices"] = ["trash"]
    second = tmp_path / "second.json"
    second.write_text(json.dumps(relabelled))
    assert _import(second, secured_collector.url, env=env).exit_code == 0
    history = store.label_history("req-a")
    assert [(h["label"], h["labeller"]) for h in history] == [
        ("glass", labeller),
        ("trash", labeller),
    ]
    assert (
        store.load_window(columns=["inference_id", "true_label"])
        .set_index("inference_id")
        .loc["req-a", "true_label"]
        == "trash"
    )
    # Importing the same export again changes no label; the history records the import.
    assert _import(second, secured_collector.url, env=env).exit_code == 0
    assert [h["label"] for h in store.label_history("req-a")] == ["glass", "trash", "trash"]

    # `garbage labels history` shows who gave which label, when, and with which selection.
    shown = runner.invoke(app, ["labels", "history", "req-a", "--db", store.url])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0] == "req-a item 0: 3 label(s), oldest first"
    assert [line.split()[2:] for line in lines[2:]] == [
        ["glass", labeller, "uncertain"],
        ["trash", labeller, "uncertain"],
        ["trash", labeller, "uncertain"],
    ]


@pytest.mark.integration
def test_labels_import_reports_what_failed_and_exits_1(
    secured_collector, collector_auth_header
) -> None:
    store: InferenceStore = secured_collector.store
    _log_fixture_rows(store)
    store.record_response(
        EventMeta(inference_id="req-h", time=datetime.now(UTC).replace(tzinfo=None)),
        [("trash", 0.5, None)],
    )
    result = _import(INVALID, secured_collector.url, env=_env(collector_auth_header))
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["imported"] == 1 and report["failed"] == 2
    assert [f["task"] for f in report["failures"]] == ["task 201", "task 202"]
    assert store.label_history("req-h")[0]["label"] == "trash"


@pytest.mark.integration
def test_labels_import_needs_a_credential_the_collector_accepts(secured_collector) -> None:
    store: InferenceStore = secured_collector.store
    _log_fixture_rows(store)
    no_token = _import(EXPORT, secured_collector.url, env=_env(None))
    assert no_token.exit_code == 2 and "GARBAGE_COLLECTOR_TOKEN" in no_token.stderr
    wrong_header = {"Authorization": "Bearer wrong-token-0123456789abcdef"}
    wrong = _import(EXPORT, secured_collector.url, env=_env(wrong_header))
    assert wrong.exit_code == 2 and "refused the credential (403" in wrong.stderr
    # What the command sends, sent without the header: 401, nothing written.
    body = [{"inference_id": "req-a", "item": 0, "label": "glass"}]
    answer = httpx.post(f"{secured_collector.url}/feedback", json=body)
    assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer")
    assert store.label_history("req-a") == []
    assert store.load_window(labelled_only=True).empty


def test_labels_history_of_an_unlabelled_image_exits_1_and_of_no_store_exits_2(
    tmp_path: Path,
) -> None:
    db = tmp_path / "inferences.db"
    store = InferenceStore(str(db))
    _log_fixture_rows(store)
    store.record_feedback("req-b", 0, "paper", datetime(2026, 12, 1, 9), "alice")
    store.close()
    unlabelled = runner.invoke(app, ["labels", "history", "req-a", "--db", str(db)])
    assert unlabelled.exit_code == 1
    assert f"no label for req-a item 0 in {db}" in unlabelled.output
    labelled = runner.invoke(app, ["labels", "history", "req-b", "--db", str(db), "--json"])
    assert labelled.exit_code == 0, labelled.output
    assert json.loads(labelled.stdout) == [
        {
            "label": "paper",
            "labeller": "alice",
            "label_time": "2026-12-01 09:00:00",
            "selection": None,
        }
    ]
    absent = runner.invoke(app, ["labels", "history", "req-a", "--db", str(tmp_path / "x.db")])
    assert absent.exit_code == 2 and "no inference store at" in absent.output
    assert not (tmp_path / "x.db").exists()


def test_labels_import_dry_run_sends_nothing() -> None:
    result = runner.invoke(
        app,
        ["labels", "import", str(EXPORT), "--collector", "http://127.0.0.1:9", "--dry-run"],
        env=_env(None),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["labels"] == 3 and report["imported"] == 0 and report["dry_run"] is True


def test_labels_import_of_a_file_that_is_not_an_export_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"tasks": []}')
    result = _import(bad, "http://127.0.0.1:9", env=_env(None))
    assert result.exit_code == 2 and "list of tasks" in result.stderr
