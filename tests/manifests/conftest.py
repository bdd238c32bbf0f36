"""Render the kustomize trees once per session, and load the pinned upstream CRDs.

Fixtures:
    ``rendered``: ``{"overlays/kind": [docs...], ...}`` from ``kubectl kustomize`` for every
        kustomization the project ships (base, the overlays, and manifests/monitoring when present).
    ``crd_schemas``: the CRDs that manifests/crds.lock pins (``manifests.crd_schema.CrdSchemas``);
        ``crd_schemas.problems(doc)`` lists what an API server with them would refuse in a custom
        resource, an unknown field included. Skips when no CRD folder is found, fails under $CI.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests.crd_schema import CrdSchemas, pinned_crds

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "manifests"
TARGETS = ["base", "overlays/kind", "overlays/gpu", "monitoring"]


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


@pytest.fixture(scope="session")
def crd_schemas() -> CrdSchemas:
    return pinned_crds()
