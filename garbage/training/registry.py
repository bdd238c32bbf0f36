"""MLflow tracking and model registry: the embedded store, registration, the promotion gate."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_args

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from garbage.core.classifier import METADATA_FILENAME, MODEL_FILENAME, external_data_files
from garbage.core.config import Config, GateOverall


class RegistryError(RuntimeError):
    """The tracking server or registry refused or failed an operation."""


@dataclass(frozen=True)
class SliceScore:
    """One data slice's gate metric for the candidate and the champion, on the same images.

    Attributes:
        name: The slice (a ``source`` of the split manifest, or the one data source).
        images: Test images in the slice.
        candidate: The candidate's gate metric on the slice.
        champion: The champion's gate metric on the slice; None without a comparable champion.
    """

    name: str
    images: int
    candidate: float
    champion: float | None = None


@dataclass(frozen=True)
class SliceRow:
    """One row of the gate's per-slice table.

    Attributes:
        slice: The slice's name.
        images: Test images in the slice.
        candidate: The candidate's gate metric on the slice.
        champion: The champion's, or None without a comparable champion.
        change: ``candidate - champion``, or None without a champion.
        gating: Whether the slice can stop the promotion: it has a champion score, at least
            ``min_slice_images`` images, and is not the only slice (which is the whole split).
        within_tolerance: Whether the change is no worse than ``-slice_tolerance``; None
            without a champion.
        note: The row's verdict in words.
    """

    slice: str
    images: int
    candidate: float
    champion: float | None
    change: float | None
    gating: bool
    within_tolerance: bool | None
    note: str

    @property
    def blocks(self) -> bool:
        """True when this slice stops the promotion: gating and worse beyond the tolerance."""
        return self.gating and self.within_tolerance is False


@dataclass(frozen=True)
class GateDecision:
    """The promotion gate's verdict, with a reason a person can read and a row per data slice.

    Attributes:
        promote: Whether the candidate passes.
        reason: Why, in words (naming any slice that stopped it, and by how much).
        metric: The gate metric (``registry.gate_metric``).
        candidate: The candidate's overall gate metric (see ``overall``).
        champion: The champion's on the same images, or None without a comparable champion.
        champion_version: The champion's registered version, when there is one.
        slices: One row per data slice of the test split (empty when none was given).
        slice_tolerance: How much worse than the champion a gating slice may get.
        min_slice_images: Slices with fewer test images are reported but do not gate.
        overall: What ``candidate`` and ``champion`` are: ``pooled`` (the metric on the whole
            test split) or ``slice_mean`` (the mean of the slices with at least
            ``min_slice_images`` images: each source counts the same).
    """

    promote: bool
    reason: str
    metric: str
    candidate: float
    champion: float | None
    champion_version: str | None = None
    slices: tuple[SliceRow, ...] = ()
    slice_tolerance: float = 0.0
    min_slice_images: int = 1
    overall: GateOverall = "pooled"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``slices`` as a list of row objects)."""
        result = asdict(self)
        result["slices"] = [asdict(row) for row in self.slices]
        return result


def configure_tracking(config: Config) -> str:
    """Point MLflow at the configured server, or at the embedded SQLite store in the work dir.

    Creates the experiment when missing (with a local artifact root for the embedded store).

    Returns:
        The experiment id.
    """
    uri = config.mlflow_tracking_uri
    if uri.startswith("sqlite:"):
        config.work_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(config.registry.experiment)
        if experiment is not None:
            return experiment.experiment_id
        location = config.mlflow_artifact_location if uri.startswith("sqlite:") else None
        return mlflow.create_experiment(config.registry.experiment, artifact_location=location)
    except MlflowException as e:
        raise RegistryError(f"cannot reach MLflow tracking at {uri}: {e}") from e


#: How the gate forms its overall score (:func:`decide_promotion`, ``registry.overall``).
OVERALL_RULES: tuple[GateOverall, ...] = get_args(GateOverall)

#: A slice counts as worse only below ``-tolerance - _SLACK``: 0.90 vs 0.91 at 0.01 is within.
_SLACK = 1e-9


