"""Config schema: profiles, files, environment and overrides, and clear errors."""

from pathlib import Path

import pytest

from garbage.core.config import TRASHNET_SHA256, ConfigError, load_config


def test_default_profile_is_valid_and_points_at_public_trashnet() -> None:
    config = load_config(environ={})
    assert config.data.sha256 == TRASHNET_SHA256
    assert config.data.source.startswith("https://")
    assert config.registry.model_name == "garbage-classifier"
    assert config.mlflow_tracking_uri.startswith("sqlite:///")


def test_profiles_merge_over_default() -> None:
    gpu = load_config(profile="gpu", environ={})
    assert gpu.train.device == "cuda"
    assert gpu.train.epochs > load_config(environ={}).train.epochs
    assert gpu.registry.model_name == "garbage-classifier"  # inherited from default


def test_overrides_are_typed_and_win_over_file_and_env(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("train:\n  epochs: 3\n")
    config = load_config(
        file,
        ["train.epochs=5", "train.mixed_precision=false"],
        environ={"GARBAGE_DATA_SOURCE": "/data/a.tar.gz"},
    )
    assert config.train.epochs == 5
    assert config.train.mixed_precision is False
    assert config.data.source == "/data/a.tar.gz"


def test_environment_overrides_source_checksum_and_tracking() -> None:
    config = load_config(
        environ={"GARBAGE_DATA_SHA256": "A" * 64, "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    )
    assert config.data.sha256 == "a" * 64
    assert config.mlflow_tracking_uri == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epochs=0"], "greater than or equal to 1"),
        (["train.epochs=many"], "valid integer"),
        (["train.optimiser=sgd"], "Extra inputs are not permitted"),
        (["data.sha256=abc"], "64-character"),
        (["split.val_fraction=0.45", "split.test_fraction=0.45"], "below 0.8"),
        (["train.device=tpu"], "'auto', 'cpu' or 'cuda'"),
        (["epochs"], "section.key=value"),
    ],
)
def test_invalid_values_raise_config_error_naming_the_problem(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides, environ={})


def test_unknown_profile_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config(profile="tpu", environ={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml", environ={})


def test_config_round_trips_through_json() -> None:
    config = load_config(profile="smoke", environ={})
    assert type(config).model_validate_json(config.model_dump_json()) == config
