"""What to label next (monitoring/review.py) and ``garbage review`` on a temporary SQLite store:
uncertainty, balance over predicted classes, the random share, duplicates, exclusions, the
ledger, and the exports."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.app import app
from monitoring.images import hamming
from monitoring.labelstudio import parse_export
from monitoring.review import (
    CSV_COLUMNS,
    ReviewError,
    append_ledger,
    check_template,
    hashes,
    min_distance,
    read_ledger,
    select_for_review,
    to_csv_frame,
    to_tasks,
    uncertainty,
)
from monitoring.store import InferenceStore

runner = CliRunner()
_RNG = np.random.default_rng(1234)


def _dhash() -> str:
    """A random 64-bit dHash: two of them are about 32 bits apart, never near duplicates here."""
    return f"{int(_RNG.integers(0, 2**63)) * 2 + int(_RNG.integers(0, 2)):016x}"


def _flip(dhash: str, bits: int) -> str:
    """``dhash`` with its lowest ``bits`` bits flipped: a near duplicate at that distance."""
    return f"{int(dhash, 16) ^ ((1 << bits) - 1):016x}"


def _probs(predicted: str, margin: float, classes=("glass", "metal", "paper")) -> str:
    """Probabilities whose top class is ``predicted`` by ``margin`` over the next one."""
    other = next(c for c in classes if c != predicted)
    top = (1 + margin) / 2
    return json.dumps(
        {c: top if c == predicted else (1 - top if c == other else 0.0) for c in classes}
    )


def _row(
    inference_id: str,
    predicted: str,
    margin: float | None = None,
    *,
    item: int = 0,
    sha: str | None = "auto",
    dhash: str | None = "auto",
    label: str | None = None,
    probabilities: str | None = None,
    score: float | None = None,
) -> dict:
    return {
        "inference_id": inference_id,
        "item": item,
        "ts": datetime(2026, 11, 20, 12),
        "model_id": "garbage-classifier:1",
        "prediction": predicted,
        "score": score if score is not None else (None if margin is None else (1 + margin) / 2),
        "probabilities": probabilities
        if probabilities is not None
        else (_probs(predicted, margin) if margin is not None else None),
        "true_label": label,
        "image_sha256": f"{abs(hash((inference_id, item))):064x}"[-64:] if sha == "auto" else sha,
        "image_dhash": _dhash() if dhash == "auto" else dhash,
    }


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def _ids(selection) -> list[str]:
    return list(selection.picks["inference_id"])


# --- uncertainty -------------------------------------------------------------------------------


def test_margin_and_entropy_come_from_the_logged_probabilities() -> None:
    frame = _frame(
        [
            _row(
                "p", "glass", probabilities=json.dumps({"glass": 0.7, "metal": 0.2, "paper": 0.1})
            ),
            _row(
                "half",
                "glass",
                probabilities=json.dumps({"glass": 0.35, "metal": 0.1, "paper": 0.05}),
            ),
            _row("score-only", "glass", score=0.8, probabilities=""),
            _row("broken", "glass", score=0.9, probabilities="{not json"),
            _row("nothing", "glass", probabilities=""),
        ]
    )
    measured = uncertainty(frame).set_index("inference_id")
    entropy = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert measured.loc["p", "margin"] == pytest.approx(0.5)
    assert measured.loc["p", "entropy"] == pytest.approx(entropy)
    assert measured.loc["half", "margin"] == pytest.approx(0.5)  # renormalised
    assert measured.loc["half", "entropy"] == pytest.approx(entropy)
    # Only a score: read as if the rest went to one other class.
    assert measured.loc["score-only", "margin"] == pytest.approx(0.6)
    assert measured.loc["score-only", "entropy"] == pytest.approx(
        -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    )
    assert measured.loc["broken", "margin"] == pytest.approx(0.8)
    assert math.isnan(measured.loc["nothing", "margin"])


# --- selection ---------------------------------------------------------------------------------


def test_the_least_certain_come_first() -> None:
    frame = _frame([_row(f"m{m}", "glass", m / 10) for m in (9, 1, 5, 3, 7)])
    selection = select_for_review(frame, total=3, random_share=0)
    assert _ids(selection) == ["m1", "m3", "m5"]
    assert set(selection.picks["selection"]) == {"uncertain"}
    assert list(selection.picks["margin"]) == pytest.approx([0.1, 0.3, 0.5])


def test_entropy_and_margin_rank_differently() -> None:
    tie = _row(
        "tie",
        "glass",
        probabilities=json.dumps({"glass": 0.5, "metal": 0.5, "paper": 0, "plastic": 0}),
    )
    spread = _row(
        "spread",
        "glass",
        probabilities=json.dumps({"glass": 0.4, "metal": 0.2, "paper": 0.2, "plastic": 0.2}),
    )
    frame = _frame([tie, spread])
    assert _ids(select_for_review(frame, total=1, random_share=0, strategy="margin")) == ["tie"]
    assert _ids(select_for_review(frame, total=1, random_share=0, strategy="entropy")) == ["spread"]
    with pytest.raises(ReviewError, match="strategy must be one of"):
        select_for_review(frame, total=1, strategy="least-confidence")


def test_picks_are_balanced_over_predicted_classes() -> None:
    rows = [_row(f"g{i}", "glass", 0.01 * (i + 1)) for i in range(6)]  # the most uncertain
    rows += [_row(f"m{i}", "metal", 0.5 + 0.01 * i) for i in range(6)]
    rows += [_row(f"p{i}", "paper", 0.8 + 0.01 * i) for i in range(6)]
    selection = select_for_review(_frame(rows), per_class=2, random_share=0)
    assert selection.stats["budget"] == 6
    assert selection.stats["per_class"] == {"glass": 2, "metal": 2, "paper": 2}
    assert sorted(_ids(selection)) == [
        "g0",
        "g1",
        "m0",
        "m1",
        "p0",
        "p1",
    ]  # each class's least sure
    assert _ids(selection)[:2] == ["g0", "g1"]  # the export is most uncertain first


def test_what_a_class_cannot_fill_goes_to_the_most_uncertain_of_the_rest() -> None:
    rows = [_row(f"g{i}", "glass", 0.01 * (i + 1)) for i in range(5)]
    rows += [_row(f"m{i}", "metal", 0.5 + 0.01 * i) for i in range(5)]
    rows += [_row("p0", "paper", 0.9)]
    selection = select_for_review(_frame(rows), per_class=2, random_share=0)
    assert selection.stats["per_class"] == {"glass": 3, "metal": 2, "paper": 1}
    assert selection.stats["picked"] == 6


def test_the_random_share_has_its_size_is_marked_and_is_reproducible_with_a_seed() -> None:
    frame = _frame([_row(f"r{i:03d}", "glass", i / 100) for i in range(100)])
    first = select_for_review(frame, total=10, random_share=0.2, seed=7)
    again = select_for_review(frame, total=10, random_share=0.2, seed=7)
    assert first.stats["random"] == 2 and first.stats["uncertain"] == 8
    assert list(first.picks["selection"]).count("random") == 2
    pd.testing.assert_frame_equal(first.picks, again.picks)
    uncertain = first.picks[first.picks["selection"] == "uncertain"]
    random = set(first.picks.loc[first.picks["selection"] == "random", "inference_id"])
    expected = [f"r{i:03d}" for i in range(100) if f"r{i:03d}" not in random][:8]
    assert list(uncertain["inference_id"]) == expected  # the least certain of the others
    # Spread among the uncertain ones, not all at the end of the export.
    assert list(first.picks["selection"]).index("random") < 8
    others = {
        frozenset(
            select_for_review(frame, total=10, random_share=0.2, seed=s).picks.query(
                "selection == 'random'"
            )["inference_id"]
        )
        for s in range(5)
    }
    assert len(others) > 1  # the seed matters


def test_the_random_share_is_drawn_from_the_whole_pool() -> None:
    frame = _frame([_row(f"r{i:03d}", "glass", i / 100) for i in range(100)])
    drawn: list[str] = []
    for seed in range(50):
        picks = select_for_review(frame, total=4, random_share=1.0, seed=seed).picks
        drawn += list(picks.loc[picks["selection"] == "random", "inference_id"])
    counts = pd.Series(drawn).value_counts()
    assert len(drawn) == 200 and len(counts) >= 75  # uniform: ~86 of 100 rows drawn at least once
    confident = sum(int(i[1:]) >= 50 for i in drawn)
    assert 70 <= confident <= 130  # as many from the confident half as from the uncertain one


def test_exact_duplicates_count_once_keeping_the_most_uncertain_row() -> None:
    sha = "a" * 64
    frame = _frame(
        [
            _row("sure", "glass", 0.6, sha=sha),
            _row("unsure", "glass", 0.1, sha=sha),
            _row("other", "glass", 0.3),
        ]
    )
    selection = select_for_review(frame, total=3, random_share=0)
    assert _ids(selection) == ["unsure", "other"]
    assert selection.stats["excluded"]["exact_duplicates"] == 1


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [(6, ["unsure", "other"]), (2, ["unsure", "other", "sure"]), (-1, ["unsure", "other", "sure"])],
)
def test_near_duplicates_are_skipped_keeping_the_most_uncertain(
    threshold: int, expected: list[str]
) -> None:
    base = _dhash()
    frame = _frame(
        [
            _row("unsure", "glass", 0.1, dhash=base),
            _row("sure", "metal", 0.5, dhash=_flip(base, 3)),  # 3 bits apart, another class
            _row("other", "glass", 0.3),
        ]
    )
    selection = select_for_review(frame, total=3, random_share=0, near_duplicate=threshold)
    assert _ids(selection) == expected
    assert selection.stats["excluded"]["near_duplicates"] == (1 if threshold == 6 else 0)


def test_labelled_rows_and_rows_without_an_image_or_prediction_are_left_out() -> None:
    labelled_sha, base = "b" * 64, _dhash()
    frame = _frame(
        [
            _row("labelled", "glass", 0.01, label="metal", sha=labelled_sha, dhash=base),
            _row("same-image", "glass", 0.02, sha=labelled_sha),  # labelled in another row
            _row("near-labelled", "glass", 0.03, dhash=_flip(base, 2)),
            _row("no-image", "glass", 0.04, sha=None, dhash=None),
            _row("empty-image", "glass", 0.05, sha="", dhash=None),
            {**_row("no-prediction", "glass", 0.06), "prediction": None},
            _row("kept", "glass", 0.5),
        ]
    )
    selection = select_for_review(frame, total=10, random_share=0)
    assert _ids(selection) == ["kept"]
    excluded = selection.stats["excluded"]
    assert excluded["labelled"] == 1 and excluded["image_labelled_elsewhere"] == 1
    assert excluded["no_image"] == 2 and excluded["no_prediction"] == 1
    assert excluded["near_duplicates"] == 1


def test_a_deleted_image_is_never_picked_and_the_store_is_asked_only_about_picks() -> None:
    frame = _frame([_row(f"r{i:02d}", "glass", i / 100) for i in range(50)])
    deleted = set(frame.loc[frame["inference_id"].isin(["r00", "r01"]), "image_sha256"])
    asked: list[str] = []

    def is_stored(sha: str) -> bool:
        asked.append(sha)
        return sha not in deleted

    selection = select_for_review(frame, total=4, random_share=0.5, seed=3, is_stored=is_stored)
    assert not set(selection.picks["image_sha256"]) & deleted
    assert selection.stats["picked"] == 4 and selection.stats["excluded"]["image_deleted"] == 2
    assert len(asked) < 10 and len(asked) == len(set(asked))


def test_the_ledger_keeps_exported_images_and_their_near_duplicates_out_of_the_next_review(
    tmp_path: Path,
) -> None:
    rows = [_row(f"r{i}", "glass", i / 10) for i in range(6)]
    frame = _frame(rows)
    first = select_for_review(frame, total=2, random_share=0)
    ledger_path = tmp_path / "review-ledger.csv"
    assert append_ledger(ledger_path, first.picks, "batch-1.json") == 2
    ledger = read_ledger(ledger_path)
    assert list(ledger["image_sha256"]) == list(first.picks["image_sha256"])
    assert list(ledger["export"]) == ["batch-1.json"] * 2
    near = _row("near-r0", "glass", 0.0, dhash=_flip(rows[0]["image_dhash"], 1))
    second = select_for_review(_frame([*rows, near]), total=2, random_share=0, ledger=ledger)
    assert _ids(second) == ["r2", "r3"]
    assert second.stats["excluded"]["exported_before"] == 2
    assert second.stats["excluded"]["near_duplicates"] == 1
    append_ledger(ledger_path, second.picks, "batch-2.json")
    assert len(read_ledger(ledger_path)) == 4  # appended, one header


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ReviewError, match="not a ledger"):
        read_ledger(path)
    assert read_ledger(tmp_path / "new.csv").empty


def test_the_fast_distance_is_the_image_stores_hamming_distance() -> None:
    values = [_dhash() for _ in range(50)] + ["0" * 16, "f" * 16]
    others = hashes(values)
    for a in values[:10]:
        assert min_distance(int(a, 16), others) == min(hamming(a, b) for b in values)
    assert min_distance(0, hashes([])) == 65
    assert hashes(["xyz", None, "0" * 15, "1" * 16]).tolist() == [int("1" * 16, 16)]


def test_the_budget_is_per_class_or_total() -> None:
    frame = _frame([_row("a", "glass", 0.1)])
    with pytest.raises(ReviewError, match="exactly one"):
        select_for_review(frame)
    with pytest.raises(ReviewError, match="exactly one"):
        select_for_review(frame, per_class=1, total=1)
    with pytest.raises(ReviewError, match="random_share"):
        select_for_review(frame, total=1, random_share=1.5)


# --- exports -----------------------------------------------------------------------------------


def test_tasks_carry_the_image_url_the_selection_and_the_pre_annotation() -> None:
    frame = _frame([_row("a", "glass", 0.1), _row("b", "metal", 0.2, item=3)])
    picks = select_for_review(frame, total=2, random_share=0.5, seed=1).picks
    tasks = to_tasks(picks, "http://collector/images/{sha256}")
    by_id = {t["data"]["inference_id"]: t for t in tasks}
    b = by_id["b"]
    assert b["data"]["image"] == f"http://collector/images/{b['data']['sha256']}"
    assert b["data"]["item"] == 3
    assert {t["data"]["selection"] for t in tasks} == {"uncertain", "random"}
    [prediction] = b["predictions"]
    assert prediction["result"][0]["value"] == {"choices": ["metal"]}
    assert prediction["score"] == pytest.approx(0.6)
    assert prediction["model_version"] == "garbage-classifier:1"
    bare = to_tasks(picks, "s3://images/{key}", pre_annotate=False)
    sha = bare[0]["data"]["sha256"]
    assert (
        "predictions" not in bare[0] and bare[0]["data"]["image"] == f"s3://images/{sha[:2]}/{sha}"
    )


def test_the_csv_export_has_its_columns() -> None:
    picks = select_for_review(_frame([_row("a", "glass", 0.1)]), total=1, random_share=0).picks
    frame = to_csv_frame(picks, "http://c/images/{sha256}?item={item}")
    assert list(frame.columns) == list(CSV_COLUMNS)
    assert frame.loc[0, "image_url"] == f"http://c/images/{frame.loc[0, 'sha256']}?item=0"
    assert frame.loc[0, "selection"] == "uncertain" and frame.loc[0, "margin"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("template", "message"),
    [("http://c/images/", "must contain"), ("http://c/{sha256}/{user}", "not usable")],
)
def test_an_unusable_image_url_template_is_refused(template: str, message: str) -> None:
    with pytest.raises(ReviewError, match=message):
        check_template(template)


# --- `garbage review` on a SQLite store ---------------------------------------------------------


def _store_with_traffic(path: Path) -> InferenceStore:
    """A store as the collector leaves it: 12 rows over 3 predicted classes, one labelled, one
    without an image, one whose image retention deleted, and the images table."""
    now = datetime.now(UTC).replace(tzinfo=None)
    rows = []
    for i in range(12):
        predicted = ("glass", "metal", "paper")[i % 3]
        row = _row(f"req-{i:02d}", predicted, 0.05 * (i + 1), sha=f"{i + 1:064x}")
        rows.append({**row, "ts": now - timedelta(minutes=i)})
    rows[0]["true_label"] = "glass"
    rows[1]["image_sha256"], rows[1]["image_dhash"] = None, None
    old = {**_row("req-old", "glass", 0.0, sha=f"{99:064x}"), "ts": now - timedelta(days=30)}
    store = InferenceStore(str(path))
    store.insert_rows(pd.DataFrame([*rows, old]))
    shas = [r["image_sha256"] for r in [*rows, old] if r["image_sha256"]]
    store.record_images({sha: 1000 for sha in shas}, now)
    [candidate] = [s for s in shas if s == f"{3:064x}"]  # req-02's image, deleted by retention
    store.claim_images_for_deletion(
        [c for c in store.images_to_prune(None, 0, limit=100) if c.sha256 == candidate], now
    )
    return store


def test_review_exports_label_studio_tasks_and_remembers_them(tmp_path: Path) -> None:
    store = _store_with_traffic(tmp_path / "inferences.db")
    assert store.image_record(f"{3:064x}")["deleted_at"] is not None
    store.close()
    out = tmp_path / "exports" / "batch-1.json"
    args = ["review", "--db", str(tmp_path / "inferences.db"), "--since", "24h", "--out", str(out)]
    result = runner.invoke(
        app, [*args, "--per-class", "2", "--random-share", "0.34", "--collector", "http://c:8082/"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == 12 and summary["picked"] == 6  # req-old is outside the window
    assert summary["random"] == 2 and summary["uncertain"] == 4
    assert summary["excluded"]["labelled"] == 1 and summary["excluded"]["no_image"] == 1
    assert summary["excluded"]["image_deleted"] == 1
    tasks = json.loads(out.read_text())
    ids = [t["data"]["inference_id"] for t in tasks]
    assert not {"req-00", "req-01", "req-02", "req-old"} & set(ids)
    assert all(t["data"]["image"] == f"http://c:8082/images/{t['data']['sha256']}" for t in tasks)
    assert [t["data"]["selection"] for t in tasks].count("random") == 2
    # Label Studio's export of these tasks imports back to the same rows.
    for number, task in enumerate(tasks):
        task["id"] = number
        task["annotations"] = [{"id": number, "result": task["predictions"][0]["result"]}]
    assert {(lbl.inference_id, lbl.item) for lbl in parse_export(tasks).labels} == {
        (t["data"]["inference_id"], 0) for t in tasks
    }
    ledger = out.parent / "review-ledger.csv"
    assert summary["ledger"] == str(ledger) and len(read_ledger(ledger)) == 6

    second_out = tmp_path / "exports" / "batch-2.csv"
    second = runner.invoke(
        app,
        [
            "review",
            "--db",
            str(tmp_path / "inferences.db"),
            "--since",
            "24h",
            "--out",
            str(second_out),
            "--format",
            "csv",
            "--total",
            "10",
            "--random-share",
            "0",
            "--strategy",
            "entropy",
        ],
    )
    assert second.exit_code == 0, second.output
    csv = pd.read_csv(second_out)
    assert list(csv.columns) == list(CSV_COLUMNS)
    assert not set(csv["inference_id"]) & set(ids)  # the ledger keeps the first batch out
    assert len(csv) == 12 - 3 - 6  # labelled, no image, deleted, and the first batch
    assert json.loads(second.stdout)["excluded"]["exported_before"] == 6


def test_review_refuses_bad_options_with_a_reason(tmp_path: Path) -> None:
    store = _store_with_traffic(tmp_path / "inferences.db")
    store.close()
    base = ["review", "--db", str(tmp_path / "inferences.db"), "--out", str(tmp_path / "o.json")]
    both = runner.invoke(app, [*base, "--per-class", "1", "--total", "3"])
    assert both.exit_code == 2 and "not both" in both.output
    since = runner.invoke(app, [*base, "--since", "yesterday"])
    assert since.exit_code == 2 and "ISO date/time" in since.output
    template = runner.invoke(app, [*base, "--image-url", "http://c/images/"])
    assert template.exit_code == 2 and "{sha256}" in template.output
    assert not (tmp_path / "o.json").exists()