def slice_scores(
    metric: str,
    candidate: Mapping[str, Mapping[str, Any]],
    champion: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[SliceScore]:
    """The gate's per-slice input from the per-slice metrics of two scoring passes.

    Args:
        metric: The gate metric (a key of each slice's metrics, e.g. ``macro_f1``).
        candidate: The candidate's metrics per slice
            (:meth:`garbage.training.metrics.Scored.slices`).
        champion: The champion's, on the same images; None without a comparable champion.

    Returns:
        One :class:`SliceScore` per slice of the candidate, in slice-name order; a slice the
        champion was not scored on has no champion score.

    Raises:
        KeyError: A slice's metrics lack ``metric`` or ``per_class`` (not metrics of
            :func:`garbage.training.metrics.classification_metrics`).
    """
    rows = []
    for name in sorted(candidate):
        metrics = candidate[name]
        try:
            images = sum(int(c["support"]) for c in metrics["per_class"].values())
            theirs = champion.get(name) if champion is not None else None
            rows.append(
                SliceScore(
                    name=name,
                    images=images,
                    candidate=float(metrics[metric]),
                    champion=None if theirs is None else float(theirs[metric]),
                )
            )
        except KeyError as e:
            raise KeyError(
                f"slice {name!r}: its metrics have no {e.args[0]!r}; pass the per-slice metrics "
                "of classification_metrics (Scored.slices())"
            ) from e
    return rows


def _slice_rows(
    slices: Sequence[SliceScore], tolerance: float, min_images: int
) -> tuple[SliceRow, ...]:
    rows = []
    for s in slices:
        if s.champion is None:
            rows.append(
                SliceRow(s.name, s.images, s.candidate, None, None, False, None, "no champion")
            )
            continue
        change = s.candidate - s.champion
        within = change >= -tolerance - _SLACK
        gating = s.images >= min_images and len(slices) > 1
        if len(slices) == 1:
            note = "the whole test split: the overall rule decides"
        elif not gating:
            note = f"not gating: {s.images} images < {min_images}"
        elif within:
            note = f"within tolerance ({change:+.4f} >= -{tolerance:.4f})"
        else:
            note = f"worse by {-change:.4f} > tolerance {tolerance:.4f}: blocks"
        rows.append(
            SliceRow(s.name, s.images, s.candidate, s.champion, change, gating, within, note)
        )
    return tuple(rows)


def _describe_blocking(rows: Sequence[SliceRow], metric: str, tolerance: float) -> str:
    worse = [
        f"slice {r.slice!r} gets worse: {metric} {r.candidate:.4f} vs {r.champion:.4f} "
        f"({r.change:+.4f}, more than the tolerance {tolerance:.4f})"
        for r in rows
        if r.blocks and r.champion is not None and r.change is not None
    ]
    return "; ".join(worse)


def decide_promotion(
    metric: str,
    candidate: float,
    champion: float | None,
    min_improvement: float,
    min_metric: float = 0.0,
    champion_version: str | None = None,
    *,
    slices: Sequence[SliceScore] = (),
    slice_tolerance: float = 0.0,
    min_slice_images: int = 1,
    overall: GateOverall = "pooled",
) -> GateDecision:
    """The promotion rule, as a pure function.

    The candidate becomes champion when there is none, or when it beats the champion's overall
    score on the same test set by more than ``min_improvement`` and no data slice with at least
    ``min_slice_images`` test images gets worse than the champion's by more than
    ``slice_tolerance``; never when its overall score is below ``min_metric``. Smaller slices
    are reported in the rows but do not gate. With one slice (or none given) this is the
    overall rule alone.

    The overall score is ``candidate`` and ``champion`` as given (``overall="pooled"``: the
    metric on the whole test split), or with ``overall="slice_mean"`` the mean over the slices
    of at least ``min_slice_images`` images, when there are two or more: then a site's slice of
    a few dozen images counts as much as a base set ten times its size, and a model that is
    better at the site is not held back by the base set's weight.

    Args:
        metric: The gate metric's name (``registry.gate_metric``).
        candidate: The candidate's gate metric on the whole test split.
        champion: The champion's on the same images; None when there is no comparable champion.
        min_improvement: The margin the candidate must beat the champion by, overall.
        min_metric: The floor below which no candidate is promoted.
        champion_version: The champion's registered version (for the reason).
        slices: Both models' gate metric per data slice of the test split (:func:`slice_scores`).
        slice_tolerance: How much worse than the champion a gating slice may get, in the gate
            metric's units.
        min_slice_images: Slices with fewer test images do not gate (nor count in a mean).
        overall: ``pooled`` or ``slice_mean`` (``registry.overall``).

    Returns:
        The decision, with one :class:`SliceRow` per slice.

    Raises:
        ValueError: ``overall`` is neither ``pooled`` nor ``slice_mean``.
    """
    if overall not in OVERALL_RULES:
        raise ValueError(f"overall must be one of {OVERALL_RULES}, got {overall!r}")
    rows = _slice_rows(slices, slice_tolerance, min_slice_images)
    counted = [s for s in slices if s.images >= min_slice_images]
    comparable = champion is None or all(s.champion is not None for s in counted)
    if overall == "slice_mean" and len(counted) >= 2 and comparable:
        candidate = sum(s.candidate for s in counted) / len(counted)
        if champion is not None:
            champion = sum(float(s.champion or 0.0) for s in counted) / len(counted)
    else:
        overall = "pooled"

    def decision(promote: bool, reason: str) -> GateDecision:
        return GateDecision(
            promote,
            reason,
            metric,
            candidate,
            champion,
            champion_version if champion is not None else None,
            rows,
            slice_tolerance,
            min_slice_images,
            overall,
        )

    label = metric if overall == "pooled" else f"{metric} (mean of {len(counted)} slices)"
    if candidate < min_metric:
        return decision(
            False, f"candidate {label} {candidate:.4f} is below the floor {min_metric:.4f}"
        )
    if champion is None:
        return decision(
            True, f"no champion yet; candidate {label} {candidate:.4f} becomes champion"
        )
    gain = candidate - champion
    blocking = _describe_blocking(rows, metric, slice_tolerance)
    if gain <= min_improvement:
        also = f"; also {blocking}" if blocking else ""
        return decision(
            False,
            f"candidate {label} {candidate:.4f} does not beat champion v"
            f"{champion_version} ({champion:.4f}) by more than {min_improvement:.4f} "
            f"(gain {gain:+.4f}){also}; the champion stays",
        )
    beats = (
        f"candidate {label} {candidate:.4f} beats champion v{champion_version} "
        f"({champion:.4f}) by {gain:+.4f} > {min_improvement:.4f}"
    )
    if blocking:
        return decision(False, f"{beats}, but {blocking}; the champion stays")
    if len(rows) > 1:
        gating = sum(r.gating for r in rows)
        small = [r.slice for r in rows if r.champion is not None and not r.gating]
        beats += (
            f", and no slice gets worse by more than {slice_tolerance:.4f} "
            f"({gating} of {len(rows)} slices gating"
            + (f"; under {min_slice_images} test images: {', '.join(small)}" if small else "")
            + ")"
        )
    return decision(True, beats)


def gate_table(decision: GateDecision) -> str:
    """The decision as a Markdown table: the overall score, then a row per data slice.

    The first row is the whole test split (``all``) or, under the ``slice_mean`` rule, the mean
    of the slices that count (``mean of slices``).

    Columns: slice, images, candidate, champion, change and the row's verdict (for a slice:
    within tolerance, blocks, or not gating and why).
    """

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    def change(value: float | None) -> str:
        return "-" if value is None else f"{value:+.4f}"

    metric = decision.metric
    overall_change = None if decision.champion is None else decision.candidate - decision.champion
    images = sum(r.images for r in decision.slices)
    overall_row = "all" if decision.overall == "pooled" else "mean of slices"
    lines = [
        f"| slice | images | candidate {metric} | champion {metric} | change | gate |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        f"| **{overall_row}** | {images or '-'} | {number(decision.candidate)} | "
        f"{number(decision.champion)} | {change(overall_change)} | "
        + ("passes" if decision.promote else "does not pass")
        + " |",
    ]
    for r in decision.slices:
        name = r.slice.replace("|", "\\|")
        lines.append(
            f"| {name} | {r.images} | {number(r.candidate)} | {number(r.champion)} | "
            f"{change(r.change)} | {r.note} |"
        )
    return "\n".join(lines)


def slice_key(name: str) -> str:
    """A slice's name as MLflow accepts it in a metric or tag key (other characters as ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "_"


def slice_tags(decision: GateDecision) -> dict[str, str]:
    """One registered-version tag per slice: ``gate.slice.<name>`` = the candidate vs champion.

    E.g. ``"0.9123 vs 0.9050 (+0.0073)"``, ``"0.9123 (no champion)"``, or with
    ``"; not gating: 12 images < 20"`` for a slice too small to gate.
    """
    tags = {}
    for r in decision.slices:
        if r.champion is None or r.change is None:
            text = f"{r.candidate:.4f} (no champion)"
        else:
            text = f"{r.candidate:.4f} vs {r.champion:.4f} ({r.change:+.4f})"
            if not r.gating or r.blocks:
                text += f"; {r.note}"
        tags[f"gate.slice.{slice_key(r.slice)}"] = text
    return tags


def log_onnx_model(
    export_dir: Path, metadata: dict[str, Any], reference: Path | None = None
) -> str:
    """Log the exported model (ONNX flavour) to the active run; return its model URI.

    ``metadata.json`` and, when given, the monitoring reference profile (``reference/``) are
    stored inside the logged model, so that ``models:/garbage-classifier@champion`` carries them.
    The model's files are stored as exported (the graph re-serialised byte for byte, no external
    data of MLflow's making, each external-data file copied), so that they match the digests
    ``metadata.json`` records and the model loads verified from the registry.
    """
    import onnx

    model_file = export_dir / MODEL_FILENAME
    graph = onnx.load(str(model_file), load_external_data=False)
    if graph.SerializeToString() != model_file.read_bytes():  # what mlflow.onnx will write
        raise RegistryError(
            f"{model_file} does not serialise back to the same bytes, so the registry's copy "
            "would not match the digest metadata.json records; export it again with "
            "garbage.training.export (`garbage pipeline run`)"
        )
    info = mlflow.onnx.log_model(
        graph,
        name="model",
        metadata={k: v for k, v in metadata.items() if isinstance(v, str | int | float | list)},
        save_as_external_data=False,
    )
    client = MlflowClient()
    for name in external_data_files(model_file):
        folder = str(Path(name).parent) if Path(name).parent != Path() else None
        client.log_model_artifact(info.model_id, str(export_dir / name), folder)
    client.log_model_artifact(info.model_id, str(export_dir / METADATA_FILENAME))
    if reference is not None and reference.is_dir():
        client.log_model_artifacts(info.model_id, str(reference), "reference")
    elif reference is not None:
        client.log_model_artifact(info.model_id, str(reference), "reference")
    return info.model_uri


def register_model(
    config: Config, model_uri: str, tags: dict[str, Any], run_id: str | None = None
) -> str:
    """Register ``model_uri`` under the configured name; return the new version.

    Args:
        config: The run config (registry and model name).
        model_uri: The logged model (``models:/<model id>`` of :func:`log_onnx_model`).
        tags: Tags of the new version (its lineage: run, git commit, data version).
        run_id: The run the model was logged in: the version must link to it (MLflow takes the
            link from the logged model; a version that lacks it is refused here).

    Raises:
        RegistryError: The registry refused, or the new version does not link to ``run_id``.
    """
    name = config.registry.model_name
    try:
        version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    except MlflowException as e:
        raise RegistryError(f"cannot register {model_uri} as {name}: {e}") from e
    if run_id is not None and version.run_id != run_id:
        raise RegistryError(
            f"{name} v{version.version} links to run {version.run_id!r}, not to the run "
            f"{run_id} it was logged in; log the model inside that run "
            "(mlflow.start_run(run_id=...)) before registering it"
        )
    return str(version.version)


#: The longest model-version description every MLflow store keeps (a VARCHAR(5000) column).
MAX_DESCRIPTION = 5000


def describe_version(config: Config, version: str, description: str) -> None:
    """Set the description of a version of the configured model (its model card).

    Raises:
        RegistryError: The description is longer than :data:`MAX_DESCRIPTION`, or the registry
            refused it.
    """
    name = config.registry.model_name
    if len(description) > MAX_DESCRIPTION:
        raise RegistryError(
            f"the description of {name} v{version} has {len(description)} characters, over "
            f"MLflow's limit of {MAX_DESCRIPTION}; shorten it (model_card.fit_description)"
        )
    try:
        _client(config).update_model_version(name, version, description=description)
    except MlflowException as e:
        raise RegistryError(f"cannot set the description of {name} v{version}: {e}") from e


def _client(config: Config) -> MlflowClient:
    uri = config.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def alias_version(config: Config, alias: str) -> str | None:
    """The version that holds ``alias`` in the configured registry, or None when none does."""
    try:
        found = _client(config).get_model_version_by_alias(config.registry.model_name, alias)
    except MlflowException:
        return None
    return str(found.version)


def champion_version(config: Config) -> str | None:
    """The version that holds the champion alias, or None when there is none."""
    return alias_version(config, config.registry.champion_alias)


def set_champion(config: Config, version: str, decision: GateDecision | None = None) -> None:
    """Move the champion alias to ``version``; record the gate's reason on it when given.

    A challenger alias on the same version is dropped: it has been rolled out.
    """
    client = _client(config)
    name = config.registry.model_name
    client.set_registered_model_alias(name, config.registry.champion_alias, version)
    if alias_version(config, config.registry.challenger_alias) == version:
        client.delete_registered_model_alias(name, config.registry.challenger_alias)
    if decision is not None:
        client.set_model_version_tag(name, version, "promotion", json.dumps(decision.to_dict()))


def set_challenger(config: Config, version: str, decision: GateDecision) -> None:
    """Put the challenger alias on ``version``, which passed the gate and awaits its rollout."""
    client = _client(config)
    name = config.registry.model_name
    client.set_registered_model_alias(name, config.registry.challenger_alias, version)
    client.set_model_version_tag(name, version, "promotion", json.dumps(decision.to_dict()))


def tag_version(config: Config, version: str, key: str, value: str) -> None:
    """Set a tag on a version of the configured registered model."""
    try:
        _client(config).set_model_version_tag(config.registry.model_name, version, key, value)
    except MlflowException as e:
        raise RegistryError(f"cannot tag {config.registry.model_name} v{version}: {e}") from e


def _registered(client: MlflowClient, uri: str) -> ModelVersion | None:
    """The registered version that ``models:/NAME/V`` or ``models:/NAME@ALIAS`` names.

    None for any other URI (storage URIs, ``runs:/``, logged models ``models:/m-<id>``).

    Raises:
        MlflowException: No such version or alias.
    """
    rest = uri.strip().removeprefix("models:/")
    if rest == uri.strip():
        return None
    name, sep, alias = rest.partition("@")
    if sep:
        return client.get_model_version_by_alias(name, alias)
    name, sep, number = rest.rpartition("/")
    return client.get_model_version(name, number) if sep else None


def version_of(config: Config, model_uri: str) -> str | None:
    """The version of the configured model that ``models:/NAME/V`` or ``models:/NAME@ALIAS`` names.

    None for any other URI (storage URIs, ``runs:/``, logged models) or another model's name.

    Raises:
        RegistryError: The URI names this model, but no such version or alias exists.
    """
    rest = model_uri.strip().removeprefix(f"models:/{config.registry.model_name}")
    if rest == model_uri.strip() or rest[:1] not in ("/", "@"):
        return None
    try:
        found = _registered(_client(config), model_uri)
    except MlflowException as e:
        raise RegistryError(
            f"{model_uri}: no such version in the registry at {config.mlflow_tracking_uri} ({e})"
        ) from e
    return None if found is None else str(found.version)


def record_decision(config: Config, version: str, decision: GateDecision) -> None:
    """Tag the candidate version with the gate's decision (also when it was not promoted)."""
    MlflowClient().set_model_version_tag(
        config.registry.model_name, version, "gate_decision", decision.reason
    )


CHECKPOINT_ARTIFACT = "checkpoint/best.pt"
"""Where a training run keeps its PyTorch checkpoint (what a warm start continues from)."""


def checkpoint_of(config: Config, uri: str, destination: Path) -> Path:
    """The training checkpoint behind ``uri``, downloaded into ``destination``.

    Args:
        config: The config (its registry and tracking URI).
        uri: ``models:/NAME/V`` or ``models:/NAME@ALIAS`` (the version's run's checkpoint),
            ``runs:/<run id>`` (that run's), or a local ``best.pt``.
        destination: A folder for the download.

    Returns:
        The local checkpoint file. Its contents are untrusted: read it with
        :func:`garbage.training.train.load_checkpoint` (tensors and plain values only).

    Raises:
        RegistryError: No such version or run, or it has no checkpoint.
    """
    import mlflow

    if not uri.startswith(("models:/", "runs:/")):
        path = Path(uri).expanduser()
        if not path.is_file():
            raise RegistryError(f"train.init_from {uri}: no such checkpoint file")
        return path
    client = _client(config)
    try:
        if uri.startswith("runs:/"):
            run_id = uri.removeprefix("runs:/").strip("/").split("/")[0]
        elif (found := _registered(client, uri)) is not None:
            run_id = found.run_id
        else:
            raise RegistryError(
                f"train.init_from {uri}: name a registered version (models:/NAME/V or "
                "models:/NAME@ALIAS), a run (runs:/<run id>) or a checkpoint file"
            )
        if not run_id:
            raise RegistryError(f"train.init_from {uri}: the version links to no training run")
        destination.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path=CHECKPOINT_ARTIFACT,
            dst_path=str(destination),
            tracking_uri=config.mlflow_tracking_uri,
        )
    except MlflowException as e:
        raise RegistryError(
            f"train.init_from {uri}: no checkpoint in the registry at "
            f"{config.mlflow_tracking_uri} ({e}); a run logs one since warm starts exist: "
            "train again without train.init_from"
        ) from e
    return Path(local)
