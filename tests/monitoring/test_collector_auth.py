"""Who may write to the collector: bearer credentials for /feedback (and optionally /events),
their sources (environment, a mounted Secret's file), the command's refusal to start without
one, and the label history that records who gave each label."""

from __future__ import annotations

import hmac
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from monitoring_helpers import kserve_headers, make_jpeg, v1_request, v1_response
from support import free_port, wait_for_port
from typer.testing import CliRunner

from monitoring.cli import build_app
from monitoring.collector import (
    ANONYMOUS,
    DEFAULT_TOKEN_NAME,
    EVENTS_TOKEN_ENV,
    TOKEN_ENV,
    CollectorAuth,
    TokenError,
    create_app,
    load_credentials,
    parse_credentials,
)
from monitoring.store import InferenceStore

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef0"
EVENTS = "events-token-0123456789abcdef"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_credentials_are_name_token_entries_or_bare_tokens() -> None:
    text = f"# labellers\nalice:{ALICE}\n\n bob : {BOB} , {EVENTS}\n"
    credentials = parse_credentials(text, "the file")
    assert [c.name for c in credentials] == ["alice", "bob", DEFAULT_TOKEN_NAME]
    assert ALICE not in repr(credentials) and ALICE.encode() not in b"".join(
        c.digest for c in credentials
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice:short", "at least 16 characters"),
        ("alice:" + "x" * 20 + " y", "at least 16 characters"),
        ("al ice:" + "x" * 20, "the name before ':'"),
        (":" + "x" * 20, "the name before ':'"),
        ("a" * 101 + ":" + "x" * 20, "at most 100"),
        ("alice:" + "é" * 20, "A-Z a-z 0-9"),
    ],
)
def test_malformed_credentials_are_refused_without_quoting_them(text: str, message: str) -> None:
    with pytest.raises(TokenError, match=message) as caught:
        parse_credentials(text, "$X")
    secret = text.partition(":")[2]
    assert secret not in str(caught.value) and "entry 1 of $X" in str(caught.value)


