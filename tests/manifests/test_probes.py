"""The predictor's probes use no model name and hit routes the model server really serves.

The rendered ServingRuntime's readiness and liveness probes must be the open inference
protocol's server health routes on the REST port. The server is the KServe app that serving
builds (``serving.rest.install_routes`` on KServe's app, then KServe's own REST routes, as
``serving.server.serve_model`` does), run in-process by uvicorn on a free port with the tiny
model loaded, and each probe is requested over HTTP as the kubelet would.

Readiness reflects the model this way: KServe's ``/v2/health/ready`` answers 200 whenever the
server answers (KServe's ``DataPlane.ready`` does not look at the models), and KServe's
``ModelServer`` refuses to start, so opens no port, without a ready model; ``python -m serving``
loads the model before it starts the server. The last test holds KServe to that.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import free_port

from garbage.core.names import MODEL_NAME

OVERLAYS = ("overlays/kind", "overlays/gpu")
READY_PATH, LIVE_PATH = "/v2/health/ready", "/v2/health/live"


def _model_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (runtime,) = [d for d in docs if d["kind"] == "ServingRuntime"]
    (container,) = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
    return container


def _http_port(container: dict[str, Any]) -> int:
    (flag,) = [a for a in container["args"] if a.startswith("--http_port=")]
    return int(flag.split("=", 1)[1])


@pytest.mark.parametrize("target", OVERLAYS)
def test_probes_are_the_health_routes_without_a_model_name(rendered, target) -> None:
    container = _model_container(rendered[target])
    probes = {kind: container.get(kind) for kind in ("readinessProbe", "livenessProbe")}
    assert all(probes.values()), f"{target}: {[k for k, v in probes.items() if not v]} missing"
    for kind, probe in probes.items():
        path = probe["httpGet"]["path"]
        assert MODEL_NAME not in path and "{{" not in path, f"{target}: {kind} names a model"
        assert probe["httpGet"]["port"] == _http_port(container), f"{target}: {kind} port"
    assert probes["readinessProbe"]["httpGet"]["path"] == READY_PATH
    assert probes["livenessProbe"]["httpGet"]["path"] == LIVE_PATH


@pytest.mark.parametrize("target", OVERLAYS)
def test_liveness_waits_for_the_model_and_outlasts_readiness(rendered, target) -> None:
    """A restart only after a minute without answers, and never during a normal model load."""
    container = _model_container(rendered[target])
    ready, live = container["readinessProbe"], container["livenessProbe"]

    def window(probe: dict[str, Any]) -> int:  # seconds of failures before the kubelet acts
        return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)

    assert window(live) >= 60 and live.get("timeoutSeconds", 1) >= 2, f"{target}: {live}"
    assert live.get("initialDelaySeconds", 0) + window(live) >= 90, f"{target}: {live}"
    assert window(ready) < window(live), f"{target}: readiness must react before liveness"


@pytest.fixture(scope="module")
def model_server(tiny_model_dir: Path) -> Iterator[str]:
    """The serving app with the tiny model, served by uvicorn in a thread; yields its base URL."""
    import kserve
    import uvicorn
    from kserve import model_server as kserve_app
    from kserve.protocol.rest.server import RESTServer

    from serving.rest import install_routes
    from serving.server import build_model
    from serving.settings import ServingSettings

    model = build_model(tiny_model_dir, ServingSettings(device="cpu"))
    port = free_port()
    server = kserve.ModelServer(http_port=port, enable_grpc=False)
    server.register_model(model)
    install_routes(kserve_app.app, model)
    rest = RESTServer(
        "kserve.model_server:app", server.dataplane, server.model_repository_extension, port
    )
    rest.create_application()
    config = uvicorn.Config(kserve_app.app, host="127.0.0.1", port=port, log_config=None)
    http = uvicorn.Server(config)
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not http.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        http.should_exit = True
        thread.join(timeout=30)
        model.stop()


@pytest.mark.integration
@pytest.mark.parametrize("target", OVERLAYS)
def test_the_model_server_answers_every_probe(rendered, model_server, target) -> None:
    container = _model_container(rendered[target])
    answers = {}
    for kind in ("readinessProbe", "livenessProbe"):
        path = container[kind]["httpGet"]["path"]
        answers[path] = httpx.get(model_server + path, timeout=5)
    assert {p: r.status_code for p, r in answers.items()} == {READY_PATH: 200, LIVE_PATH: 200}
    assert answers[READY_PATH].json() == {"ready": True}
    assert answers[LIVE_PATH].json() == {"live": True}
    # the app does not answer 200 to any path: a probe on a route it lacks would fail
    assert httpx.get(model_server + "/v2/health/missing", timeout=5).status_code == 404


@pytest.mark.integration
def test_kserve_opens_no_port_without_a_ready_model(tmp_path: Path) -> None:
    """So a 200 from /v2/health/ready means the model loaded and answered its warm-up."""
    import kserve
    from kserve.errors import NoModelReady

    from serving.model import GarbageClassifierModel

    port = free_port()
    unloaded = GarbageClassifierModel(MODEL_NAME, tmp_path)
    with pytest.raises(NoModelReady):
        kserve.ModelServer(http_port=port, enable_grpc=False).start([unloaded])
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}{READY_PATH}", timeout=2)
