"""``validate_data``: the kept-image table, the report (also on failure), the summary metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kfp import dsl
from support import CLASSES, make_image_tree

from components.validate_data import validate_data
from garbage.core.config import Config
from garbage.training.data.validate import DataValidationError


def _outputs(folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "table": dsl.Dataset(name="table", uri=str(folder / "table"), metadata={}),
        "report": dsl.Markdown(name="report", uri=str(folder / "report"), metadata={}),
        "summary": dsl.Metrics(name="summary", uri=str(folder / "summary"), metadata={}),
    }


def test_validate_publishes_the_table_report_and_summary(
    validated: dict[str, Any], small_archive, pipeline_config: Config
) -> None:
    classes = pipeline_config.data.classes
    kept = small_archive.per_class * len(classes)
    folder = Path(validated["table"].path)
    table = pd.read_csv(folder / "images.csv")
    assert list(table.columns) == ["path", "label", "sha256", "width", "height"]
    assert len(table) == kept and table["sha256"].is_unique
    assert table.groupby("label").size().to_dict() == dict.fromkeys(
        classes, small_archive.per_class
    )
    assert validated["table"].metadata == {"file": "images.csv", "rows": kept}

    report = Path(validated["report"].path).read_text()
    assert report == (folder / "validation.md").read_text()
    assert report.startswith("# Data validation: PASSED")
    assert json.loads((folder / "validation.json").read_text())["ok"] is True

    assert validated["summary"].metadata == {
        **{f"images_{c}": small_archive.per_class for c in classes},
        "images_kept": kept,
        "label_conflicts": 0,
    }


def test_a_broken_dataset_fails_and_still_writes_its_report(
    config_json: str, tmp_path: Path
) -> None:
    images = make_image_tree(tmp_path / "images", per_class=4, classes=CLASSES[:-1])
    (images / "glass" / "broken.jpg").write_bytes(b"not an image")
    outputs = _outputs(tmp_path / "validate")

    with pytest.raises(DataValidationError) as failure:
        validate_data.python_func(
            config_json=config_json,
            images=dsl.Dataset(name="images", uri=str(images), metadata={}),
            **outputs,
        )
    assert "missing class folders ['trash']" in str(failure.value)
    assert "glass/broken.jpg" in str(failure.value)

    report = Path(outputs["report"].path).read_text()
    assert report.startswith("# Data validation: FAILED")
    assert "missing class folders ['trash']" in report and "glass/broken.jpg" in report
    # nothing is published as if the data were usable
    assert outputs["summary"].metadata == {} and outputs["table"].metadata == {}


def test_validate_excludes_real_photos_filed_under_two_classes(
    dev_images: dsl.Dataset, config_json: str, tmp_path: Path
) -> None:
    outputs = _outputs(tmp_path / "validate")
    validate_data.python_func(config_json=config_json, images=dev_images, **outputs)

    folder = Path(outputs["table"].path)
    conflicts = json.loads((folder / "validation.json").read_text())["label_conflicts"]
    # the development archive holds two photos filed under two classes each
    assert len(conflicts) == 2
    assert all(len({path.split("/")[0] for path in group}) == 2 for group in conflicts)
    table = pd.read_csv(folder / "images.csv")
    assert set(table["path"]).isdisjoint(path for group in conflicts for path in group)
    summary = outputs["summary"].metadata
    assert summary["label_conflicts"] == 2
    assert summary["images_kept"] == len(table) == 2148 - 4
    assert (
        "Identical images under different classes (excluded)"
        in Path(outputs["report"].path).read_text()
    )
