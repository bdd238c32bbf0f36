"""Shared inputs of the component tests: one small dataset run through the components once.

Each session fixture runs one component's ``python_func`` on the outputs of the one before, with
real KFP artifact objects, the way the KFP executor calls it: an output artifact's ``uri`` is a
local path under ``<session tmp>/<step>/``, whose parent exists (the executor creates it) and the
path itself does not. For a local path ``artifact.path`` is the ``uri`` itself (only ``gs://``,
``minio://``, ``s3://`` and ``oci://`` URIs map to mount points). The chain:

fetch (a synthetic six-class archive, 5 JPEGs a class) -> validate -> split (3/1/1 a class) ->
train (smoke profile: 64x64, one epoch) -> evaluate, export -> reference profile,

all tracked in one temporary SQLite MLflow store (the smoke config's ``<work_dir>/mlflow.db``).
The unit tests assert on these runs; the local tests import them into ``kfp.local`` pipelines
with ``dsl.importer`` (:class:`KfpLocal`).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kfp import dsl
from support import DEV_ARCHIVE_SHA256, make_archive, make_image_tree

from garbage.core.config import Config, load_config

#: Images per class in the shared dataset: 3 train, 1 validation, 1 test under the smoke split.
PER_CLASS = 5

A = TypeVar("A", bound=dsl.Artifact)


def new_artifact(cls: type[A], folder: Path, name: str) -> A:
    """An output artifact as the KFP executor hands it to a component: ``folder`` exists."""
    folder.mkdir(parents=True, exist_ok=True)
    return cls(name=name, uri=str(folder / name), metadata={})


def _smoke(work_dir: Path, source: Path, sha256: str, *overrides: str) -> Config:
    """The smoke profile on the archive at ``source``; work dir (and MLflow store) ``work_dir``."""
    settings = [f"work_dir={work_dir}", f"data.source={source}", f"data.sha256={sha256}"]
    return load_config(profile="smoke", overrides=[*settings, *overrides], environ={})


@dataclass(frozen=True)
class Archive:
    """A dataset archive, its sha256, and how many images each of its classes holds."""

    path: Path
    sha256: str
    per_class: int


@pytest.fixture(scope="session")
def components_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("components")


@pytest.fixture(scope="session")
def small_archive(components_root: Path) -> Archive:
    """Six classes of ``PER_CLASS`` distinct synthetic JPEGs, wrapped in a folder, as a .tar.gz."""
    tree = components_root / "archive-tree"
    make_image_tree(tree / "dataset", per_class=PER_CLASS)
    path = make_archive(tree, components_root / "small-dataset.tar.gz")
    return Archive(path, hashlib.sha256(path.read_bytes()).hexdigest(), PER_CLASS)


@pytest.fixture(scope="session")
def config_for(small_archive: Archive) -> Callable[..., Config]:
    """``config_for(work_dir, *overrides)``: the smoke profile on the small archive, with its own
    work dir (so its own data cache and MLflow store)."""

    def make(work_dir: Path, *overrides: str) -> Config:
        return _smoke(work_dir, small_archive.path, small_archive.sha256, *overrides)

    return make


@pytest.fixture(scope="session")
def pipeline_config(components_root: Path, config_for: Callable[..., Config]) -> Config:
    """The smoke profile on the small archive; its work dir holds the shared MLflow store."""
    return config_for(components_root / "work")


@pytest.fixture(scope="session")
def config_json(pipeline_config: Config) -> str:
    return pipeline_config.model_dump_json()


@pytest.fixture(scope="session")
def fetched(components_root: Path, config_json: str) -> dsl.Dataset:
    """``fetch_data``'s ``images``: the small archive's class folders."""
    from components.fetch_data import fetch_data

    images = new_artifact(dsl.Dataset, components_root / "fetch", "images")
    fetch_data.python_func(config_json=config_json, images=images)
    return images


@pytest.fixture(scope="session")
def validated(components_root: Path, config_json: str, fetched: dsl.Dataset) -> dict[str, Any]:
    """``validate_data``'s ``table``, ``report`` and ``summary`` on the fetched images."""
    from components.validate_data import validate_data

    folder = components_root / "validate"
    outputs = {
        "table": new_artifact(dsl.Dataset, folder, "table"),
        "report": new_artifact(dsl.Markdown, folder, "report"),
        "summary": new_artifact(dsl.Metrics, folder, "summary"),
    }
    validate_data.python_func(config_json=config_json, images=fetched, **outputs)
    return outputs


@pytest.fixture(scope="session")
def manifest(components_root: Path, config_json: str, validated: dict[str, Any]) -> dsl.Dataset:
    """``split_data``'s ``manifest`` of the validated table."""
    from components.split_data import split_data

    out = new_artifact(dsl.Dataset, components_root / "split", "manifest")
    split_data.python_func(config_json=config_json, table=validated["table"], manifest=out)
    return out


