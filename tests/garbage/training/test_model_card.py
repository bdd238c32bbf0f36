"""The model card: each section from synthetic inputs, its numbers, and the measured limits on an
external evaluation set built in the test."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from support import CLASSES, make_archive, make_image_tree

from garbage.core.classifier import ModelMetadata, OnnxClassifier
from garbage.core.config import ConfigError, ExternalSet, load_config
from garbage.training.data.fetch import DataFetchError
from garbage.training.lineage import CodeVersion, DataVersion
from garbage.training.metrics import Scored
from garbage.training.model_card import (
    ExternalResult,
    build_model_card,
    confusion_table,
    fit_description,
    measure_external,
)

THREE = ["glass", "metal", "paper"]


def table_after(card: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after ``heading`` (header row first, no rule)."""
    lines = card[card.index(heading) + len(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return [rows[0], *rows[2:]]


def _manifest() -> pd.DataFrame:
    counts = {
        "train": {"glass": 6, "metal": 5, "paper": 2},
        "val": dict.fromkeys(THREE, 1),
        "test": dict.fromkeys(THREE, 4),
    }
    rows = [
        {"path": f"{c}/{split}{i}.jpg", "label": c, "split": split}
        for split, per_class in counts.items()
        for c, n in per_class.items()
        for i in range(n)
    ]
    frame = pd.DataFrame(rows)
    return frame.assign(sha256=[hashlib.sha256(p.encode()).hexdigest() for p in frame["path"]])


def _scored() -> Scored:
    # 12 test images, 4 a class; two slices (site-a, site-b).
    y_true = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 0]
    confidence = [0.9, 0.8, 0.4, 0.3, 0.95, 0.7, 0.6, 0.45, 0.9, 0.9, 0.9, 0.2]
    groups = ["site-a"] * 6 + ["site-b"] * 6
    return Scored(THREE, y_true, y_pred, confidence, groups)


CODE = CodeVersion("1234567" + "0" * 33, False, "git")
DATA = DataVersion("d" * 64, "a" * 64, "d" * 64, "/data/trashnet-112-dev.tar.gz")
METADATA = ModelMetadata(THREE, 96, 128, extra={"backbone": "efficientnet_lite0"})


def _card(**more: object) -> str:
    arguments: dict[str, object] = {
        "model_name": "garbage-classifier",
        "version": "7",
        "run_id": "r" * 32,
        "code": CODE,
        "data": DATA,
        "manifest": _manifest(),
        "test": _scored(),
        "metadata": METADATA,
        "intended_use": "Sorting test items.",
        "low_confidence": 0.5,
        **more,
    }
    return build_model_card(**arguments)  # type: ignore[arg-type]


def test_the_card_names_the_model_its_run_and_its_lineage() -> None:
    card = _card(gate="promoted to champion: no champion yet", run_url="http://mlflow:5000/#/r")
    assert card.startswith("# Model card: garbage-classifier v7\n")
    facts = dict(table_after(card, "v7"))
    assert facts["model"] == "`garbage-classifier` version 7 (`models:/garbage-classifier/7`)"
    assert facts["run"] == f"[`{'r' * 32}`](http://mlflow:5000/#/r) (`runs:/{'r' * 32}`)"
    assert facts["code"] == f"git `{CODE.commit}`, dirty: false"
    assert facts["data version"] == f"`{'d' * 64}` (the split manifest's digest)"
    assert facts["data"] == f"`/data/trashnet-112-dev.tar.gz`, sha256 `{'a' * 64}`"
    assert facts["backbone"] == "`efficientnet_lite0`"
    assert facts["promotion gate"] == "promoted to champion: no champion yet"
    assert "## Intended use\n\nSorting test items." in card
    assert "split manifest" not in facts  # the data version is the manifest's digest
    versioned = DataVersion("e" * 64, "a" * 64, "d" * 64, DATA.source)  # a dataset version
    facts = dict(table_after(_card(data=versioned), "v7"))
    assert facts["data version"] == f"`{'e' * 64}`"
    assert facts["split manifest"] == f"digest `{'d' * 64}`"


def test_the_card_states_the_inputs_the_model_expects() -> None:
    inputs = _card().split("## Inputs\n\n")[1].split("\n## ")[0]
    assert "JPEG, PNG" in inputs and "40,000,000 pixels" in inputs and "10:1" in inputs
    assert "`uint8 [batch, 96, 128, 3]`" in inputs and "128x96 (width x height)" in inputs
    assert "`float32 [batch, 3]`" in inputs and "`glass`, `metal`, `paper`." in inputs


def test_the_class_balance_per_split_comes_from_the_manifest() -> None:
    header, *rows = table_after(_card(), "## Data")
    assert header == ["class", "train", "val", "test", "all"]
    assert rows == [
        ["glass", "6", "1", "4", "11"],
        ["metal", "5", "1", "4", "10"],
        ["paper", "2", "1", "4", "7"],
        ["**all**", "13", "3", "12", "28"],
    ]


def test_the_test_metrics_overall_per_class_and_per_slice_match_the_scoring() -> None:
    card, scored = _card(), _scored()
    metrics = scored.metrics()
    overall = dict(table_after(card, "## Test metrics"))
    assert overall["images"] == "12"
    assert overall["accuracy"] == f"{100 * metrics['accuracy']:.1f} %" == "66.7 %"
    assert overall["macro-F1"] == f"{metrics['macro_f1']:.3f}"
    assert overall["unsure (top probability < 0.5)"] == "33.3 %"  # 4 of 12 below 0.5

    header, *rows = table_after(card, "### Per class")
    assert header == ["class", "precision", "recall", "F1", "support"]
    for name, precision, recall, f1, support in rows:
        expected = metrics["per_class"][name]
        assert float(precision) == pytest.approx(expected["precision"], abs=5e-4)
        assert float(recall) == pytest.approx(expected["recall"], abs=5e-4)
        assert float(f1) == pytest.approx(expected["f1"], abs=5e-4)
        assert int(support) == expected["support"] == 4
    assert [r[2] for r in rows] == ["0.750", "0.500", "0.750"]

    _, *slices = table_after(card, "### Per data slice")
    assert [(s[0], s[1], s[2]) for s in slices] == [
        ("site-a", "6", "83.3 %"),  # 5 of the first 6 right
        ("site-b", "6", "50.0 %"),
    ]


def test_the_confusion_matrix_rows_sum_to_each_class_support() -> None:
    card = _card()
    header, *rows = table_after(card, "### Confusion matrix")
    assert header == ["true \\ predicted", *THREE, "support"]
    support = {name: m["support"] for name, m in _scored().metrics()["per_class"].items()}
    assert [r[0] for r in rows] == THREE
    for name, *cells, total in rows:
        assert sum(int(c) for c in cells) == int(total) == support[name]
    assert rows[1] == ["metal", "0", "2", "2", "4"]
    assert confusion_table([[1, 0], [2, 3]], ["a", "b"]).splitlines()[-1] == "| b | 2 | 3 | 5 |"


def test_without_external_sets_the_card_says_the_limits_are_not_measured() -> None:
    limits = _card().split("## Known limits\n\n")[1]
    assert "The smallest training class is `paper` with 2 of 13 training images" in limits
    assert "weakest class on the test split is `metal` (recall 0.500 on 4 images)" in limits
    assert "No external evaluation set is configured (`card.external`)" in limits


def test_a_card_that_does_not_fit_is_cut_at_a_section_and_points_to_the_full_card() -> None:
    card = _card()
    assert fit_description(card, len(card), "runs:/r/model_card.md") == card
    short = fit_description(card, 1500, "runs:/r/model_card.md")
    assert len(short) <= 1500 < len(card)
    assert short.startswith("# Model card: garbage-classifier v7")
    assert short.rstrip().endswith("*Shortened: the full card is `runs:/r/model_card.md`.*")
    assert "## Known limits" not in short


@pytest.fixture(scope="module")
def site_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A site archive: TrashNet's six classes (4 images each), a class the model does not know,
    and a file in ``glass`` that is not an image."""
    base = tmp_path_factory.mktemp("site")
    tree = make_image_tree(base / "tree" / "site-dev", per_class=4, classes=[*CLASSES, "wood"])
    (tree / "glass" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    archive = make_archive(base / "tree", base / "site-dev.tar.gz")
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def test_an_external_set_is_scored_per_class_up_to_its_cap(
    site_archive: tuple[Path, str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    archive, sha256 = site_archive
    classifier = OnnxClassifier.load(tiny_model_dir)
    every = ExternalSet(name="site", source=str(archive), sha256=sha256, max_per_class=5)
    result = measure_external(classifier, every, tmp_path / "cache")
    assert len(result.scored) == 24 and result.unreadable == 1
    assert result.left_out == ["wood"]
    per_class = result.scored.metrics()["per_class"]
    assert {name: m["support"] for name, m in per_class.items()} == dict.fromkeys(CLASSES, 4)
    assert set(result.scored.groups) == {"site"}
    assert all(0.0 <= c <= 1.0 for c in result.scored.confidence)

    capped = measure_external(
        classifier, every.model_copy(update={"max_per_class": 2}), tmp_path / "cache"
    )
    assert len(capped.scored) + capped.unreadable == 12
    again = measure_external(
        classifier, every.model_copy(update={"max_per_class": 2}), tmp_path / "cache"
    )
    assert again.scored == capped.scored  # the same sample every time


def test_an_external_set_with_a_wrong_checksum_is_refused(
    site_archive: tuple[Path, str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    archive, _ = site_archive
    wrong = ExternalSet(name="site", source=str(archive), sha256="0" * 64)
    with pytest.raises(DataFetchError, match="checksum mismatch"):
        measure_external(OnnxClassifier.load(tiny_model_dir), wrong, tmp_path / "cache")


def test_the_external_section_reports_what_was_measured() -> None:
    scored = Scored(
        THREE,
        [0, 0, 1, 1, 2, 2, 2, 2],
        [0, 1, 1, 1, 0, 0, 2, 1],
        [0.9, 0.3, 0.8, 0.7, 0.4, 0.6, 0.9, 0.2],
        ["site"] * 8,
    )
    result = ExternalResult("site", "/data/site.tar.gz", "b" * 64, 60, scored, 2, ["wood"])
    card = _card(external=[result])
    header, row = table_after(card, "### Measured on photos unlike the training data")
    assert header[:4] == ["set", "images", "accuracy", "macro-F1"]
    metrics = scored.metrics()
    assert row[:4] == ["site", "8", "50.0 %", f"{metrics['macro_f1']:.3f}"]
    assert row[4] == "37.5 %"  # 3 of 8 below 0.5
    assert row[5] == f"{50.0 - 100 * _scored().metrics()['accuracy']:+.1f} points"
    section = card.split("### site\n\n")[1]
    assert "2 sampled files were not acceptable images" in section and "`wood`" in section
    _, *recalls = table_after(card, "### site")
    assert recalls == [
        ["glass", "0.500", "0.750", "2"],
        ["metal", "1.000", "0.500", "2"],
        ["paper", "0.250", "0.750", "4"],
    ]


def test_external_sets_are_configured_by_override_and_checked() -> None:
    entry = "{name: site, source: /data/site.tar.gz, sha256: " + "A" * 64 + "}"
    config = load_config(overrides=[f"card.external=[{entry}]"], environ={})
    assert config.card.external == [
        ExternalSet(name="site", source="/data/site.tar.gz", sha256="a" * 64, max_per_class=60)
    ]
    assert load_config(environ={}).card.external == []
    with pytest.raises(ConfigError, match="external set names must be unique"):
        load_config(overrides=[f"card.external=[{entry}, {entry}]"], environ={})
    with pytest.raises(ConfigError, match=r"card\.external\.0\.sha256"):
        load_config(overrides=["card.external=[{name: s, source: x, sha256: abc}]"], environ={})