def test_credentials_from_the_environment_and_a_file_add_up(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(f"bob:{BOB}\n")
    credentials = load_credentials(TOKEN_ENV, secret, environ={TOKEN_ENV: f"alice:{ALICE}"})
    assert [c.name for c in credentials] == ["alice", "bob"]
    assert load_credentials(TOKEN_ENV, None, environ={}) == ()
    with pytest.raises(TokenError, match="cannot read the token file"):
        load_credentials(TOKEN_ENV, tmp_path / "missing", environ={})


def test_no_feedback_credential_is_refused_unless_explicitly_allowed() -> None:
    with pytest.raises(TokenError, match=f"{TOKEN_ENV}.*--token-file.*--allow-unauthenticated"):
        CollectorAuth()
    assert CollectorAuth(allow_unauthenticated_feedback=True).feedback == ()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "no feedback token"),
        ({TOKEN_ENV: "alice:short"}, "at least 16 characters"),
        ({TOKEN_ENV: f"alice:{ALICE}", EVENTS_TOKEN_ENV: "x"}, f"of ${EVENTS_TOKEN_ENV}"),
    ],
)
def test_the_command_does_not_start_without_usable_credentials(
    environ: dict[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (TOKEN_ENV, EVENTS_TOKEN_ENV):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(
        build_app(),
        ["collector", "--db", str(tmp_path / "log.db"), "--set", f"work_dir={tmp_path}"],
        env=environ,
    )
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "log.db").exists()  # it stopped before opening anything


def test_the_explicit_flag_lets_the_command_start_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    result = CliRunner().invoke(
        build_app(),
        ["collector", "--allow-unauthenticated-feedback", "--set", f"work_dir={tmp_path}"],
    )
    # Past the credentials, it stops at the next thing it needs: a champion to read classes from.
    assert result.exit_code == 1 and "make run" in result.stderr, result.output


@pytest.fixture
def store(tmp_path: Path) -> InferenceStore:
    store = InferenceStore(str(tmp_path / "log.db"))
    yield store
    store.close()


def _log(
    client: TestClient, inference_id: str, predicted: str, headers: dict | None = None
) -> None:
    for kind, body in (
        ("request", v1_request([make_jpeg((60, 160, 90))])),
        ("response", v1_response([predicted], CLASSES)),
    ):
        r = client.post(
            "/events",
            content=body,
            headers={**kserve_headers(inference_id, kind), **(headers or {})},
        )
        assert r.status_code == 202, r.text


def test_relabels_record_who_gave_each_label_and_the_latest_counts(store: InferenceStore) -> None:
    auth = CollectorAuth(feedback=parse_credentials(f"alice:{ALICE}\nbob:{BOB}", "the test"))
    with TestClient(create_app(store, CLASSES, auth=auth)) as client:
        _log(client, "r-1", "glass")
        label = {"inference_id": "r-1", "label": "metal"}
        r = client.post("/feedback", json=label, headers=_bearer(ALICE))
        assert r.status_code == 200 and r.json()["labeller"] == "alice", r.text
        assert client.get("/accuracy", params={"window": "30d"}).json()["accuracy"] == 0.0
        r = client.post("/feedback", json={**label, "label": "glass"}, headers=_bearer(BOB))
        assert r.status_code == 200 and r.json()["labeller"] == "bob", r.text
        assert (
            client.get("/accuracy", params={"window": "30d"}).json()["accuracy"] == 1.0
        )  # the latest label counts
        r = client.post("/feedback", json=label, headers=_bearer(ALICE + "x"))
        assert r.status_code == 403
    history = store.label_history("r-1")
    assert [(h["label"], h["labeller"]) for h in history] == [("metal", "alice"), ("glass", "bob")]
    assert history[0]["label_time"] <= history[1]["label_time"]


def test_every_credential_is_compared_in_constant_time(
    store: InferenceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    auth = CollectorAuth(feedback=parse_credentials(f"alice:{ALICE}\nbob:{BOB}", "the test"))
    with TestClient(create_app(store, CLASSES, auth=auth)) as client:
        for token in (ALICE, BOB, "wrong-token-0123456789abc"):
            calls.clear()
            client.post(
                "/feedback", json={"inference_id": "x", "label": "glass"}, headers=_bearer(token)
            )
            # The first credential matching does not stop the comparison: both are compared,
            # on digests of one length, whichever token was sent.
            assert len(calls) == 2 and {len(a) for a, _ in calls} == {32}


def test_events_take_a_token_when_one_is_configured(store: InferenceStore) -> None:
    auth = CollectorAuth(
        feedback=parse_credentials(ALICE, "the test"),
        events=parse_credentials(f"broker:{EVENTS}", "the test"),
    )
    body, headers = v1_request([make_jpeg((1, 2, 3))]), kserve_headers("e-1", "request")
    with TestClient(create_app(store, CLASSES, auth=auth)) as client:
        r = client.post("/events", content=body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        r = client.post("/events", content=body, headers={**headers, **_bearer(ALICE)})
        assert r.status_code == 403  # the feedback token is not an events token
        assert store.count() == 0
        r = client.post("/events", content=body, headers={**headers, **_bearer(EVENTS)})
        assert r.status_code == 202, r.text
        errors = client.get("/metrics").text
    assert 'garbage_monitoring_event_errors_total{reason="unauthorized"} 2.0' in errors


def test_unauthenticated_feedback_is_loud_and_recorded_as_anonymous(
    store: InferenceStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="monitoring.collector"):
        app = create_app(store, CLASSES, auth=CollectorAuth(allow_unauthenticated_feedback=True))
    assert "accepts labels from ANYONE" in caplog.text
    with TestClient(app) as client:
        _log(client, "a-1", "paper")
        r = client.post("/feedback", json={"inference_id": "a-1", "label": "paper"})
        assert r.status_code == 200 and r.json()["labeller"] == ANONYMOUS, r.text
    assert store.label_history("a-1")[0]["labeller"] == ANONYMOUS


@pytest.mark.integration
def test_the_command_takes_its_credential_from_a_mounted_secret(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``python -m monitoring collector --token-file``, as the Deployment runs it."""
    secret = tmp_path / "token"
    secret.write_text(f"labelling-ui:{ALICE}\n")
    port = free_port()
    log = tmp_path / "collector.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "monitoring",
                "collector",
                "--model",
                str(tiny_model_dir),
                "--db",
                str(tmp_path / "log.db"),
                "--port",
                str(port),
                "--token-file",
                str(secret),
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, timeout=60)
        url = f"http://127.0.0.1:{port}/feedback"
        label = {"inference_id": "none", "label": "glass"}
        r = httpx.post(url, json=label)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert httpx.post(url, json=label, headers=_bearer(BOB)).status_code == 403
        r = httpx.post(url, json=label, headers=_bearer(ALICE))
        assert r.status_code == 404, r.text  # let in; nothing logged under that id
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert "ANYONE" not in log.read_text()
