"""The compiled pipeline IR: a golden file (normalised) and the train task's GPU request.

Regenerate the golden file after an intended pipeline change with
``UPDATE_GOLDEN=1 python -m pytest tests/pipelines/test_compiled_ir.py`` and review its diff.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.image import COMPONENTS_IMAGE
from garbage.core.config import load_config
from pipelines.submit import cluster_config
from pipelines.training import compile_pipeline

GOLDEN = Path(__file__).parent / "golden" / "pipeline_ir.yaml"
IMAGE_PLACEHOLDER = "<COMPONENTS_IMAGE>"
VOLATILE_KEYS = ("sdkVersion",)


def _compile(tmp_path: Path) -> list[dict[str, Any]]:
    config = cluster_config(load_config(profile="gpu", environ={}))
    path = compile_pipeline(tmp_path / "pipeline.yaml", config)
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def normalise(documents: list[dict[str, Any]], image: str) -> list[dict[str, Any]]:
    """Drop fields that change without a pipeline change (SDK version, the image tag)."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items() if k not in VOLATILE_KEYS}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return IMAGE_PLACEHOLDER if node == image else node

    return [walk(d) for d in documents]


@pytest.fixture(scope="module")
def ir(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _compile(tmp_path_factory.mktemp("ir"))


def _executor_for(ir: list[dict[str, Any]], task: str) -> str:
    spec = ir[0]["root"]["dag"]["tasks"][task]
    return ir[0]["components"][spec["componentRef"]["name"]]["executorLabel"]


def test_compiled_ir_matches_golden(ir):
    got = normalise(ir, COMPONENTS_IMAGE)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(yaml.safe_dump_all(got, sort_keys=True))
    assert GOLDEN.is_file(), f"no golden file; create it with UPDATE_GOLDEN=1 ({GOLDEN})"
    want = [d for d in yaml.safe_load_all(GOLDEN.read_text()) if d]
    if got != want:
        diff = difflib.unified_diff(
            yaml.safe_dump_all(want, sort_keys=True).splitlines(),
            yaml.safe_dump_all(got, sort_keys=True).splitlines(),
            "golden",
            "compiled",
            lineterm="",
            n=2,
        )
        pytest.fail(
            "compiled IR differs from tests/pipelines/golden/pipeline_ir.yaml; if the change "
            "is intended, regenerate with UPDATE_GOLDEN=1 and review the diff:\n"
            + "\n".join(list(diff)[:80])
        )
    assert not any("sdkVersion" in d for d in want)


def test_train_task_asks_for_one_gpu_on_a_gpu_node(ir):
    executor = _executor_for(ir, "train-model")
    resources = ir[0]["deploymentSpec"]["executors"][executor]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert int(resources["accelerator"]["resourceCount"]) == 1
    platform = ir[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"][executor]
    assert platform["nodeSelector"]["labels"]  # a GPU node label
    assert any(t.get("key") == "nvidia.com/gpu" for t in platform["tolerations"])
    assert any(
        m["mountPath"] == "/dev/shm" and m.get("medium") == "Memory"
        for m in platform["emptyDirMounts"]
    )


def test_only_the_train_task_asks_for_a_gpu(ir):
    train = _executor_for(ir, "train-model")
    for name, executor in ir[0]["deploymentSpec"]["executors"].items():
        resources = executor["container"].get("resources") or {}
        assert ("accelerator" in resources) == (name == train), name


def test_every_step_runs_in_the_components_image_with_requests_and_limits(ir):
    for name, executor in ir[0]["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"] == COMPONENTS_IMAGE, name
        resources = container.get("resources") or {}
        for key in (
            "resourceCpuRequest",
            "resourceCpuLimit",
            "resourceMemoryRequest",
            "resourceMemoryLimit",
        ):
            assert key in resources, f"{name} has no {key}"


def test_the_deploy_task_publishes_the_model_the_library_names(ir):
    from garbage.core.names import MODEL_NAME
    from garbage.deploy import ARTIFACTS_DESTINATION, DEFAULT_NAMESPACE

    (deploy,) = [
        task
        for component in ir[0]["components"].values()
        for name, task in (component.get("dag") or {}).get("tasks", {}).items()
        if name == "deploy-model"
    ]
    constants = {
        key: value["runtimeValue"]["constant"]
        for key, value in deploy["inputs"]["parameters"].items()
        if "runtimeValue" in value
    }
    assert constants == {
        "name": MODEL_NAME,
        "namespace": DEFAULT_NAMESPACE,
        "artifacts_destination": ARTIFACTS_DESTINATION,
    }


def test_only_the_steps_that_talk_to_mlflow_get_its_login(ir):
    platform = ir[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    with_login = {
        name
        for name, spec in platform.items()
        for secret in spec.get("secretAsEnv") or []
        if secret["secretName"] == "garbage-pipeline-mlflow"
    }
    assert with_login == {
        "exec-train-model",
        "exec-evaluate-model",
        "exec-export-model",
        "exec-register-model",
        "exec-deploy-model",
    }
    train = platform["exec-train-model"]["secretAsEnv"][0]
    assert sorted(k["envVar"] for k in train["keyToEnv"]) == [
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_USERNAME",
    ]
