"""A FAKE Kubernetes API server for InferenceServices, shared by the deploy tests.

``FakeKubernetesAPI`` is a FAKE: no Kubernetes API server (nor kind) can run on the development
and CI machines. It is a small HTTP server on 127.0.0.1 that records every request and serves
InferenceService objects the way the API server does for a custom resource (GET/POST/merge-PATCH,
``metadata.generation``, 404/409/403/415 Status bodies). A stand-in for the KServe controller
fills ``status`` on each read, driven by what the test says a storage URI does (become Ready,
fail to load, never become Ready), with one read of lag after each spec change.

It is driven through the real ``kubernetes`` client: by host (``client.Configuration``) or by a
kubeconfig file pointing at it (:func:`write_kubeconfig`), as ``garbage deploy`` and the deploy
component read their credentials. Importable as ``fake_kubernetes`` (``tests`` is on pytest's
``pythonpath``); use it as a context manager::

    with FakeKubernetesAPI() as fake:
        fake.seed(OLD)
        fake.behaviour[NEW] = "ready"
"""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlparse

from garbage.deploy import DEPLOYMENT_MODE_ANNOTATION, ServedVersion, build_inference_service

#: Path prefix of namespaced KServe v1beta1 objects on the API server.
PREFIX = "/apis/serving.kserve.io/v1beta1/namespaces/"
#: Namespace and name of the InferenceService the fake serves by default.
NS = "garbage-serving"
NAME = "garbage-classifier"
#: Two storage URIs KServe could download: the serving model and the new one.
OLD = "s3://mlflow/artifacts/1/models/m-old/artifacts"
NEW = "s3://mlflow/artifacts/1/models/m-new/artifacts"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeKubernetesAPI:
    """A FAKE Kubernetes API server for InferenceServices (see the module docstring)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.behaviour: dict[str, str] = {}  # storageUri -> "ready" | "fail" | "never"
        self.forbidden: set[str] = set()  # HTTP methods answered 403
        self._lag: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL of the fake API server."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def custom_objects_api(self) -> Any:
        """The real ``kubernetes`` client's ``CustomObjectsApi``, pointed at this fake by host."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        return client.CustomObjectsApi(client.ApiClient(configuration))

    def start(self) -> FakeKubernetesAPI:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeKubernetesAPI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def seed(
        self,
        storage_uri: str,
        mode: str | None = None,
        ready: bool = True,
        version: ServedVersion | None = None,
    ) -> dict[str, Any]:
        """Store an existing InferenceService (as the manifests and an earlier deploy left it)."""
        body = build_inference_service(NAME, NS, storage_uri, version=version)
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
                        merged = merge_patch(obj, body)
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


def write_kubeconfig(path: Path, server: str) -> Path:
    """Write a kubeconfig whose current context talks to ``server`` (the fake's :attr:`url`)."""
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