@pytest.fixture(scope="session")
def trained(
    components_root: Path, config_json: str, fetched: dsl.Dataset, manifest: dsl.Dataset
) -> dict[str, Any]:
    """``train_model``'s ``model`` (the smoke checkpoint) and ``metrics``, and its ``run_id``."""
    from components.train_model import train_model

    folder = components_root / "train"
    outputs = {
        "model": new_artifact(dsl.Model, folder, "model"),
        "metrics": new_artifact(dsl.Metrics, folder, "metrics"),
    }
    run_id = train_model.python_func(
        config_json=config_json, images=fetched, manifest=manifest, **outputs
    )
    return {**outputs, "run_id": run_id}


@pytest.fixture(scope="session")
def evaluated(
    components_root: Path,
    config_json: str,
    fetched: dsl.Dataset,
    manifest: dsl.Dataset,
    trained: dict[str, Any],
) -> dict[str, Any]:
    """``evaluate_model``'s four artifacts and its returned test macro-F1 (``macro_f1``)."""
    from components.evaluate_model import evaluate_model

    folder = components_root / "evaluate"
    outputs = {
        "metrics": new_artifact(dsl.Metrics, folder, "metrics"),
        "confusion": new_artifact(dsl.ClassificationMetrics, folder, "confusion"),
        "report": new_artifact(dsl.HTML, folder, "report"),
        "evaluation": new_artifact(dsl.Dataset, folder, "evaluation"),
    }
    macro_f1 = evaluate_model.python_func(
        config_json=config_json,
        run_id=trained["run_id"],
        images=fetched,
        manifest=manifest,
        model=trained["model"],
        **outputs,
    )
    return {**outputs, "macro_f1": macro_f1}


@pytest.fixture(scope="session")
def exported(
    components_root: Path,
    config_json: str,
    fetched: dsl.Dataset,
    manifest: dsl.Dataset,
    trained: dict[str, Any],
) -> dsl.Model:
    """``export_model``'s ``onnx_model`` of the smoke checkpoint."""
    from components.export_model import export_model

    onnx_model = new_artifact(dsl.Model, components_root / "export", "onnx_model")
    export_model.python_func(
        config_json=config_json,
        run_id=trained["run_id"],
        images=fetched,
        manifest=manifest,
        model=trained["model"],
        onnx_model=onnx_model,
    )
    return onnx_model


@pytest.fixture(scope="session")
def reference(
    components_root: Path, fetched: dsl.Dataset, manifest: dsl.Dataset, exported: dsl.Model
) -> dsl.Dataset:
    """``reference_profile``'s ``reference`` of the training and validation images."""
    from components.reference_profile import reference_profile

    out = new_artifact(dsl.Dataset, components_root / "reference", "reference")
    reference_profile.python_func(
        images=fetched, manifest=manifest, onnx_model=exported, reference=out
    )
    return out


@pytest.fixture(scope="session")
def dev_images(components_root: Path, dev_archive: Path) -> dsl.Dataset:
    """``fetch_data``'s ``images`` of the real TrashNet development archive (real photos)."""
    from components.fetch_data import fetch_data

    config = _smoke(components_root / "dev-work", dev_archive, DEV_ARCHIVE_SHA256)
    images = new_artifact(dsl.Dataset, components_root / "dev-fetch", "images")
    fetch_data.python_func(config_json=config.model_dump_json(), images=images)
    return images


@dataclass(frozen=True)
class KfpLocal:
    """A ``kfp.local`` session (SubprocessRunner in this interpreter) rooted in a test's tmp dir.

    Each task runs as a subprocess; its outputs land under
    ``pipeline_root/<pipeline>-<time>/<task>/<output>``.
    """

    pipeline_root: Path
    workspace_root: Path

    @staticmethod
    def importer(artifact: dsl.Artifact) -> Any:
        """Inside a ``@dsl.pipeline``: the artifact at ``artifact.uri`` as a task input.

        kfp.local's importer passes the URI through (the task reads the files in place) with
        ``artifact``'s metadata.
        """
        return dsl.importer(
            artifact_uri=artifact.uri, artifact_class=type(artifact), metadata=artifact.metadata
        ).output

    def task_output(self, task: str, name: str) -> Path:
        """Where the one run of ``task`` left its output ``name`` (also when the task failed)."""
        (found,) = self.pipeline_root.glob(f"*/{task}/{name}")
        return found


@pytest.fixture
def kfp_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KfpLocal:
    """``kfp.local.init`` for one test; the previous local config is restored afterwards.

    kfp.local deletes ``workspace_root`` at the end of every pipeline run, so it is a folder of
    its own (never where inputs live). Tasks inherit this process's environment.
    """
    from kfp import local
    from kfp.local import config

    # The components image is not a python image: kfp.local warns, and runs the task here anyway.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
    monkeypatch.setattr(
        config.LocalExecutionConfig, "instance", config.LocalExecutionConfig.instance
    )
    session = KfpLocal(tmp_path / "kfp", tmp_path / "workspace")
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(session.pipeline_root),
        workspace_root=str(session.workspace_root),
        raise_on_error=True,
    )
    return session
