"""MLflow tracking and model registry: the embedded store, registration, the promotion gate."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

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
    """
    import onnx

    info = mlflow.onnx.log_model(
        onnx.load(str(export_dir / "model.onnx")),
        name="model",
        metadata={k: v for k, v in metadata.items() if isinstance(v, str | int | float | list)},
    )
    client = MlflowClient()
    client.log_model_artifact(info.model_id, str(export_dir / "metadata.json"))
    if reference is not None and reference.is_dir():
        client.log_model_artifacts(info.model_id, str(reference), "reference")
    elif reference is not None:
        client.log_model_artifact(info.model_id, str(reference), "reference")
    return info.model_uri


def register_model(config: Config, model_uri: str, tags: dict[str, Any]) -> str:
    """Register ``model_uri`` under the configured name; return the new version."""
    name = config.registry.model_name
    try:
        version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    except MlflowException as e:
        raise RegistryError(f"cannot register {model_uri} as {name}: {e}") from e
    return str(version.version)


def champion_version(config: Config) -> str | None:
    """The version that holds the champion alias, or None when there is none."""
    client = MlflowClient()
    try:
        return str(
            client.get_model_version_by_alias(
                config.registry.model_name, config.registry.champion_alias
            ).version
        )
    except MlflowException:
        return None


def set_champion(config: Config, version: str, decision: GateDecision) -> None:
    """Move the champion alias to ``version`` and record why on the version."""
    client = MlflowClient()
    name = config.registry.model_name
    client.set_registered_model_alias(name, config.registry.champion_alias, version)
    client.set_model_version_tag(name, version, "promotion", json.dumps(decision.to_dict()))


def record_decision(config: Config, version: str, decision: GateDecision) -> None:
    """Tag the candidate version with the gate's decision (also when it was not promoted)."""
    MlflowClient().set_model_version_tag(
        config.registry.model_name, version, "gate_decision", decision.reason
    )
