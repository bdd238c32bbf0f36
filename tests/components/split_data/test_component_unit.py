"""``split_data``: a stratified, seeded manifest of the kept images; refuses a class too small."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kfp import dsl

from components.split_data import split_data
from garbage.core.config import Config


def test_split_assigns_every_kept_image_to_one_split_per_class(
    manifest: dsl.Dataset, validated: dict[str, Any], small_archive, pipeline_config: Config
) -> None:
    assert small_archive.per_class == 5  # the counts below
    table = pd.read_csv(Path(validated["table"].path) / "images.csv")
    split = pd.read_csv(manifest.path)
    assert {"path", "label", "sha256", "split"} <= set(split.columns)
    assert sorted(split["path"]) == sorted(table["path"])  # each kept image exactly once
    # 5 images a class under the smoke fractions (0.15, 0.15): 1 test, 1 validation, 3 train
    counts = split.groupby(["split", "label"]).size()
    for name in pipeline_config.data.classes:
        assert (counts["train"][name], counts["val"][name], counts["test"][name]) == (3, 1, 1)
    n = len(pipeline_config.data.classes)
    assert manifest.metadata == {"train": 3 * n, "val": n, "test": n}


def test_split_is_the_same_on_every_run(
    manifest: dsl.Dataset, validated: dict[str, Any], config_json: str, tmp_path: Path
) -> None:
    again = dsl.Dataset(name="manifest", uri=str(tmp_path / "manifest"), metadata={})
    split_data.python_func(config_json=config_json, table=validated["table"], manifest=again)
    assert Path(again.path).read_bytes() == Path(manifest.path).read_bytes()
    assert again.metadata == manifest.metadata


def test_a_class_too_small_to_split_fails_clearly(
    validated: dict[str, Any], config_json: str, tmp_path: Path
) -> None:
    table = pd.read_csv(Path(validated["table"].path) / "images.csv")
    trash = table.index[table["label"] == "trash"]
    (tmp_path / "table").mkdir()
    table.drop(trash[2:]).to_csv(tmp_path / "table" / "images.csv", index=False)
    out = dsl.Dataset(name="manifest", uri=str(tmp_path / "manifest"), metadata={})
    with pytest.raises(ValueError, match="class 'trash' has 2 images; at least 3 are needed"):
        split_data.python_func(
            config_json=config_json,
            table=dsl.Dataset(name="table", uri=str(tmp_path / "table"), metadata={}),
            manifest=out,
        )
    assert not Path(out.path).exists() and out.metadata == {}
