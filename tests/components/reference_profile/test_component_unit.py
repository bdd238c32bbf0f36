"""``reference_profile``: monitoring features and model predictions of the train and val images."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from kfp import dsl

from components.reference_profile import reference_profile
from garbage.core.classifier import OnnxClassifier
from garbage.core.config import Config
from monitoring.features import FEATURE_COLUMNS
from monitoring.reference import ReferenceProfileError, load_reference


def test_reference_profiles_the_images_the_model_learnt_from(
    reference: dsl.Dataset, manifest: dsl.Dataset, pipeline_config: Config
) -> None:
    assert reference.metadata == {"file": "reference.parquet"}
    path = Path(reference.path) / "reference.parquet"
    table = load_reference(path)  # as the drift job reads it
    split = pd.read_csv(manifest.path)
    learnt = split[split["split"].isin(["train", "val"])]
    assert sorted(table["path"]) == sorted(learnt["path"])
    assert set(FEATURE_COLUMNS) <= set(table.columns)
    assert table[list(FEATURE_COLUMNS)].notna().all().all()
    provenance = json.loads(path.with_suffix(".parquet.json").read_text())
    assert provenance["rows"] == len(table) and provenance["has_predictions"] is True
    assert provenance["splits"] == ["train", "val"]


def test_reference_carries_the_exported_models_predictions(
    reference: dsl.Dataset, exported: dsl.Model, fetched: dsl.Dataset
) -> None:
    table = pd.read_parquet(Path(reference.path) / "reference.parquet")
    classifier = OnnxClassifier.load(Path(exported.path), device="cpu")
    predictions = classifier.predict_bytes(
        [(Path(fetched.path) / p).read_bytes() for p in table["path"]]
    )
    assert list(table["prediction"]) == [p.label for p in predictions]
    assert list(table["score"]) == pytest.approx([p.score for p in predictions], abs=1e-5)


def test_a_manifest_without_training_images_fails_clearly(
    manifest: dsl.Dataset, exported: dsl.Model, fetched: dsl.Dataset, tmp_path: Path
) -> None:
    split = pd.read_csv(manifest.path)
    only_test = tmp_path / "manifest.csv"
    split[split["split"] == "test"].to_csv(only_test, index=False)
    out = dsl.Dataset(name="reference", uri=str(tmp_path / "reference"), metadata={})
    with pytest.raises(ReferenceProfileError, match=r"no image in splits \['train', 'val'\]"):
        reference_profile.python_func(
            images=fetched,
            manifest=dsl.Dataset(name="manifest", uri=str(only_test), metadata={}),
            onnx_model=exported,
            reference=out,
        )
    assert not Path(out.path).exists() and out.metadata == {}
