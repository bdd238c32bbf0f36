"""Fixtures of the kind e2e helper tests: the helpers loaded from their files, the real server."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from support import REPO_ROOT


def load(path: Path) -> ModuleType:
    """A Python file that is not in a package, imported as a module named after the file."""
    spec = importlib.util.spec_from_file_location(f"_e2e_{path.stem}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def e2e_client() -> ModuleType:
    return load(REPO_ROOT / "scripts/kind/e2e_client.py")


@pytest.fixture(scope="session")
def e2e_prometheus() -> ModuleType:
    return load(REPO_ROOT / "scripts/kind/e2e_prometheus.py")


@pytest.fixture(scope="module")
def model_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """``python -m serving`` on free ports, started as tests/serving does (its helper, reused)."""
    serving_fixtures = load(REPO_ROOT / "tests/serving/conftest.py")
    log = tmp_path_factory.mktemp("server") / "server.log"
    with serving_fixtures._running_server(tiny_model_dir, [], log) as server:
        yield server
