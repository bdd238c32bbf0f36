"""The retrain's rules: new labels, the decision, the ledger, the retrain's config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from garbage.core.config import Config, ConfigError, RetrainConfig, load_config
from garbage.training.data.versions import DatasetStore
from garbage.training.retrain import (
    Champion,
    claim_retrain,
    count_new_labels,
    decide_retrain,
    finish_retrain,
    ledger_path,
    read_retrain,
    retrain_config,
    warm_start_uri,
)

A, B, C = "a" * 64, "b" * 64, "c" * 64
VERSION = "ds-0123456789ab"


def test_new_labels_are_images_the_version_lacks_or_labels_differently() -> None:
    held = {A: "glass", B: "paper"}
    assert count_new_labels([(A, "glass"), (B, "paper")], held) == 0
    assert count_new_labels([(A, "glass"), (C, "metal")], held) == 1  # C is not held
    assert count_new_labels([(B, "plastic")], held) == 1  # re-labelled: counts


def test_new_labels_count_each_image_once_and_the_newest_label_wins() -> None:
    held = {A: "glass"}
    assert count_new_labels([(C, "metal"), (C, "metal"), (C, "paper")], held) == 1
    assert count_new_labels([(A, "paper"), (A, "glass")], held) == 0  # re-labelled back
    assert count_new_labels([(A, "glass"), (A, "paper")], held) == 1


def test_without_a_version_every_labelled_image_is_new() -> None:
    assert count_new_labels([(A, "glass"), (B, "paper"), (A, "glass")], None) == 2
    assert count_new_labels([], None) == 0


def test_enough_new_labels_make_a_retrain_due() -> None:
    settings = RetrainConfig(min_new_labels=100)
    due = decide_retrain(142, [], settings, since="ds-1a2b3c4d5e6f")
    assert due.due
    assert due.reasons[0] == (
        "142 new labels since ds-1a2b3c4d5e6f (at least 100 make a retrain due)"
    )
    assert "drift not checked" in due.reasons[1]
    short = decide_retrain(99, [], settings)
    assert not short.due
    assert short.reasons[0].startswith("99 new labels that the champion was not trained on")


def test_drift_makes_a_retrain_due_only_in_k_consecutive_newest_windows() -> None:
    settings = RetrainConfig(min_new_labels=100, drift_windows=3)
    flagged = decide_retrain(0, [True, True, True, False], settings)
    assert flagged.due and "drift in 3 of the last 3 windows" in flagged.reasons[1]
    gap = decide_retrain(0, [True, False, True, True], settings)
    assert not gap.due and "drift in 2 of the last 3 windows" in gap.reasons[1]
    older = decide_retrain(0, [False, True, True, True], settings)  # the newest one is clean
    assert not older.due


def test_fewer_windows_than_k_never_make_a_retrain_due() -> None:
    settings = RetrainConfig(drift_windows=3)
    few = decide_retrain(0, [True, True], settings)
    assert not few.due and "only 2 windows" in few.reasons[1]


def test_force_makes_a_retrain_due() -> None:
    forced = decide_retrain(0, [], RetrainConfig(), force=True)
    assert forced.due and forced.reasons[-1].startswith("forced")


def test_a_version_is_claimed_once(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "datasets")
    first = {"version": VERSION, "state": "running", "host": "local"}
    assert claim_retrain(store, first)
    assert not claim_retrain(store, {**first, "host": "http://kfp"})  # the second claim loses
    assert read_retrain(store, VERSION) == first
    assert claim_retrain(store, {**first, "host": "http://kfp"}, overwrite=True)  # --force
    assert read_retrain(store, VERSION)["host"] == "http://kfp"
    assert ledger_path(VERSION) == f"retrains/{VERSION}.json"
    assert (tmp_path / "datasets" / "retrains" / f"{VERSION}.json").is_file()
    assert read_retrain(store, "ds-ffffffffffff") is None


def test_finishing_updates_the_record(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "datasets")
    claim_retrain(store, {"version": VERSION, "state": "running", "champion_before": "1"})
    record = finish_retrain(store, VERSION, state="succeeded", registered_version="2")
    assert record["state"] == "succeeded" and record["registered_version"] == "2"
    assert record["champion_before"] == "1" and record["finished"]
    assert read_retrain(store, VERSION) == record


def test_a_damaged_record_says_what_to_do(tmp_path: Path) -> None:
    from garbage.training.retrain import RetrainError

    store = DatasetStore(tmp_path / "datasets")
    store.write_file(ledger_path(VERSION), "{not json")
    with pytest.raises(RetrainError, match="delete it, or retrain with --force"):
        read_retrain(store, VERSION)


def _config(tmp_path: Path, *overrides: str) -> Config:
    return load_config(profile="smoke", overrides=[f"work_dir={tmp_path}", *overrides], environ={})


def test_the_retrain_config_trains_on_the_version_with_retrain_train_merged(
    tmp_path: Path,
) -> None:
    base = _config(tmp_path, "retrain.train={epochs: 2, augment: {hflip: false}}")
    config = retrain_config(base, VERSION, "models:/garbage-classifier@champion")
    assert config.data.version == VERSION
    assert config.train.epochs == 2 and config.train.augment.hflip is False
    assert config.train.augment.vflip == base.train.augment.vflip  # deep-merged, not replaced
    assert config.train.batch_size == base.train.batch_size
    assert config.train.init_from == "models:/garbage-classifier@champion"
    assert base.data.version is None  # the given config is untouched
    assert retrain_config(base, VERSION, None).train.init_from is None


def test_the_retrain_config_applies_retrain_model_over_the_model_section(tmp_path: Path) -> None:
    base = _config(tmp_path, "retrain.model={image_height: 96}")
    config = retrain_config(base, VERSION, None)
    assert (config.model.image_height, config.model.image_width) == (96, 64)
    assert config.model.backbone == base.model.backbone
    assert base.model.image_height == 64
    # The default profile's retrain reads site photos at a larger input than its champion.
    default = load_config(overrides=[f"work_dir={tmp_path}"], environ={})
    larger = retrain_config(default, VERSION, None).model
    assert larger.image_height * larger.image_width > (
        default.model.image_height * default.model.image_width
    )


def test_a_warm_start_needs_a_champion_and_retrain_warm_start(tmp_path: Path) -> None:
    champion = Champion("3", VERSION, "models:/garbage-classifier@champion")
    assert warm_start_uri(_config(tmp_path), champion) == champion.uri
    assert warm_start_uri(_config(tmp_path), None) is None
    assert warm_start_uri(_config(tmp_path, "retrain.warm_start=false"), champion) is None


def test_invalid_retrain_train_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        _config(tmp_path, "retrain.train={epochs: 0}")
    with pytest.raises(ConfigError, match=r"model\.image_height"):
        _config(tmp_path, "retrain.model={image_height: 8}")
    with pytest.raises(ConfigError, match=r"model\.depth"):
        _config(tmp_path, "retrain.model={depth: 3}")
    base = _config(tmp_path)
    # A config built without validation (as no loader builds one): retrain_config checks again.
    broken = base.model_copy(
        update={"retrain": base.retrain.model_copy(update={"train": {"epochs": 0}})}
    )
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        retrain_config(broken, VERSION, None)
    with pytest.raises(ConfigError, match="version"):
        retrain_config(base, "not-a-version", None)


def test_the_ledger_record_is_json(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "datasets")
    claim_retrain(store, {"version": VERSION, "trigger": ["142 new labels"]})
    text = (tmp_path / "datasets" / ledger_path(VERSION)).read_text()
    assert json.loads(text)["trigger"] == ["142 new labels"]
