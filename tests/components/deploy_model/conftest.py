"""The FAKE Kubernetes API server the deploy component talks to, via KUBECONFIG."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_kubernetes import FakeKubernetesAPI, write_kubeconfig


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubernetesAPI]:
    """A started ``FakeKubernetesAPI``; KUBECONFIG (inherited by kfp.local tasks) points at it."""
    with FakeKubernetesAPI() as fake:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kubeconfig", fake.url)))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield fake
