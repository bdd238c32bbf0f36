"""Lineage: which code and which data a run and a registered model version come from.

Plain functions: the code version (git commit and dirty flag), the data version (the archive's
sha256 and the split manifest's own digest), a run name that says what a run is, and the tags
that carry them on MLflow runs and registered versions.

**Code version.** Read from git where the package runs from a git work tree (a checkout, an
editable install); in an image without ``.git`` (the components image) from the environment
variables ``GARBAGE_GIT_COMMIT`` and ``GARBAGE_GIT_DIRTY``, which ``scripts/build-images.sh``
bakes in as build arguments; ``unknown`` when neither says. The dirty check looks at tracked
files only (``git status --porcelain --untracked-files=no``): the work dir, local outputs and
editor files are untracked, and counting them would mark every run dirty. A new module that is
imported but not yet added to git is therefore not seen: add it (``git add``) before a run that
must be reproducible.

**Data version.** For now, the split manifest's content digest (:func:`manifest_digest`, the
sha256 of its sorted rows: every image's path, content hash, label and split), beside the
archive's sha256 (``data.sha256``). The manifest names each image by its content hash, so its
digest identifies the exact images, labels and splits a model was trained and tested on, whatever
archive they came from. A run on a dataset version (``data.version``, see
:mod:`garbage.training.data.versions`: a manifest named by its own digest, with a ``source``
column) has that version's name as its data version, and everything downstream (tags, run names,
dataset inputs, the model card) carries it unchanged.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from garbage.core.config import Config

ENV_GIT_COMMIT = "GARBAGE_GIT_COMMIT"
ENV_GIT_DIRTY = "GARBAGE_GIT_DIRTY"
UNKNOWN = "unknown"

#: MLflow's standard tag for the source commit (the UI links runs to it).
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_GIT_DIRTY = "git.dirty"
TAG_DATA_SHA256 = "data.sha256"
TAG_DATA_VERSION = "data.version"
TAG_MANIFEST_DIGEST = "data.manifest_digest"

#: Hex digits of a digest in run names and other short labels.
SHORT = 8
#: Hex digits of a dataset digest on MLflow dataset inputs (MLflow stores at most 36).
DATASET_DIGEST_LENGTH = 16

_GIT_TIMEOUT_S = 10
_TRUE = {"1", "true", "yes", "dirty"}
_FALSE = {"0", "false", "no", "clean"}


@dataclass(frozen=True)
class CodeVersion:
    """The code a run comes from.

    Attributes:
        commit: The full git commit, or ``unknown``.
        dirty: Whether tracked files differ from the commit; None when not known.
        origin: ``git`` (read from the work tree), ``env`` (from the image's build arguments)
            or ``unknown``.
    """

    commit: str
    dirty: bool | None
    origin: str

    @property
    def short(self) -> str:
        """Seven hex digits of the commit, ``+dirty`` when the tree was dirty; or ``unknown``."""
        if self.commit == UNKNOWN:
            return UNKNOWN
        return self.commit[:7] + ("+dirty" if self.dirty else "")

    @property
    def dirty_text(self) -> str:
        """``true``, ``false`` or ``unknown``: the value of the ``git.dirty`` tag."""
        return UNKNOWN if self.dirty is None else str(self.dirty).lower()

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> CodeVersion | None:
        """The code version recorded in run tags (see :func:`lineage_tags`); None without one."""
        commit = tags.get(TAG_GIT_COMMIT)
        if not commit:
            return None
        dirty = _parse_dirty(tags.get(TAG_GIT_DIRTY, ""))
        return cls(commit, dirty, "run")


def _parse_dirty(value: str) -> bool | None:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git binary, a hung repository
        return None
    return done.stdout if done.returncode == 0 else None


def code_version(repo: Path | None = None, environ: Mapping[str, str] | None = None) -> CodeVersion:
    """The git commit and dirty flag of the code that runs.

    Args:
        repo: A folder inside the work tree; default: the folder this package is imported from.
        environ: Environment to read the fallback from (default: ``os.environ``).

    Returns:
        From git when ``repo`` is in a git work tree (untracked files do not count as dirty);
        else from ``GARBAGE_GIT_COMMIT`` / ``GARBAGE_GIT_DIRTY``; else ``unknown``.
    """
    env = os.environ if environ is None else environ
    folder = Path(__file__).resolve().parent if repo is None else Path(repo)
    head = _git(folder, "rev-parse", "--verify", "HEAD")
    if head and head.strip():
        status = _git(folder, "status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status.strip())
        return CodeVersion(head.strip(), dirty, "git")
    commit = env.get(ENV_GIT_COMMIT, "").strip()
    if commit and commit != UNKNOWN:
        return CodeVersion(commit, _parse_dirty(env.get(ENV_GIT_DIRTY, "")), "env")
    return CodeVersion(UNKNOWN, None, UNKNOWN)


def manifest_digest(manifest: pd.DataFrame) -> str:
    """The sha256 of a manifest's rows, independent of row and column order.

    Every column counts (path, content hash, label, split, and any other such as ``source``);
    missing values count as empty strings, so a manifest and the same manifest written to CSV and
    read back (:func:`garbage.training.data.split.read_manifest`) have the same digest.
    """
    frame = manifest.rename(columns=str)
    columns = sorted(frame.columns)
    frame = frame[columns]
    rows = frame.astype(object).where(frame.notna(), "").astype(str)
    rows = rows.sort_values(columns, kind="mergesort").reset_index(drop=True)
    canonical = rows.to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class DataVersion:
    """The data a run was trained and tested on.

    Attributes:
        version: The dataset version: the manifest digest until dataset versions exist.
        archive_sha256: The sha256 of the archive the images came from (``data.sha256``).
        manifest_digest: :func:`manifest_digest` of the split manifest.
        source: Where the archive came from (``data.source``).
    """

    version: str
    archive_sha256: str
    manifest_digest: str
    source: str

    @property
    def short(self) -> str:
        """The first :data:`SHORT` characters of the version, for names."""
        return self.version[:SHORT]

    @property
    def name(self) -> str:
        """A readable dataset name: the archive's file name without ``.tar.gz``/``.tgz``."""
        base = self.source.rstrip("/").split("?")[0].rsplit("/", 1)[-1]
        for suffix in (".tar.gz", ".tgz", ".tar"):
            base = base.removesuffix(suffix)
        return base or "dataset"


def data_version(config: Config, manifest: pd.DataFrame, version: str | None = None) -> DataVersion:
    """The data version of a run on ``manifest`` under ``config``.

    Args:
        config: The run config (its ``data.source`` and ``data.sha256``).
        manifest: The split manifest.
        version: A dataset version's own name, when the manifest is one; default:
            ``data.version`` when the run trains on a dataset version (which is then also the
            source, so datasets are named after it), else the manifest's digest.
    """
    digest = manifest_digest(manifest)
    if version is None and config.data.version is not None:
        return DataVersion(config.data.version, config.data.sha256, digest, config.data.version)
    return DataVersion(version or digest, config.data.sha256, digest, config.data.source)


def run_name(step: str, config: Config, data: DataVersion, code: CodeVersion) -> str:
    """A run name that says what the run is.

    For example ``train efficientnet_lite0 112x112 data:3f2a11bc git:5601964+dirty``: the step,
    the backbone and input size, the data version and the code version, short.
    """
    size = f"{config.model.image_height}x{config.model.image_width}"
    return f"{step} {config.model.backbone} {size} data:{data.short} git:{code.short}"


def lineage_tags(code: CodeVersion, data: DataVersion) -> dict[str, str]:
    """The lineage tags of a run (MLflow's standard git tag, the dirty flag, the data version)."""
    return {
        TAG_GIT_COMMIT: code.commit,
        TAG_GIT_DIRTY: code.dirty_text,
        TAG_DATA_SHA256: data.archive_sha256,
        TAG_DATA_VERSION: data.version,
        TAG_MANIFEST_DIGEST: data.manifest_digest,
    }


def version_tags(code: CodeVersion, data: DataVersion, run_id: str) -> dict[str, str]:
    """The lineage tags of a registered model version: its run, code and data."""
    return {
        "run_id": run_id,
        "git.commit": code.commit,
        TAG_GIT_DIRTY: code.dirty_text,
        TAG_DATA_VERSION: data.version,
        TAG_DATA_SHA256: data.archive_sha256,
        # The name earlier versions carry; kept so that older tooling still finds it.
        "data_sha256": data.archive_sha256,
    }


def split_dataset_digest(manifest: pd.DataFrame, split: str) -> str:
    """The MLflow dataset digest of one split: its rows' digest, shortened to fit MLflow."""
    return manifest_digest(manifest[manifest["split"] == split])[:DATASET_DIGEST_LENGTH]


def log_dataset_inputs(
    manifest: pd.DataFrame, data: DataVersion, splits: tuple[str, ...] = ("train", "val", "test")
) -> list[Any]:
    """Log each split of the manifest as an MLflow dataset input of the active run.

    One dataset per split, named ``<archive name>/<split>``, with the split's rows, the archive as
    its source and :func:`split_dataset_digest` as its digest, logged with the split as context
    (``train``, ``val``, ``test``).

    Returns:
        The logged ``mlflow.data`` datasets, in ``splits`` order (splits without rows are skipped).
    """
    import mlflow

    logged = []
    for split in splits:
        rows = manifest[manifest["split"] == split].reset_index(drop=True)
        if rows.empty:
            continue
        with warnings.catch_warnings():  # hints that do not apply to a table of file names
            warnings.filterwarnings("ignore", message=".*interpreted in multiple ways.*")
            warnings.filterwarnings("ignore", message=".*schema contains integer column.*")
            dataset = mlflow.data.from_pandas(
                rows,
                source=data.source,
                targets="label",
                name=f"{data.name}/{split}",
                digest=split_dataset_digest(manifest, split),
            )
            mlflow.log_input(dataset, context=split, tags={TAG_DATA_VERSION: data.version})
        logged.append(dataset)
    return logged
