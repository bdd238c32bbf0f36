"""``garbage deploy`` against a FAKE Kubernetes API server, credentials from a kubeconfig.

``FakeKubernetesAPI`` (``tests/fake_kubernetes.py``) is a FAKE: no Kubernetes API server can run
on the development and CI machines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from fake_kubernetes import NAME, NEW, NS, OLD, FakeKubernetesAPI, write_kubeconfig
from typer.testing import CliRunner

from cli.deploy import deploy


@pytest.fixture
def fake_api() -> Iterator[FakeKubernetesAPI]:
    with FakeKubernetesAPI() as server:
        yield server


def test_garbage_deploy_command_uses_the_kubeconfig(
    fake_api: FakeKubernetesAPI, tmp_path: Path
) -> None:
    app = typer.Typer()
    app.command()(deploy)
    fake_api.seed(OLD)
    fake_api.behaviour[NEW] = "ready"
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fake_api.url)
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
