"""The serving image, built and run for real: a prediction over loopback equals the in-process one.

The container runs the way the Kubernetes manifests run it: as its non-root user, read-only root
filesystem with a writable /tmp, every capability dropped, no privilege escalation, the model
folder mounted read-only at /mnt/models.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from containers.container_engine import (
    HARDENED,
    IMAGE_UID,
    Engine,
    readable_copy,
)
from support import free_port, jpeg_bytes

pytestmark = pytest.mark.integration

IMAGE = "localhost/garbage-serving:test"
MODEL_NAME = "garbage-classifier"


def _http(method: str, url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        payload = e.read()
        try:
            return e.code, json.loads(payload or b"{}")
        except json.JSONDecodeError:
            return e.code, {"raw": payload.decode(errors="replace")}


@pytest.fixture(scope="module")
def serving_image(engine: Engine) -> str:
    """Build serving/Dockerfile (CPU variant) once for this module."""
    started = time.monotonic()
    engine.build("serving/Dockerfile", IMAGE)
    print(f"\nserving image built with {engine.cli} in {time.monotonic() - started:.0f} s")
    return IMAGE


@pytest.fixture(scope="module")
def served(
    engine: Engine,
    serving_image: str,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The serving container, hardened like the pod, answering on a loopback port."""
    models = readable_copy(tiny_model_dir, tmp_path_factory.mktemp("mount", numbered=True) / "m")
    http_port, grpc_port = free_port(), free_port()
    name = f"garbage-serving-test-{http_port}"
    network = (
        ["--network", "host"]
        if engine.cli == "podman"
        else ["-p", f"127.0.0.1:{http_port}:{http_port}"]
    )
    engine.run(
        "run",
        "-d",
        "--rm",
        "--name",
        name,
        *network,
        *HARDENED,
        "-v",
        f"{models}:/mnt/models:ro",
        serving_image,
        "--model_dir",
        "/mnt/models",
        "--http_port",
        str(http_port),
        "--grpc_port",
        str(grpc_port),
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, body = _http("GET", f"{base}/v1/models/{MODEL_NAME}", timeout=2)
                if status == 200 and body.get("ready"):
                    break
            except OSError:
                pass
            state = engine.run("inspect", "-f", "{{.State.Running}}", name, check=False)
            if (
                state.returncode != 0
                or state.stdout.strip() != "true"
                or time.monotonic() > deadline
            ):
                logs = engine.run("logs", name, check=False)
                pytest.fail(
                    f"serving container did not become ready:\n{logs.stdout[-3000:]}"
                    f"\n{logs.stderr[-3000:]}"
                )
            time.sleep(0.5)
        yield base
    finally:
        engine.run("stop", "-t", "5", name, check=False, timeout=60)


def test_container_prediction_matches_in_process_classifier(
    served: str, tiny_model_dir: Path
) -> None:
    from garbage.core.classifier import OnnxClassifier

    images = [jpeg_bytes((60, 160, 90), seed=1), jpeg_bytes((40, 90, 200), size=(200, 150), seed=2)]
    status, body = _http(
        "POST",
        f"{served}/v1/models/{MODEL_NAME}:predict",
        {"instances": [{"image_bytes": {"b64": base64.b64encode(b).decode()}} for b in images]},
    )
    assert status == 200, body
    expected = OnnxClassifier.load(tiny_model_dir, device="cpu").predict_bytes(images)
    assert len(body["predictions"]) == len(expected)
    for got, want in zip(body["predictions"], expected, strict=True):
        assert got["label"] == want.label
        assert got["score"] == pytest.approx(want.score, abs=1e-5)
        assert list(got["probabilities"]) == list(want.probabilities)
        np.testing.assert_allclose(
            list(got["probabilities"].values()), list(want.probabilities.values()), atol=1e-5
        )


def test_container_rejects_bad_input_with_4xx(served: str) -> None:
    status, body = _http(
        "POST",
        f"{served}/v1/models/{MODEL_NAME}:predict",
        {"instances": [{"image_bytes": {"b64": "bm90IGFuIGltYWdl"}}]},
    )
    assert 400 <= status < 500, (status, body)


def test_image_runs_as_non_root_without_torch(engine: Engine, serving_image: str) -> None:
    result = engine.run(
        "run",
        "--rm",
        "--entrypoint",
        "python",
        serving_image,
        "-c",
        "import os, importlib.util as u; "
        "print(os.getuid(), os.getgid(), bool(u.find_spec('torch')), "
        "bool(u.find_spec('mlflow')))",
    )
    assert result.stdout.split() == [str(IMAGE_UID), str(IMAGE_UID), "False", "False"]
    config = json.loads(engine.run("image", "inspect", serving_image).stdout)[0]["Config"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    mount = engine.run(
        "run", "--rm", "--entrypoint", "stat", serving_image, "-c", "%u %F", "/mnt/models"
    )
    assert mount.stdout.split() == [str(IMAGE_UID), "directory"]


def test_mlflow_uri_fails_with_one_line_that_says_what_to_use(
    engine: Engine, serving_image: str
) -> None:
    """The image has no MLflow: a models:/ URI is refused in one line, without a traceback."""
    result = engine.run(
        "run",
        "--rm",
        *HARDENED,
        serving_image,
        "--model_dir",
        "models:/garbage-classifier@champion",
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    [line] = lines
    assert line.startswith("error: models:/garbage-classifier@champion "), line
    assert "MLflow is not installed" in line
    assert "local model folder" in line and "/mnt/models" in line and "s3://" in line
    assert result.stdout.strip() == ""


def test_every_module_the_entry_point_imports_is_in_the_image(
    engine: Engine, serving_image: str
) -> None:
    modules = [
        "serving.__main__",
        "serving.server",
        "serving.model",
        "serving.rest",
        "garbage.core.protocol",
        "garbage.core.model_uri",
    ]
    result = engine.run(
        "run",
        "--rm",
        *HARDENED,
        "--entrypoint",
        "python",
        serving_image,
        "-c",
        f"import importlib; [importlib.import_module(m) for m in {modules!r}]; print('imported')",
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["imported"]
    assert result.stderr.strip() == ""  # ONNX Runtime's telemetry stays quiet on a read-only root
