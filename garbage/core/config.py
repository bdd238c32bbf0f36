"""The one configuration schema of the project (pydantic), with YAML loading and overrides.

A config is validated once, where it enters the system (the CLI, a pipeline's first step), and
travels as JSON from there: every KFP component re-creates it with
:func:`Config.model_validate_json`.
"""

from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

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
    version: str | None = Field(
        None,
        pattern=r"^ds-[0-9a-f]{12}$",
        description="A dataset version to train on (ds-<12 hex>, see `garbage data versions`): "
        "its images and its splits; None: the archive of data.source, split by data.split.",
    )
    datasets_root: str | None = Field(
        None,
        description="Where the dataset versions live: a folder or a URL such as "
        "s3://bucket/prefix (any fsspec URL; S3's endpoint from AWS_ENDPOINT_URL); default: "
        "<work_dir>/datasets.",
    )

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
    low_res_scale: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Input side scale of the epochs before the last full_res_epochs (progressive "
        "resizing): cheaper epochs early, the served size at the end.",
    )
    full_res_epochs: int = Field(
        0, ge=0, description="Last epochs trained at the model's input size (all when scale is 1)."
    )
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Per-step decay of an exponential moving average of the weights; the average "
        "is what is validated and saved. None: the raw weights.",
    )
    validate_from: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the epochs trained before validation and checkpoint selection "
        "start (each epoch after it, and always the last, is validated at the served size).",
    )
    source_balance: float = Field(
        0.0,
        ge=0,
        le=1,
        description="How far each epoch evens out the data sources of a dataset version (a "
        "site's labelled images against the base set): an image of a source with n training "
        "images is drawn with weight n^-source_balance, the epoch keeping its length; 0: every "
        "image once an epoch, 1: every source equally often.",
    )
    compile: bool = Field(False, description="torch.compile the model for the training steps.")
    init_from: str | None = Field(
        None,
        description="Weights to start from instead of the backbone's ImageNet ones: a registered "
        "model (models:/name@alias, models:/name/3) or a local checkpoint (best.pt) of the same "
        "backbone and classes (a warm start, e.g. from the champion).",
    )
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads; default: all cores."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: bool = Field(True, description="bf16 autocast on CUDA (ignored on the CPU).")
    seed: int = 42
    augment: AugmentConfig = AugmentConfig()


GateOverall = Literal["slice_mean", "pooled"]
"""How the promotion gate forms its overall score (``registry.overall``)."""


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
    slice_tolerance: float = Field(
        0.01,
        ge=0,
        le=1,
        description="No data slice (a source's test images) may get worse than the champion's "
        "by more than this, in the gate metric's units.",
    )
    min_slice_images: int = Field(
        20,
        ge=1,
        description="Slices with fewer test images are reported but neither gate nor count in "
        "the slice mean.",
    )
    overall: GateOverall = Field(
        "slice_mean",
        description="The overall score the candidate must improve: the mean of the data slices' "
        "gate metric (each source counts the same, so a site's few test images are not "
        "outweighed by the base set; with one slice, the same as pooled) or the metric pooled "
        "over the whole test split.",
    )


class ExternalSet(_Section):
    """An evaluation set unlike the training data, for the model card's measured limits.

    A ``.tar.gz`` of class folders (the layout of ``data.source``), fetched and checked the same
    way; classes the model does not know are left out.
    """

    name: str = Field(min_length=1, max_length=64, description="Name shown on the card.")
    source: str = Field(description="http(s) URL or local path of the .tar.gz archive.")
    sha256: str = Field(description="Expected sha256 of the archive.")
    max_per_class: int = Field(60, ge=1, description="Images scored per class (a fixed sample).")

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        return DataConfig._hex_digest(value)  # the one rule for an archive's digest


DEFAULT_INTENDED_USE = (
    "Sorting single photographed items of household waste into six materials (cardboard, "
    "glass, metal, paper, plastic, trash), one item per photo, to assist a person or a sorting "
    "line. Not for safety-critical decisions, hazardous waste, or photos of several items; "
    "check the measured limits below before using it on photos unlike its training data."
)


class CardConfig(_Section):
    """The model card written for every registered version."""

    intended_use: str = Field(
        DEFAULT_INTENDED_USE, min_length=1, description="What the model is for, on its card."
    )
    low_confidence: float = Field(
        0.5, gt=0, lt=1, description="A prediction below this top probability counts as unsure."
    )
    external: list[ExternalSet] = Field(
        default_factory=list,
        description="Evaluation sets unlike the training data, scored for the card's limits.",
    )

    @field_validator("external")
    @classmethod
    def _unique_names(cls, value: list[ExternalSet]) -> list[ExternalSet]:
        names = [s.name for s in value]
        if len(set(names)) != len(names):
            raise ValueError(f"external set names must be unique, got {names}")
        return value


DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?[smhdwSMHDW]$"
"""A duration as the monitoring windows take it: 30m, 24h, 7d."""


class RetrainConfig(_Section):
    """When ``garbage retrain`` retrains, on which data, and how (how-to: adapt to a site)."""

    min_new_labels: int = Field(
        100,
        ge=1,
        description="A retrain is due once this many labelled images are new: not in the "
        "champion's dataset version, or there with another label.",
    )
    drift_windows: int = Field(
        3,
        ge=1,
        description="A retrain is due when this many consecutive drift windows (the newest "
        "ones) all drifted.",
    )
    drift_window: str = Field(
        "24h", pattern=DURATION_PATTERN, description="Length of one drift window (30m, 24h, 7d)."
    )
    store_source: str = Field(
        "site",
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="Source name of the collector's labelled images in the new dataset version "
        "(its own test slice, gated on its own).",
    )
    min_label_age: str | None = Field(
        None,
        pattern=DURATION_PATTERN,
        description="Labels younger than this wait for the next retrain (time to correct them); "
        "default: every label counts at once.",
    )
    base_sources: list[str] = Field(
        default_factory=lambda: ["trashnet"],
        description="Sources of the first dataset version when none exists yet (as garbage data "
        "build --from takes them); later versions inherit their parent's images.",
    )
    warm_start: bool = Field(
        True, description="Start from the champion's weights (train.init_from) when one serves."
    )
    train: dict[str, Any] = Field(
        default_factory=lambda: {
            "epochs": 12,
            "learning_rate": 1e-3,
            "warmup_epochs": 0,
            "source_balance": 0.5,
        },
        description="Train settings a retrain applies over the train section (a warm start "
        "needs a smaller learning rate than training from ImageNet weights and no warm-up; "
        "the site's few labels are drawn more often than their share, source_balance).",
    )
    model: dict[str, Any] = Field(
        default_factory=lambda: {"image_height": 240, "image_width": 320},
        description="Model settings a retrain applies over the model section: a larger input "
        "than TrashNet's small photos need, for a site's photos, whose detail it keeps (about 2 "
        "points on held-out site photos, docs/how-to/adapt-to-a-site.md). A warm start needs "
        "the champion's backbone: to retrain on another one, set warm_start to false as well.",
    )

    @field_validator("train")
    @classmethod
    def _train_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _checked_overrides("train", TrainConfig, value)

    @field_validator("model")
    @classmethod
    def _model_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _checked_overrides("model", ModelConfig, value)


def _checked_overrides(
    section: str, schema: type[_Section], value: dict[str, Any]
) -> dict[str, Any]:
    """``value`` when it is valid over ``schema``'s defaults, else a ValueError naming the keys."""
    try:
        schema.model_validate(deep_merge(schema().model_dump(), value))
    except ValidationError as e:
        reasons = "; ".join(
            f"{section}.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
        )
        raise ValueError(f"not valid {section} settings: {reasons}") from e
    return value


class FloatParam(_Section):
    """A float of the search space: uniform on ``[low, high]``, or log-uniform with ``log``."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = Field(False, description="Sample log-uniformly (needs low > 0).")

    @model_validator(mode="after")
    def _bounds(self) -> FloatParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log sampling needs low > 0, got low={self.low}")
        return self

    def bounds(self) -> list[Any]:
        """The values that must be valid for the key: ``low`` and ``high``."""
        return [self.low, self.high]


class IntParam(_Section):
    """An integer of the search space: ``low``, ``low + step``, ... ``high``."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> IntParam:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if (self.high - self.low) % self.step:
            raise ValueError(
                f"high - low ({self.high - self.low}) must be a multiple of step ({self.step})"
            )
        return self

    def bounds(self) -> list[Any]:
        """The values that must be valid for the key: ``low`` and ``high``."""
        return [self.low, self.high]


class CategoricalParam(_Section):
    """A choice among values of the search space."""

    type: Literal["categorical"]
    choices: list[bool | int | float | str | None] = Field(min_length=2)

    @field_validator("choices")
    @classmethod
    def _unique_choices(cls, value: list[Any]) -> list[Any]:
        if len({repr(v) for v in value}) != len(value):
            raise ValueError(f"choices must be unique, got {value}")
        return value

    def bounds(self) -> list[Any]:
        """The values that must be valid for the key: every choice."""
        return list(self.choices)


#: One parameter of the search space, told apart by its ``type``.
ParamSpec = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]

