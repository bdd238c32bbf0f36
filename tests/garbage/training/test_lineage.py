"""Lineage: the code version from git or the image's environment, the data version, run names,
and the tags and dataset inputs that ``train_step`` puts on its MLflow run."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from support import CLASSES

from garbage.core.config import Config
from garbage.training.data.split import read_manifest, write_manifest
from garbage.training.lineage import (
    DATASET_DIGEST_LENGTH,
    CodeVersion,
    code_version,
    data_version,
    lineage_tags,
    manifest_digest,
    run_name,
    split_dataset_digest,
)


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git work tree with one committed file."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    (root / "code.py").write_text("print('v1')\n")
    _git(root, "add", "code.py")
    _git(root, "commit", "-q", "-m", "first")
    return root


def test_the_code_version_is_the_work_trees_commit(repo: Path) -> None:
    found = code_version(repo, environ={"GARBAGE_GIT_COMMIT": "f" * 40})
    assert found == CodeVersion(_git(repo, "rev-parse", "HEAD"), False, "git")
    assert found.short == found.commit[:7]


def test_a_changed_tracked_file_makes_the_tree_dirty_an_untracked_one_does_not(
    repo: Path,
) -> None:
    (repo / "notes.txt").write_text("untracked\n")
    assert code_version(repo, environ={}).dirty is False
    (repo / "code.py").write_text("print('v2')\n")
    found = code_version(repo, environ={})
    assert found.dirty is True and found.dirty_text == "true"
    assert found.short.endswith("+dirty")
    _git(repo, "commit", "-q", "-am", "second")
    after = code_version(repo, environ={})
    assert after.dirty is False and after.commit != found.commit


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"GARBAGE_GIT_COMMIT": "a" * 40, "GARBAGE_GIT_DIRTY": "false"},
            CodeVersion("a" * 40, False, "env"),
        ),
        (
            {"GARBAGE_GIT_COMMIT": "b" * 40, "GARBAGE_GIT_DIRTY": "1"},
            CodeVersion("b" * 40, True, "env"),
        ),
        ({"GARBAGE_GIT_COMMIT": "c" * 40}, CodeVersion("c" * 40, None, "env")),
        ({"GARBAGE_GIT_COMMIT": "unknown"}, CodeVersion("unknown", None, "unknown")),
        ({}, CodeVersion("unknown", None, "unknown")),
    ],
)
def test_outside_a_work_tree_the_code_version_comes_from_the_environment(
    tmp_path: Path, environ: dict[str, str], expected: CodeVersion
) -> None:
    assert code_version(tmp_path, environ=environ) == expected
    assert expected.dirty_text in {"true", "false", "unknown"}


def _manifest() -> pd.DataFrame:
    rows = [
        {"path": f"{c}/{c}{i}.jpg", "label": c, "sha256": f"{c}{i}", "split": split}
        for c in CLASSES[:3]
        for i, split in enumerate(["train", "train", "val", "test"])
    ]
    return pd.DataFrame(rows)


def test_the_manifest_digest_depends_on_the_rows_not_their_order(tmp_path: Path) -> None:
    manifest = _manifest()
    digest = manifest_digest(manifest)
    assert len(digest) == 64
    shuffled = manifest.sample(frac=1, random_state=3)[["split", "sha256", "label", "path"]]
    assert manifest_digest(shuffled) == digest
    read_back = read_manifest(write_manifest(manifest.assign(error=None), tmp_path / "m.csv"))
    assert manifest_digest(read_back) == manifest_digest(manifest.assign(error=None))
    relabelled = manifest.copy()
    relabelled.loc[0, "label"] = "trash"
    assert manifest_digest(relabelled) != digest
    resplit = manifest.copy()
    resplit.loc[0, "split"] = "test"
    assert manifest_digest(resplit) != digest


def test_the_data_version_and_the_run_name(smoke_config: Config) -> None:
    manifest = _manifest()
    data = data_version(smoke_config, manifest)
    assert data.version == data.manifest_digest == manifest_digest(manifest)
    assert data.archive_sha256 == smoke_config.data.sha256
    assert data.name == "dataset-resized-rgb-112"
    assert data_version(smoke_config, manifest, version="v" * 64).version == "v" * 64
    code = CodeVersion("5601964" + "0" * 33, True, "git")
    assert run_name("train", smoke_config, data, code) == (
        f"train efficientnet_lite0 64x64 data:{data.version[:8]} git:5601964+dirty"
    )
    tags = lineage_tags(code, data)
    assert tags["mlflow.source.git.commit"] == code.commit and tags["git.dirty"] == "true"
    assert CodeVersion.from_tags(tags) == CodeVersion(code.commit, True, "run")
    assert CodeVersion.from_tags({}) is None


def test_train_step_puts_the_lineage_on_its_run(
    smoke_config: Config, image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's tags, name and dataset inputs (the training itself is the smoke profile's job in
    the component tests; here it is replaced by a stand-in that returns at once)."""
    import garbage.training.train as train
    from garbage.training.steps import train_step
    from garbage.training.train import TrainResult

    def fake_train(
        config: Config,
        images: Path,
        items: Any,
        val: Any,
        out: Path,
        on_epoch: Any,
        init_checkpoint: Path | None = None,
        train_sources: list[str] | None = None,
    ) -> TrainResult:
        assert train_sources is None or len(train_sources) == len(items)
        on_epoch(1, {"val_macro_f1": 0.5})
        out.mkdir(parents=True, exist_ok=True)
        (out / "best.pt").write_bytes(b"stand-in checkpoint")
        return TrainResult(
            checkpoint=out / "best.pt",
            best_epoch=1,
            best_val_macro_f1=0.5,
            device="cpu",
            train_images_per_second=10.0,
            seconds=1.0,
            history=[{"epoch": 1}],
        )

    monkeypatch.setattr(train, "train_model", fake_train)
    rows = [
        {
            "path": f"{c}/{c}{i}.jpg",
            "label": c,
            "sha256": hashlib.sha256((image_tree / c / f"{c}{i}.jpg").read_bytes()).hexdigest(),
            "split": "train" if i < 6 else ("val" if i == 6 else "test"),
        }
        for c in CLASSES
        for i in range(8)
    ]
    manifest_csv = write_manifest(pd.DataFrame(rows), tmp_path / "manifest.csv")
    out = tmp_path / "train"
    out.mkdir()
    summary = train_step(smoke_config, image_tree, manifest_csv, out)

    run = MlflowClient(tracking_uri=smoke_config.mlflow_tracking_uri).get_run(summary["run_id"])
    manifest = read_manifest(manifest_csv)
    data, code = data_version(smoke_config, manifest), code_version()
    assert {k: run.data.tags[k] for k in lineage_tags(code, data)} == lineage_tags(code, data)
    assert run.data.tags["data.version"] == manifest_digest(manifest)
    assert run.info.run_name == run_name("train", smoke_config, data, code)

    inputs = {_context(i): i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"}
    for split, dataset in inputs.items():
        assert dataset.name == f"dataset-resized-rgb-112/{split}"
        assert dataset.digest == split_dataset_digest(manifest, split)
        assert len(dataset.digest) == DATASET_DIGEST_LENGTH
        assert smoke_config.data.source in dataset.source
    assert len({d.digest for d in inputs.values()}) == 3

    named = train_step(smoke_config, image_tree, manifest_csv, out, run_name="mine")
    assert MlflowClient().get_run(named["run_id"]).info.run_name == "mine"


def _context(dataset_input: Any) -> str:
    (context,) = [t.value for t in dataset_input.tags if t.key == "mlflow.data.context"]
    return context
