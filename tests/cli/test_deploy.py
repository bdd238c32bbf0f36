"""``garbage deploy`` against a FAKE Kubernetes API server, credentials from a kubeconfig, and a
real MLflow registry (SQLite).

``FakeKubernetesAPI`` (``tests/fake_kubernetes.py``) is a FAKE: no Kubernetes API server can run
on the development and CI machines.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from fake_kubernetes import NAME, NEW, NS, OLD, FakeKubernetesAPI, write_kubeconfig
from support import aliases, register_sources
from typer.testing import CliRunner

from cli.deploy import deploy
from garbage.core.config import load_config
from garbage.deploy import ServedVersion


@pytest.fixture
def fake_api() -> Iterator[FakeKubernetesAPI]:
    with FakeKubernetesAPI() as server:
        yield server


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    app.command()(deploy)
    return app


def _fast(kubeconfig: Path, work: Path) -> list[str]:
    return [
        "--kubeconfig",
        str(kubeconfig),
        "--timeout",
        "10",
        "--poll-interval",
        "0.01",
        "--set",
        f"work_dir={work}",
    ]


def test_garbage_deploy_of_a_storage_uri_uses_the_kubeconfig(
    app: typer.Typer, fake_api: FakeKubernetesAPI, tmp_path: Path
) -> None:
    fake_api.seed(OLD)
    fake_api.behaviour[NEW] = "ready"
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fake_api.url)
    result = CliRunner().invoke(app, ["--model-uri", NEW, *_fast(kubeconfig, tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"InferenceService {NS}/{NAME} serves {NEW}, was {OLD}; http://{NAME}.{NS}.example.com"
    )
    assert fake_api.objects[(NS, NAME)]["spec"]["predictor"]["model"]["storageUri"] == NEW

    bad = CliRunner().invoke(app, ["--model-uri", "/local/folder", *_fast(kubeconfig, tmp_path)])
    assert bad.exit_code == 1 and "not one KServe can download" in bad.output
    missing = CliRunner().invoke(app, ["--kubeconfig", str(kubeconfig)])
    assert missing.exit_code == 2
    assert "--model-uri" in missing.output and "--status" in missing.output


def test_garbage_deploy_of_a_registered_version_moves_the_champion_and_shows_it(
    app: typer.Typer, fake_api: FakeKubernetesAPI, tmp_path: Path
) -> None:
    config = load_config(overrides=[f"work_dir={tmp_path}"], environ={})
    registry = register_sources(config, [OLD, NEW], champion="1", challenger="2")
    fake_api.seed(OLD, version=ServedVersion(config.registry.model_name, "1"))
    fake_api.behaviour[NEW] = "ready"
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fake_api.url)

    result = CliRunner().invoke(
        app, ["--model-uri", "models:/garbage-classifier@challenger", *_fast(kubeconfig, tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "serves garbage-classifier v2" in result.stdout
    assert "was garbage-classifier v1" in result.stdout
    assert aliases(registry, config) == {"champion": "2"}

    shown = CliRunner().invoke(app, ["--status", *_fast(kubeconfig, tmp_path)])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0] == f"InferenceService {NS}/{NAME}: ready (Ready)"
    assert "garbage-classifier: champion v2, challenger none" in shown.stdout
    assert lines[-1] == "registry and cluster agree"

    unknown = CliRunner().invoke(
        app, ["--model-uri", "models:/garbage-classifier/7", *_fast(kubeconfig, tmp_path)]
    )
    assert unknown.exit_code == 1 and "no such version" in unknown.output