#: The config sections whose keys a search may tune: data and split are prepared once per study
#: (every trial must see the same validation images), registry, card and tune do not train.
TUNABLE_SECTIONS = ("model", "train")


class PrunerConfig(_Section):
    """The median pruner (Katib: medianstop) on per-epoch validation macro-F1."""

    n_startup_trials: int = Field(
        5, ge=0, description="Trials that finish unpruned before any is compared with the median."
    )
    n_warmup_steps: int = Field(
        3,
        ge=0,
        description="The first epoch at which a trial may be pruned (earlier ones are noisy); "
        "Katib's start_step.",
    )


class TuneConfig(_Section):
    """Hyperparameter search (``garbage tune``: Optuna locally, Katib on a cluster)."""

    trials: int = Field(20, ge=1, description="Trials a study runs in all (a re-run resumes).")
    timeout_minutes: float | None = Field(
        None, gt=0, description="Stop starting trials after this long (local runs)."
    )
    metric: Literal["val_macro_f1"] = Field(
        "val_macro_f1", description="The objective, maximized: best validation macro-F1."
    )
    seed: int = Field(42, description="Seed of the sampler (TPE).")
    parallel_trials: int = Field(
        2, ge=1, description="Katib: trials that run at once (local trials run one by one)."
    )
    pruner: PrunerConfig = PrunerConfig()
    space: dict[str, ParamSpec] = Field(
        default_factory=dict,
        description="Dotted config key (train.learning_rate) -> {type: float, low, high, log} | "
        "{type: int, low, high, step} | {type: categorical, choices}; a key set to null is "
        "dropped (from the default space).",
    )

    @field_validator("space", mode="before")
    @classmethod
    def _drop_nulls(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if v is not None}
        return value


def _tunable_field(key: str) -> Any:
    """The annotation of the config leaf that ``key`` names; ValueError when it names none."""
    parts = key.split(".")
    if parts[0] not in TUNABLE_SECTIONS or len(parts) < 2:
        raise ValueError(
            f"cannot be tuned: name a key of {' or '.join(TUNABLE_SECTIONS)} (data and split are "
            "prepared once per study; registry, card and tune do not change training)"
        )
    model: type[BaseModel] = Config
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the config"
        if part not in model.model_fields:
            raise ValueError(
                f"not a config key: {where} has no {part!r} "
                f"(it has {', '.join(model.model_fields)})"
            )
        annotation = model.model_fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if depth == len(parts) - 1:
            if is_section:
                raise ValueError("a section, not a value: name one of its keys")
            return annotation
        if not is_section:
            raise ValueError(f"not a config key: {'.'.join(parts[: depth + 1])} is a value")
        model = annotation  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _check_space(config: Config) -> None:
    """Every key of ``config.tune.space`` names a tunable leaf, and its bounds are its values."""
    base = config.model_dump(exclude={"tune"})
    for key, spec in config.tune.space.items():
        try:
            annotation = _tunable_field(key)
        except ValueError as e:
            raise ValueError(f"tune.space.{key}: {e}") from e
        kinds = set(get_args(annotation)) or {annotation}
        if isinstance(spec, FloatParam) and int in kinds and float not in kinds:
            raise ValueError(f"tune.space.{key}: {key} takes integers: use type: int")
        for value in spec.bounds():
            tree = copy.deepcopy(base)
            *parents, leaf = key.split(".")
            node = tree
            for part in parents:
                node = node[part]
            node[leaf] = value
            try:
                Config.model_validate(tree)
            except ValidationError as e:
                reasons = "; ".join(
                    f"{'.'.join(map(str, err['loc'])) or key}: {err['msg']}" for err in e.errors()
                )
                raise ValueError(
                    f"tune.space.{key}: {value!r} is not a valid value of {key} ({reasons})"
                ) from e


class Config(_Section):
    """The whole run configuration."""

    work_dir: Path = Path("work")
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    registry: RegistryConfig = RegistryConfig()
    card: CardConfig = CardConfig()
    tune: TuneConfig = TuneConfig()
    retrain: RetrainConfig = RetrainConfig()

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> Config:
        if self.split.val_fraction + self.split.test_fraction >= 0.8:
            raise ValueError("split.val_fraction + split.test_fraction must be below 0.8")
        return self

    @model_validator(mode="after")
    def _tune_space_names_training_keys(self) -> Config:
        _check_space(self)
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


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` applied: nested mappings merged key by key, other values replaced.

    Neither argument is changed.
    """
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
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
        tree = deep_merge(tree, _profile_yaml(profile))
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping, got {type(loaded).__name__}"
            )
        tree = deep_merge(tree, loaded)
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
