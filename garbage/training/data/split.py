"""Deterministic, stratified train/validation/test split of the validated image table."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from garbage.core.config import SplitConfig

SPLITS = ("train", "val", "test")


def _class_seed(seed: int, label: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{label}".encode()).digest()[:8], "little")


def split_dataset(table: pd.DataFrame, config: SplitConfig) -> pd.DataFrame:
    """Assign every image to exactly one of train, val and test, per class.

    The order within a class is a seeded permutation of the images sorted by content hash, so the
    split depends only on the images' content, the seed and the fractions, never on file order
    or names. Every class gets at least one validation and one test image.

    Args:
        table: Validated images with at least ``path``, ``label`` and ``sha256`` (unique).
        config: Fractions, seed and optional per-class cap.

    Returns:
        ``table`` with a ``split`` column, sorted by split, label and path.

    Raises:
        ValueError: Duplicate content hashes, or a class too small to split.
    """
    if table["sha256"].duplicated().any():
        raise ValueError("the table holds duplicate images (same sha256); validate it first")
    parts = []
    for label, group in table.groupby("label", sort=True):
        ordered = group.sort_values("sha256").reset_index(drop=True)
        rng = np.random.default_rng(_class_seed(config.seed, str(label)))
        ordered = ordered.iloc[rng.permutation(len(ordered))]
        if config.max_per_class is not None:
            ordered = ordered.iloc[: config.max_per_class]
        n = len(ordered)
        if n < 3:
            raise ValueError(f"class {label!r} has {n} images; at least 3 are needed to split")
        n_test = max(1, round(n * config.test_fraction))
        n_val = max(1, round(n * config.val_fraction))
        if n - n_test - n_val < 1:
            raise ValueError(f"class {label!r} has too few images ({n}) for the split fractions")
        assignment = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
        parts.append(ordered.assign(split=assignment))
    result = pd.concat(parts, ignore_index=True)
    result["split"] = pd.Categorical(result["split"], categories=SPLITS, ordered=True)
    result = result.sort_values(["split", "label", "path"]).reset_index(drop=True)
    result["split"] = result["split"].astype(str)
    return result


def split_uniform(sha256: str, seed: int, source: str) -> float:
    """A uniform value in ``[0, 1)`` that depends only on an image's hash, the seed and its source.

    The threshold rule of :func:`hash_split` compares it with the split fractions: an image's
    value never changes, so its split does not depend on which other images there are.
    """
    digest = hashlib.sha256(f"{seed}:{source}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hash_split(sha256: str, config: SplitConfig, source: str) -> str:
    """The split of one image by the threshold rule: test, then val, by :func:`split_uniform`.

    For images added to a source that already has splits: each keeps the split this gives it
    whatever is added later, at the configured fractions on average (not exactly per class).

    Args:
        sha256: The image's content hash.
        config: The fractions and the seed.
        source: The image's source (each source's images get their own draw).

    Returns:
        ``train``, ``val`` or ``test``.
    """
    value = split_uniform(sha256, config.seed, source)
    if value < config.test_fraction:
        return "test"
    if value < config.test_fraction + config.val_fraction:
        return "val"
    return "train"


def write_manifest(manifest: pd.DataFrame, path: Path) -> Path:
    """Write the split manifest as CSV (readable, diffable, small)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(path, index=False)
    return path


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest`."""
    text = {"path": str, "label": str, "sha256": str, "split": str, "source": str, "time": str}
    manifest = pd.read_csv(path, dtype=text)  # a source named 2024 stays text
    missing = {"path", "label", "sha256", "split"} - set(manifest.columns)
    if missing:
        raise ValueError(f"manifest {path} lacks columns {sorted(missing)}")
    return manifest


def split_summary(manifest: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Counts per split and class, e.g. ``{"train": {"glass": 300, ...}, ...}``."""
    counts = manifest.groupby(["split", "label"]).size()
    return {s: {str(k): int(v) for k, v in counts[s].items()} for s in SPLITS if s in counts.index}
