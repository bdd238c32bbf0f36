"""The one configuration schema of the project (pydantic), with YAML loading and overrides.

A config is validated once, where it enters the system (the CLI, a pipeline's first step), and
travels as JSON from there: every KFP component re-creates it with
:func:`Config.model_validate_json`.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from garbage.core.names import MODEL_NAME, TRASHNET_CLASSES

TRASHNET_URL = (
    "https://github.com/lightb0x/trashnet-resize/raw/master/dataset-resized-rgb-112.tar.gz"
)
TRASHNET_SHA256 = "6444483a2a5b9c595b500034ecadf4dc07df97f7c572aff0344f7beb42d83c76"

ENV_DATA_SOURCE = "GARBAGE_DATA_SOURCE"
ENV_DATA_SHA256 = "GARBAGE_DATA_SHA256"
ENV_WORK_DIR = "GARBAGE_WORK_DIR"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"


class ConfigError(ValueError):
    """A configuration file, override or value is invalid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Where the images come from and what a valid dataset looks like."""

    source: str = Field(TRASHNET_URL, description="http(s) URL or local path of a .tar.gz archive.")
    sha256: str = Field(TRASHNET_SHA256, description="Expected sha256 of the archive.")
    classes: list[str] = Field(default_factory=lambda: list(TRASHNET_CLASSES), min_length=2)
    min_images_per_class: int = Field(10, ge=1)
    allowed_formats: list[str] = Field(default_factory=lambda: ["JPEG", "PNG"], min_length=1)
    min_side: int = Field(32, ge=1, description="Smallest accepted width or height, pixels.")
    max_pixels: int = Field(40_000_000, ge=1, description="Largest accepted width x height.")

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("must be a 64-character hexadecimal sha256 digest")
        return value

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"class names must be unique, got {value}")
        return value

    @field_validator("allowed_formats")
    @classmethod
    def _upper_formats(cls, value: list[str]) -> list[str]:
        return [v.upper() for v in value]


class SplitConfig(_Section):
    """Stratified train/validation/test split."""

    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 42
    max_per_class: int | None = Field(
        None, ge=3, description="Cap on images per class before splitting (small test runs)."
    )


class ModelConfig(_Section):
    """Backbone and input geometry; the input size is part of the exported model's contract."""

    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    weights_path: Path | None = Field(
        None, description="Local state dict for the backbone; default: the one its package ships."
    )
    image_height: int = Field(112, ge=32)
    image_width: int = Field(112, ge=32)
    dropout: float = Field(0.2, ge=0, lt=1)


class AugmentConfig(_Section):
    """Training-time augmentation (applied to PIL images before the shared preprocessing)."""

    hflip: bool = True
    vflip: bool = True
    rotation_degrees: float = Field(15.0, ge=0, le=180)
    scale_min: float = Field(0.75, gt=0, le=1)
    color_jitter: float = Field(0.2, ge=0, le=1)


class TrainConfig(_Section):
    """Optimisation settings."""

    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    backbone_lr_scale: float = Field(0.5, gt=0, le=1)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    warmup_epochs: int = Field(1, ge=0)
    freeze_stages: int = Field(
        0, ge=0, le=7, description="Backbone stages (after the stem) kept frozen: faster on CPU."
    )
    channels_last: bool = Field(True, description="channels-last memory format (faster convs).")
    num_workers: int = Field(1, ge=0)
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads; default: all cores."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: bool = True
    seed: int = 42
    augment: AugmentConfig = AugmentConfig()


class RegistryConfig(_Section):
    """MLflow tracking, registration and the promotion gate."""

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: embedded SQLite store in the work dir."
    )
    experiment: str = MODEL_NAME
    model_name: str = MODEL_NAME
    champion_alias: str = Field(
        "champion", description="Alias of the version that serves (on a cluster: once it is Ready)."
    )
    challenger_alias: str = Field(
        "challenger", description="Alias of a version that passed the gate and awaits its rollout."
    )
    gate_metric: Literal["macro_f1", "accuracy"] = "macro_f1"
    min_improvement: float = Field(
        0.0, ge=0, description="Candidate must beat the champion by more than this margin."
    )
    min_metric: float = Field(0.0, ge=0, le=1, description="Absolute floor for any promotion.")


class Config(_Section):
    """The whole run configuration."""

    work_dir: Path = Path("work")
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    registry: RegistryConfig = RegistryConfig()

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> Config:
        if self.split.val_fraction + self.split.test_fraction >= 0.8:
            raise ValueError("split.val_fraction + split.test_fraction must be below 0.8")
        return self

    @property
    def data_cache_dir(self) -> Path:
        """Where downloaded archives and their extracted trees are kept."""
        return self.work_dir / "data"

    @property
    def mlflow_tracking_uri(self) -> str:
        """The configured tracking URI, or the embedded SQLite store in the work dir."""
        if self.registry.tracking_uri:
            return self.registry.tracking_uri
        return f"sqlite:///{(self.work_dir / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifact_location(self) -> str:
        """Artifact root used when the embedded store creates the experiment."""
        return (self.work_dir / "mlartifacts").resolve().as_uri()


PROFILES = ("default", "gpu", "smoke")


def _profile_yaml(name: str) -> dict[str, Any]:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    text = resources.files("garbage.core.configs").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(tree: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form section.key=value")
    node = tree
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
    node[leaf] = yaml.safe_load(raw) if raw.strip() else None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    profile: str = "default",
    environ: dict[str, str] | None = None,
) -> Config:
    """Build and validate the run configuration.

    Precedence, lowest first: the profile shipped with the package, the YAML file at ``path``,
    environment variables (``GARBAGE_DATA_SOURCE``, ``GARBAGE_DATA_SHA256``, ``GARBAGE_WORK_DIR``,
    ``MLFLOW_TRACKING_URI``), then ``overrides`` such as ``train.epochs=3``.

    Args:
        path: Optional YAML file with a partial or full config.
        overrides: ``dotted.key=value`` strings; values are parsed as YAML scalars.
        profile: One of :data:`PROFILES`; ``default`` is the 2-core CPU profile.
        environ: Environment to read (default: ``os.environ``).

    Returns:
        The validated, immutable config.

    Raises:
        ConfigError: The file is missing or unreadable, or a value is invalid.
    """
    env = os.environ if environ is None else environ
    tree = _profile_yaml("default")
    if profile != "default":
        tree = _deep_merge(tree, _profile_yaml(profile))
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping, got {type(loaded).__name__}"
            )
        tree = _deep_merge(tree, loaded)
    env_map = {
        ENV_DATA_SOURCE: ("data", "source"),
        ENV_DATA_SHA256: ("data", "sha256"),
        ENV_TRACKING_URI: ("registry", "tracking_uri"),
    }
    for var, (section, key) in env_map.items():
        if env.get(var):
            tree.setdefault(section, {})[key] = env[var]
    if env.get(ENV_WORK_DIR):
        tree["work_dir"] = env[ENV_WORK_DIR]
    for override in overrides or []:
        _apply_override(tree, override)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(f"invalid configuration:\n{e}") from e
