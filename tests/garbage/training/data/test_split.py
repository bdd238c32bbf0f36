"""Split: deterministic, stratified, content-based, no leakage."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from garbage.core.config import SplitConfig
from garbage.training.data.split import SPLITS, read_manifest, split_dataset, write_manifest


def table(per_class: dict[str, int]) -> pd.DataFrame:
    rows = [
        {
            "path": f"{label}/{label}{i}.jpg",
            "label": label,
            "sha256": hashlib.sha256(f"{label}{i}".encode()).hexdigest(),
        }
        for label, n in per_class.items()
        for i in range(n)
    ]
    return pd.DataFrame(rows)


COUNTS = {"glass": 100, "paper": 60, "trash": 20}


def test_same_seed_same_split_and_other_seed_another() -> None:
    a = split_dataset(table(COUNTS), SplitConfig(seed=1))
    b = split_dataset(table(COUNTS).sample(frac=1, random_state=3), SplitConfig(seed=1))
    c = split_dataset(table(COUNTS), SplitConfig(seed=2))
    assert a.equals(b)  # input order does not matter
    assert not a.equals(c)


def test_split_depends_on_content_not_names() -> None:
    renamed = table(COUNTS).assign(path=lambda t: "x/" + t["path"])
    a = split_dataset(table(COUNTS), SplitConfig()).set_index("sha256")["split"]
    b = split_dataset(renamed, SplitConfig()).set_index("sha256")["split"]
    assert a.sort_index().equals(b.sort_index())


def test_every_image_in_exactly_one_split_and_stratified() -> None:
    result = split_dataset(table(COUNTS), SplitConfig(val_fraction=0.15, test_fraction=0.15))
    assert len(result) == sum(COUNTS.values())
    assert result["sha256"].is_unique and result["path"].is_unique
    assert set(result["split"]) == set(SPLITS)
    for label, n in COUNTS.items():
        counts = result[result["label"] == label]["split"].value_counts()
        assert counts["test"] == round(n * 0.15)
        assert counts["val"] == round(n * 0.15)


def test_duplicates_are_refused_and_tiny_classes_explained() -> None:
    dup = pd.concat([table({"a": 5}), table({"a": 1})])
    with pytest.raises(ValueError, match="duplicate"):
        split_dataset(dup, SplitConfig())
    with pytest.raises(ValueError, match="at least 3"):
        split_dataset(table({"a": 5, "b": 2}), SplitConfig())


def test_max_per_class_caps_each_class() -> None:
    result = split_dataset(table(COUNTS), SplitConfig(max_per_class=10))
    assert result["label"].value_counts().to_dict() == {"glass": 10, "paper": 10, "trash": 10}


def test_manifest_round_trip(tmp_path) -> None:
    result = split_dataset(table(COUNTS), SplitConfig())
    assert read_manifest(write_manifest(result, tmp_path / "m.csv")).equals(result)
