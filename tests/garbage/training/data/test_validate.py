"""Data validation: each hard error stops with the files named; duplicates are handled."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from support import CLASSES, jpeg_bytes

from garbage.core.config import DataConfig
from garbage.training.data.validate import (
    DataValidationError,
    raise_for_errors,
    validate_dataset,
    write_report,
)

CONFIG = DataConfig(min_images_per_class=3, min_side=16)


def test_a_clean_tree_passes_and_keeps_every_image(image_tree: Path, tmp_path: Path) -> None:
    report, kept = validate_dataset(image_tree, CONFIG)
    assert report.ok, report.errors
    assert len(kept) == 8 * len(CLASSES)
    assert report.class_counts == {c: 8 for c in CLASSES}
    json_path, md_path = write_report(report, tmp_path / "out")
    assert json.loads(json_path.read_text())["ok"] is True
    assert "PASSED" in md_path.read_text()


def test_corrupt_image_is_a_hard_error_naming_the_file(image_tree: Path) -> None:
    (image_tree / "glass" / "broken.jpg").write_bytes(jpeg_bytes((1, 1, 1))[:300])
    report, kept = validate_dataset(image_tree, CONFIG)
    assert not report.ok
    assert "glass/broken.jpg" in report.errors[0]
    assert "glass/broken.jpg" not in set(kept["path"])
    with pytest.raises(DataValidationError, match=r"glass/broken\.jpg"):
        raise_for_errors(report)


def test_non_image_and_disallowed_format_are_named(image_tree: Path) -> None:
    (image_tree / "paper" / "notes.txt").write_text("hello")
    gif = io.BytesIO()
    Image.new("RGB", (40, 40)).save(gif, format="GIF")
    (image_tree / "metal" / "anim.gif").write_bytes(gif.getvalue())
    report, _ = validate_dataset(image_tree, CONFIG)
    assert set(report.invalid_files) == {"paper/notes.txt", "metal/anim.gif"}
    assert "not allowed" in report.invalid_files["metal/anim.gif"]


def test_too_small_image_fails_the_size_check(image_tree: Path) -> None:
    (image_tree / "trash" / "tiny.jpg").write_bytes(jpeg_bytes((5, 5, 5), size=(8, 8)))
    report, _ = validate_dataset(image_tree, CONFIG)
    assert "trash/tiny.jpg" in report.invalid_files
    assert "width" in report.invalid_files["trash/tiny.jpg"]


def test_unknown_class_folder_is_a_hard_error(image_tree: Path) -> None:
    shutil.copytree(image_tree / "glass", image_tree / "styrofoam")
    report, _ = validate_dataset(image_tree, CONFIG)
    assert any("styrofoam" in e and "unknown class" in e for e in report.errors)


def test_missing_and_empty_classes_are_hard_errors(image_tree: Path) -> None:
    shutil.rmtree(image_tree / "trash")
    for path in (image_tree / "metal").iterdir():
        path.unlink()
    report, _ = validate_dataset(image_tree, CONFIG)
    assert any("missing class folders ['trash']" in e for e in report.errors)
    assert any("below the minimum" in e and "'metal': 0" in e for e in report.errors)


def test_duplicates_within_a_class_are_kept_once(image_tree: Path) -> None:
    shutil.copy(image_tree / "paper" / "paper0.jpg", image_tree / "paper" / "copy.jpg")
    report, kept = validate_dataset(image_tree, CONFIG)
    assert report.ok
    assert report.duplicates_within_class == [["paper/copy.jpg", "paper/paper0.jpg"]]
    assert report.class_counts["paper"] == 8
    assert kept["sha256"].is_unique


def test_duplicates_across_classes_are_excluded_and_reported(image_tree: Path) -> None:
    shutil.copy(image_tree / "paper" / "paper0.jpg", image_tree / "cardboard" / "same.jpg")
    report, kept = validate_dataset(image_tree, CONFIG)
    assert report.ok
    assert report.label_conflicts == [["cardboard/same.jpg", "paper/paper0.jpg"]]
    assert not {"cardboard/same.jpg", "paper/paper0.jpg"} & set(kept["path"])
    assert report.class_counts["paper"] == 7
    assert "different classes" in report.to_markdown()


def test_real_development_archive_finds_the_known_label_conflicts(dev_archive, tmp_path) -> None:
    from support import DEV_ARCHIVE_SHA256

    from garbage.training.data.fetch import fetch_dataset

    root = fetch_dataset(str(dev_archive), DEV_ARCHIVE_SHA256, tmp_path / "cache")
    report, kept = validate_dataset(root, DataConfig())
    assert report.ok
    assert report.num_files == 2148
    assert report.label_conflicts  # the published set files identical images under two classes
    assert report.imbalance_ratio > 3  # trash is much smaller than the rest
    assert len(kept) == report.num_kept == sum(report.class_counts.values())
