"""Render the kustomize trees once per session, and a strict checker for KServe custom resources.

Fixtures:
    ``rendered``: ``{"overlays/kind": [docs...], ...}`` from ``kubectl kustomize`` for every
        kustomization the project ships (base, the overlays, and manifests/monitoring when present).
    ``strict_check``: ``strict_check(doc) -> list[str]`` of problems for a custom resource, through
        the KServe SDK's typed models: an unknown field anywhere is a problem, so is a wrong type or
        a missing required field. Prometheus Operator resources (manifests/monitoring) go through
        the strict schemas of ``prometheus_operator_schema.py`` beside this file.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests.prometheus_operator_schema import prometheus_operator_problems

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "manifests"
TARGETS = ["base", "overlays/kind", "overlays/gpu", "monitoring"]

#: Custom resources and the KServe SDK model that describes each.
CUSTOM_MODELS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
}


def kustomize_targets() -> list[str]:
    """The kustomization folders under manifests/ that exist now."""
    return [t for t in TARGETS if (MANIFESTS / t / "kustomization.yaml").is_file()]


def render(target: str) -> list[dict[str, Any]]:
    """``kubectl kustomize manifests/<target>`` as a list of objects."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; it renders the kustomize trees")
    result = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS / target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize manifests/{target} failed:\n{result.stderr}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {target: render(target) for target in kustomize_targets()}


# -- strict checking through the SDK's typed models ------------------------------------------------
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "date": (str,),
    "datetime": (str,),
    "object": (object,),
}


def _model_class(name: str) -> type | None:
    import kserve.models
    import kubernetes.client.models

    return getattr(kserve.models, name, None) or getattr(kubernetes.client.models, name, None)


def _check(value: Any, type_name: str, path: str, problems: list[str]) -> Any:
    """Check ``value`` against an OpenAPI-generator type string; return the built value."""
    if value is None:
        return None
    if type_name.startswith("list[") and type_name.endswith("]"):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {type(value).__name__}")
            return None
        return [_check(v, type_name[5:-1], f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if type_name.startswith("dict(") and type_name.endswith(")"):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {type(value).__name__}")
            return None
        inner = type_name[5:-1].split(",", 1)[1].strip()
        return {k: _check(v, inner, f"{path}.{k}", problems) for k, v in value.items()}
    if type_name in _PRIMITIVES:
        wanted = _PRIMITIVES[type_name]
        if (type_name == "int" and isinstance(value, bool)) or not isinstance(value, wanted):
            problems.append(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return value
    if type_name == "ResourceQuantity":
        if not isinstance(value, (str, int, float)):
            problems.append(f"{path}: expected a quantity, got {value!r}")
        return value
    cls = _model_class(type_name)
    if cls is None:
        problems.append(f"{path}: no SDK model named {type_name} to check it against")
        return None
    if not isinstance(value, dict):
        problems.append(f"{path}: expected an object ({type_name}), got {type(value).__name__}")
        return None
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    kwargs = {}
    for key, item in value.items():
        attr = by_json.get(key)
        if attr is None:
            problems.append(f"{path}.{key}: unknown field for {type_name}")
            continue
        kwargs[attr] = _check(item, cls.openapi_types[attr], f"{path}.{key}", problems)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # the models' own checks: required fields, enums
        problems.append(f"{path}: invalid {type_name}: {e}")
        return None


def strict_problems(doc: dict[str, Any]) -> list[str]:
    """Problems of a custom resource against its SDK model (unknown kinds are a problem too)."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    model = CUSTOM_MODELS.get(key)
    name = (doc.get("metadata") or {}).get("name")
    if model is None and key[0] == "monitoring.coreos.com/v1":
        return prometheus_operator_problems(doc)
    if model is None:
        return [
            (
                f"{key[1]} {name} ({key[0]}): no typed model to check this custom resource "
                "against; add one to CUSTOM_MODELS in tests/manifests/conftest.py"
            )
        ]
    problems: list[str] = []
    _check(doc, model, f"{key[1]}/{name}", problems)
    return problems


@pytest.fixture(scope="session")
def strict_check() -> Callable[[dict[str, Any]], list[str]]:
    return strict_problems
