"""scripts/kind/e2e_client.py, the kind e2e's in-cluster client, against the real model server.

On kind it runs in a pod and calls the predictor Service; here it calls the same server process
(``python -m serving``, REST and gRPC) on 127.0.0.1, run as the Job runs it: the file, by path.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from support import REPO_ROOT, free_port

from garbage.core.classifier import OnnxClassifier
from garbage.core.names import TRASHNET_CLASSES

SCRIPT = REPO_ROOT / "scripts/kind/e2e_client.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.integration
def test_rest_and_grpc_answer_what_the_model_says(model_server, tiny_model_dir: Path, e2e_client):
    result = _run(
        f"--rest-url={model_server.base}", f"--grpc-target={model_server.grpc_url}", "--images=2"
    )
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)["predictions"]
    assert [p["protocol"] for p in predictions] == ["rest", "grpc", "rest", "grpc"]
    reference = OnnxClassifier.load(tiny_model_dir, device="cpu")
    expected = reference.predict_bytes([e2e_client.make_image(i) for i in range(2)])
    assert [p["label"] for p in predictions] == [e.label for e in expected for _ in range(2)]
    for got, want in zip(predictions, [e for e in expected for _ in range(2)], strict=True):
        assert got["score"] == pytest.approx(want.score, abs=1e-4)


@pytest.mark.integration
def test_an_unreachable_port_fails_and_names_the_network_policy(model_server):
    result = _run(
        f"--rest-url={model_server.base}", f"--grpc-target=127.0.0.1:{free_port()}", "--wait=1"
    )
    assert result.returncode == 1
    assert "gRPC did not connect" in result.stderr
    assert "garbage-classifier/inference-client=true" in result.stderr


def test_answers_a_working_model_would_not_give_are_errors(e2e_client):
    classes = list(TRASHNET_CLASSES)
    good = dict.fromkeys(classes, 0.1) | {"glass": 0.5}
    assert e2e_client._check("rest", good, "glass").score == pytest.approx(0.5)
    for probabilities, label, reason in [
        (good, "banana", "is not one of"),
        (good | {"glass": 0.4}, "glass", "sum to"),
        (good, "metal", "not the most probable"),
    ]:
        with pytest.raises(e2e_client.E2EError, match=reason):
            e2e_client._check("rest", probabilities, label)


def test_every_image_differs(e2e_client):
    images = [e2e_client.make_image(i) for i in range(3)]
    assert len(set(images)) == 3


def test_the_serving_image_has_everything_the_client_imports():
    """The Job runs the client in the serving image: its imports are in that image's lock."""
    tree = ast.parse(SCRIPT.read_text())
    modules = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    modules |= {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    lock = {
        Requirement(line).name
        for line in (REPO_ROOT / "serving/requirements-cpu.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    distributions = importlib.metadata.packages_distributions()
    for module in sorted(modules):
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top == "__future__":
            continue
        if top == "garbage":  # the image installs the project's wheel for garbage.core and serving
            assert module.startswith("garbage.core"), f"{module} is not in the serving image"
            continue
        names = {canonicalize_name(d) for d in distributions.get(top, [])}
        assert names & lock, f"{module} ({names}) is not in serving/requirements-cpu.txt"
