"""MLflow tracking and model registry: the embedded store, registration, the promotion gate."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from garbage.core.classifier import METADATA_FILENAME, MODEL_FILENAME, external_data_files
from garbage.core.config import Config


class RegistryError(RuntimeError):
    """The tracking server or registry refused or failed an operation."""


@dataclass(frozen=True)
class GateDecision:
    """The promotion gate's verdict, with a reason a person can read."""

    promote: bool
    reason: str
    metric: str
    candidate: float
    champion: float | None
    champion_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


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


def decide_promotion(
    metric: str,
    candidate: float,
    champion: float | None,
    min_improvement: float,
    min_metric: float = 0.0,
    champion_version: str | None = None,
) -> GateDecision:
    """The promotion rule, as a pure function.

    The candidate becomes champion when there is none, or when it beats the champion's score on
    the same test set by more than ``min_improvement``; never when it is below ``min_metric``.
    """
    if candidate < min_metric:
        return GateDecision(
            False,
            f"candidate {metric} {candidate:.4f} is below the floor {min_metric:.4f}",
            metric,
            candidate,
            champion,
            champion_version,
        )
    if champion is None:
        return GateDecision(
            True,
            f"no champion yet; candidate {metric} {candidate:.4f} becomes champion",
            metric,
            candidate,
            None,
            None,
        )
    gain = candidate - champion
    if gain > min_improvement:
        return GateDecision(
            True,
            f"candidate {metric} {candidate:.4f} beats champion v"
            f"{champion_version} ({champion:.4f}) by {gain:+.4f} > "
            f"{min_improvement:.4f}",
            metric,
            candidate,
            champion,
            champion_version,
        )
    return GateDecision(
        False,
        f"candidate {metric} {candidate:.4f} does not beat champion v"
        f"{champion_version} ({champion:.4f}) by more than {min_improvement:.4f} "
        f"(gain {gain:+.4f}); the champion stays",
        metric,
        candidate,
        champion,
        champion_version,
    )


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


def version_of(config: Config, model_uri: str) -> str | None:
    """The version of the configured model that ``models:/NAME/V`` or ``models:/NAME@ALIAS`` names.

    None for any other URI (storage URIs, ``runs:/``, logged models) or another model's name.

    Raises:
        RegistryError: The URI names this model, but no such version or alias exists.
    """
    name = config.registry.model_name
    prefix = f"models:/{name}"
    rest = model_uri.strip().removeprefix(prefix)
    if rest == model_uri.strip() or rest[:1] not in ("/", "@"):
        return None
    try:
        if rest.startswith("@"):
            return str(_client(config).get_model_version_by_alias(name, rest[1:]).version)
        return str(_client(config).get_model_version(name, rest[1:]).version)
    except MlflowException as e:
        raise RegistryError(
            f"{model_uri}: no such version in the registry at {config.mlflow_tracking_uri} ({e})"
        ) from e


def record_decision(config: Config, version: str, decision: GateDecision) -> None:
    """Tag the candidate version with the gate's decision (also when it was not promoted)."""
    MlflowClient().set_model_version_tag(
        config.registry.model_name, version, "gate_decision", decision.reason
    )
