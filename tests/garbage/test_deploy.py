"""The deploy step against a fake Kubernetes API server, through the real ``kubernetes`` client.

``FakeKubernetesAPI`` is a FAKE: no Kubernetes API server (nor kind) can run on the development
and CI machines. It is a small HTTP server on 127.0.0.1 that records every request and serves
InferenceService objects the way the API server does for a custom resource (GET/POST/merge-PATCH,
``metadata.generation``, 404/409/403/415 Status bodies). A stand-in for the KServe controller
fills ``status`` on each read, driven by what the test says a storage URI does (become Ready,
fail to load, never become Ready), with one read of lag after each spec change.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from typer.testing import CliRunner

from garbage.deploy import (
    DEPLOYMENT_MODE_ANNOTATION,
    DeployError,
    InferenceServiceDeployer,
    build_inference_service,
    readiness,
)

PREFIX = "/apis/serving.kserve.io/v1beta1/namespaces/"
NS = "garbage-serving"
NAME = "garbage-classifier"
OLD = "s3://mlflow/artifacts/1/models/m-old/artifacts"
NEW = "s3://mlflow/artifacts/1/models/m-new/artifacts"


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


class FakeKubernetesAPI:
    """A fake Kubernetes API server for InferenceServices (see the module docstring)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.behaviour: dict[str, str] = {}  # storageUri -> "ready" | "fail" | "never"
        self.forbidden: set[str] = set()  # HTTP methods answered 403
        self._lag: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the fake API server."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeKubernetesAPI:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def seed(self, storage_uri: str, mode: str | None = None, ready: bool = True) -> dict[str, Any]:
        """Store an existing InferenceService (as the manifests would have created it)."""
        body = build_inference_service(NAME, NS, storage_uri)
        if mode:
            body["metadata"]["annotations"][DEPLOYMENT_MODE_ANNOTATION] = mode
        body["metadata"].update(generation=1, resourceVersion="1")
        self.behaviour.setdefault(storage_uri, "ready" if ready else "never")
        self.objects[(NS, NAME)] = body
        self._reconcile(body)
        return body

    def calls(self, method: str) -> list[dict[str, Any]]:
        """The recorded requests with this HTTP method."""
        return [r for r in self.requests if r["method"] == method]

    # -- the KServe controller stand-in -----------------------------------------------------------
    def _reconcile(self, obj: dict[str, Any]) -> None:
        generation = obj["metadata"]["generation"]
        uri = obj["spec"]["predictor"]["model"]["storageUri"]
        outcome = self.behaviour.get(uri, "never")
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "url": f"http://{NAME}.{NS}.example.com",
        }
        if outcome == "ready":
            status["conditions"] = [
                {"type": "Ready", "status": "True"},
                {"type": "PredictorReady", "status": "True"},
            ]
            status["modelStatus"] = {"transitionStatus": "UpToDate"}
        elif outcome == "fail":
            status["conditions"] = [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "RevisionFailed",
                    "message": "model.onnx not found",
                }
            ]
            status["modelStatus"] = {
                "transitionStatus": "BlockedByFailedLoad",
                "lastFailureInfo": {
                    "reason": "ModelLoadFailed",
                    "message": "no model.onnx under /mnt/models",
                },
            }
        else:
            status["conditions"] = [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "Progressing",
                    "message": "pods starting",
                }
            ]
        obj["status"] = status

    # -- HTTP -----------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": reason,
                        "message": message,
                        "code": code,
                    },
                )

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                with fake._lock:
                    fake.requests.append(
                        {
                            "method": method,
                            "path": url.path,
                            "query": parse_qs(url.query),
                            "content_type": self.headers.get("Content-Type"),
                            "body": body,
                        }
                    )
                    if method in fake.forbidden:
                        return self._status(403, "Forbidden", f"{method} forbidden by RBAC")
                    if not url.path.startswith(PREFIX):
                        return self._status(404, "NotFound", f"no route {url.path}")
                    parts = url.path[len(PREFIX) :].split("/")
                    if len(parts) < 2 or parts[1] != "inferenceservices":
                        return self._status(404, "NotFound", f"no route {url.path}")
                    namespace = parts[0]
                    name = parts[2] if len(parts) > 2 else None
                    key = (namespace, name or "")
                    if method == "GET" and name:
                        obj = fake.objects.get(key)
                        if obj is None:
                            return self._status(
                                404, "NotFound", f"inferenceservices {name} not found"
                            )
                        if fake._lag.get(key):
                            fake._lag[key] -= 1  # the controller has not caught up yet
                        else:
                            fake._reconcile(obj)
                        return self._send(200, obj)
                    if method == "POST" and name is None:
                        name = body["metadata"]["name"]
                        if (namespace, name) in fake.objects:
                            return self._status(409, "AlreadyExists", f"{name} already exists")
                        obj = copy.deepcopy(body)
                        obj["metadata"].update(generation=1, resourceVersion="1")
                        fake.objects[(namespace, name)] = obj
                        fake._lag[(namespace, name)] = 1
                        return self._send(201, obj)
                    if method == "PATCH" and name:
                        if self.headers.get("Content-Type") != "application/merge-patch+json":
                            return self._status(
                                415,
                                "UnsupportedMediaType",
                                f"{self.headers.get('Content-Type')} not supported",
                            )
                        obj = fake.objects.get(key)
                        if obj is None:
                            return self._status(
                                404, "NotFound", f"inferenceservices {name} not found"
                            )
                        merged = _merge_patch(obj, body)
                        if merged.get("spec") != obj.get("spec"):
                            merged["metadata"]["generation"] = obj["metadata"]["generation"] + 1
                            fake._lag[key] = 1
                        fake.objects[key] = merged
                        return self._send(200, merged)
                    return self._status(405, "MethodNotAllowed", f"{method} {url.path}")

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

        return Handler


@pytest.fixture
def fake_api() -> Iterator[FakeKubernetesAPI]:
    server = FakeKubernetesAPI().start()
    yield server
    server.stop()


def _client(fake: FakeKubernetesAPI) -> Any:
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = fake.url
    return client.CustomObjectsApi(client.ApiClient(configuration))


def _deployer(fake: FakeKubernetesAPI) -> InferenceServiceDeployer:
    return InferenceServiceDeployer(_client(fake), poll_interval_s=0.01)


class FakeClock:
    """Monotonic time that advances only when slept."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_first_deploy_creates_the_inference_service_and_waits_for_ready(fake_api):
    fake_api.behaviour[NEW] = "ready"
    result = _deployer(fake_api).deploy(NEW, NAME, NS, timeout_s=10)

    assert result.created and result.storage_uri == NEW and result.previous_storage_uri is None
    assert result.url == f"http://{NAME}.{NS}.example.com"
    (post,) = fake_api.calls("POST")
    assert post["path"] == f"{PREFIX}{NS}/inferenceservices"
    assert post["query"]["fieldManager"] == ["garbage-deploy"]
    model = post["body"]["spec"]["predictor"]["model"]
    assert model == {
        "modelFormat": {"name": "garbage-onnx"},
        "runtime": "garbage-onnx",
        "storageUri": NEW,
        "resources": model["resources"],
    }
    assert set(model["resources"]) == {"requests", "limits"}
    # one lagging read (controller not caught up), then Ready
    assert len(fake_api.calls("GET")) >= 3


def test_update_patches_only_the_storage_uri_with_a_merge_patch(fake_api):
    fake_api.seed(OLD)
    fake_api.behaviour[NEW] = "ready"
    result = _deployer(fake_api).deploy(NEW, NAME, NS, timeout_s=10)

    assert not result.created and result.previous_storage_uri == OLD
    (patch,) = fake_api.calls("PATCH")
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["body"]["spec"] == {
        "predictor": {"canaryTrafficPercent": None, "model": {"storageUri": NEW}}
    }
    stored = fake_api.objects[(NS, NAME)]
    assert stored["spec"]["predictor"]["model"]["storageUri"] == NEW
    assert stored["spec"]["predictor"]["model"]["runtime"] == "garbage-onnx"  # untouched
    assert stored["metadata"]["generation"] == 2


def test_failed_model_is_rolled_back_and_the_error_says_so(fake_api):
    fake_api.seed(OLD)
    fake_api.behaviour[NEW] = "fail"
    with pytest.raises(
        DeployError, match="Rolled back to s3://mlflow/artifacts/1/models/m-old"
    ) as e:
        _deployer(fake_api).deploy(NEW, NAME, NS, timeout_s=10)

    assert "BlockedByFailedLoad" in str(e.value) and "no model.onnx" in str(e.value)
    patches = fake_api.calls("PATCH")
    assert [p["body"]["spec"]["predictor"]["model"]["storageUri"] for p in patches] == [NEW, OLD]
    assert fake_api.objects[(NS, NAME)]["spec"]["predictor"]["model"]["storageUri"] == OLD


def test_timeout_rolls_back_and_restores_the_previous_canary_setting(fake_api):
    seeded = fake_api.seed(OLD, mode="Serverless")
    seeded["spec"]["predictor"]["canaryTrafficPercent"] = 20
    fake_api.behaviour[NEW] = "never"
    clock = FakeClock()
    deployer = InferenceServiceDeployer(
        _client(fake_api), poll_interval_s=5, clock=clock, sleep=clock.sleep
    )
    with pytest.raises(DeployError, match=r"not Ready after 30 s .*Rolled back"):
        deployer.deploy(NEW, NAME, NS, canary_percent=10, timeout_s=30)

    rollback = fake_api.calls("PATCH")[-1]["body"]["spec"]["predictor"]
    assert rollback == {"canaryTrafficPercent": 20, "model": {"storageUri": OLD}}
    assert clock.now >= 30


def test_canary_in_serverless_mode_sets_the_traffic_split(fake_api):
    fake_api.seed(OLD, mode="Serverless")
    fake_api.behaviour[NEW] = "ready"
    result = _deployer(fake_api).deploy(NEW, NAME, NS, canary_percent=10, timeout_s=10)

    assert result.canary_percent == 10
    (patch,) = fake_api.calls("PATCH")
    assert patch["body"]["spec"]["predictor"]["canaryTrafficPercent"] == 10

    promoted = _deployer(fake_api).promote(NAME, NS, timeout_s=10)
    assert fake_api.calls("PATCH")[-1]["body"] == {
        "spec": {"predictor": {"canaryTrafficPercent": None}}
    }
    assert "canaryTrafficPercent" not in fake_api.objects[(NS, NAME)]["spec"]["predictor"]
    assert promoted.storage_uri == NEW


def test_canary_in_standard_mode_is_refused_before_any_change(fake_api):
    fake_api.seed(OLD, mode="Standard")
    with pytest.raises(DeployError, match="canary needs KServe's Serverless"):
        _deployer(fake_api).deploy(NEW, NAME, NS, canary_percent=10, timeout_s=10)
    assert fake_api.calls("PATCH") == [] and fake_api.calls("POST") == []


def test_same_model_already_ready_changes_nothing(fake_api):
    fake_api.seed(OLD)
    result = _deployer(fake_api).deploy(OLD, NAME, NS, timeout_s=10)
    assert result.storage_uri == OLD and fake_api.calls("PATCH") == []


def test_forbidden_answers_explain_the_missing_rbac(fake_api):
    fake_api.seed(OLD)
    fake_api.forbidden.add("PATCH")
    with pytest.raises(DeployError, match=r"HTTP 403.*RBAC"):
        _deployer(fake_api).deploy(NEW, NAME, NS, timeout_s=10)


def test_first_deploy_that_fails_has_nothing_to_fall_back_to(fake_api):
    fake_api.behaviour[NEW] = "fail"
    with pytest.raises(DeployError, match="no earlier model to fall back to"):
        _deployer(fake_api).deploy(NEW, NAME, NS, timeout_s=10)


@pytest.mark.parametrize(
    "uri",
    ["/tmp/model", "file:///tmp/model", "models:/garbage-classifier@champion", "ftp://host/model"],
)
def test_storage_uri_that_kserve_cannot_download_is_rejected(fake_api, uri):
    with pytest.raises(DeployError, match="not one KServe can download"):
        _deployer(fake_api).deploy(uri, NAME, NS)
    assert fake_api.requests == []


@pytest.mark.parametrize("percent", [0, 101, -5])
def test_bad_canary_percentage_is_rejected_without_requests(fake_api, percent):
    with pytest.raises(DeployError, match="between 1 and 100"):
        _deployer(fake_api).deploy(NEW, NAME, NS, canary_percent=percent)
    assert fake_api.requests == []


def test_readiness_waits_for_the_controller_to_see_the_latest_generation():
    isvc = {
        "metadata": {"generation": 3},
        "status": {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert readiness(isvc)[0] == "pending"
    isvc["status"]["observedGeneration"] = 3
    assert readiness(isvc) == ("ready", "Ready")
    isvc["status"]["components"] = {
        "predictor": {"latestCreatedRevision": "p-00004", "latestReadyRevision": "p-00003"}
    }
    assert readiness(isvc)[0] == "pending"


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": server}}],
                "users": [{"name": "fake", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            }
        )
    )
    return path


def test_garbage_deploy_command_uses_the_kubeconfig(fake_api, tmp_path: Path):
    import typer

    from cli.deploy import deploy

    app = typer.Typer()
    app.command()(deploy)
    fake_api.seed(OLD)
    fake_api.behaviour[NEW] = "ready"
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", fake_api.url)
    result = CliRunner().invoke(
        app,
        [
            "--model-uri",
            NEW,
            "--kubeconfig",
            str(kubeconfig),
            "--timeout",
            "10",
            "--poll-interval",
            "0.01",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["previous_storage_uri"] == OLD
    assert fake_api.objects[(NS, NAME)]["spec"]["predictor"]["model"]["storageUri"] == NEW

    bad = CliRunner().invoke(app, ["--model-uri", "/local/folder", "--kubeconfig", str(kubeconfig)])
    assert bad.exit_code == 1 and "not one KServe can download" in bad.output
    missing = CliRunner().invoke(app, ["--kubeconfig", str(kubeconfig)])
    assert missing.exit_code == 2 and "--model-uri" in missing.output


def test_rollback_that_fails_too_says_how_to_restore(fake_api):
    fake_api.seed(OLD)
    fake_api.behaviour[NEW] = "fail"

    class PatchOnce:
        """Forward to the real client, but make the second PATCH (the rollback) fail."""

        def __init__(self, api):
            self.api, self.patches = api, 0

        def __getattr__(self, name):
            return getattr(self.api, name)

        def patch_namespaced_custom_object(self, *args, **kwargs):
            self.patches += 1
            if self.patches == 2:
                fake_api.forbidden.add("PATCH")
            return self.api.patch_namespaced_custom_object(*args, **kwargs)

    deployer = InferenceServiceDeployer(PatchOnce(_client(fake_api)), poll_interval_s=0.01)
    with pytest.raises(
        DeployError,
        match=f"rolling back to {OLD} failed too: .*HTTP 403.*garbage deploy --model-uri {OLD}",
    ):
        deployer.deploy(NEW, NAME, NS, timeout_s=10)


def test_kfp_deploy_step_deploys_only_a_promoted_model(
    fake_api, tmp_path, monkeypatch, smoke_config
):
    """The KFP component's function, run as the pod runs it (credentials from KUBECONFIG)."""
    from components.deploy_model import deploy_model
    from components.image import COMPONENTS_IMAGE

    assert deploy_model.component_spec.implementation.container.image == COMPONENTS_IMAGE
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kubeconfig", fake_api.url)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    fake_api.seed(OLD)
    fake_api.behaviour[NEW] = "ready"
    config_json = smoke_config.model_dump_json()

    assert deploy_model.python_func(config_json=config_json, model_uri=NEW, promoted=False) == ""
    assert fake_api.requests == []
    assert (
        deploy_model.python_func(
            config_json=config_json, model_uri=NEW, promoted=True, timeout_s=30
        )
        == NEW
    )
    assert fake_api.objects[(NS, NAME)]["spec"]["predictor"]["model"]["storageUri"] == NEW
