"""Roll registered model versions out to KServe, keeping the registry's aliases in step.

The registry says what should serve; the InferenceService says what does (its version
annotations, see :class:`garbage.deploy.ServedVersion`). The gate puts the ``challenger`` alias
on a candidate it passes. :func:`release` deploys a version and moves ``champion`` to it only once
the new revision is Ready and takes all traffic (with a canary: at :func:`promote`). When a
rollout fails, the deployer rolls the InferenceService back and ``champion`` is put on the version
that serves again. :func:`status` shows both sides and whether they agree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from garbage.core.config import Config
from garbage.core.model_uri import ModelUriError, resolve_storage_uri
from garbage.deploy import (
    DeployError,
    DeployResult,
    InferenceServiceDeployer,
    ServedVersion,
    connect,
    readiness,
)
from garbage.training.registry import (
    RegistryError,
    alias_version,
    set_champion,
    tag_version,
)

logger = logging.getLogger(__name__)

#: Version tag that records the outcome of a version's last rollout.
ROLLOUT_TAG = "rollout"


@dataclass(frozen=True)
class ReleaseStatus:
    """What the InferenceService serves next to what the registry's aliases say."""

    name: str
    namespace: str
    state: str
    why: str
    storage_uri: str | None
    served: ServedVersion | None
    canary_percent: int | None
    model: str
    champion: str | None
    challenger: str | None

    @property
    def agree(self) -> bool:
        """True when the InferenceService serves the champion with all its traffic."""
        return (
            self.served is not None
            and self.served.model == self.model
            and self.served.version == self.champion
            and not self.canary_percent
        )

    def lines(self) -> list[str]:
        """A short report for people."""
        served = str(self.served) if self.served else "no registered version"
        share = f", {self.canary_percent} % canary" if self.canary_percent else ""
        champion = f"v{self.champion}" if self.champion else "none"
        challenger = f"v{self.challenger}" if self.challenger else "none"
        verdict = (
            "registry and cluster agree"
            if self.agree
            else "registry and cluster DISAGREE: the champion is not what serves all traffic"
        )
        return [
            f"InferenceService {self.namespace}/{self.name}: {self.state} ({self.why})",
            f"  serves      {served}{share}",
            f"  storageUri  {self.storage_uri or '-'}",
            f"registry {self.model}: champion {champion}, challenger {challenger}",
            verdict,
        ]


def release(
    config: Config,
    version: str,
    name: str,
    namespace: str,
    canary_percent: int | None = None,
    timeout_s: float = 600,
    artifacts_destination: str | None = None,
    api: Any = None,
    poll_interval_s: float = 2.0,
) -> DeployResult:
    """Serve registered ``version``; move ``champion`` to it once it serves all traffic.

    Args:
        config: Names the registry (tracking URI, model name, aliases).
        version: The version of ``config.registry.model_name`` to roll out.
        name: InferenceService name.
        namespace: Its namespace.
        canary_percent: 1-99 to start a canary (``champion`` moves at :func:`promote`).
        timeout_s: How long to wait for Ready.
        artifacts_destination: The MLflow server's ``--artifacts-destination``.
        api: A ``CustomObjectsApi``; None connects with :func:`garbage.deploy.connect`.
        poll_interval_s: Seconds between status reads.

    Raises:
        DeployError: The version cannot be resolved, or its revision did not become Ready (the
            InferenceService is rolled back and ``champion`` names what serves again).
    """
    model = config.registry.model_name
    served = ServedVersion(model, version)
    try:
        storage_uri = resolve_storage_uri(
            f"models:/{model}/{version}", config.mlflow_tracking_uri, artifacts_destination
        )
    except ModelUriError as e:
        raise DeployError(str(e)) from e
    deployer = InferenceServiceDeployer(api if api is not None else connect(), poll_interval_s)
    try:
        result = deployer.deploy(
            storage_uri,
            name=name,
            namespace=namespace,
            canary_percent=canary_percent,
            timeout_s=timeout_s,
            version=served,
        )
    except DeployError as e:
        _record(config, version, "failed: rolled back")
        _champion_follows(config, deployer.get(name, namespace), never=version)
        raise DeployError(f"{e}; {config.registry.champion_alias} stays where it was") from e
    if result.canary_percent:
        _record(config, version, f"canary at {result.canary_percent} %")
    else:
        _champion_follows(config, {"metadata": {"annotations": served.annotations()}})
        _record(config, version, f"serving in {namespace}/{name}")
    return result


def promote(
    config: Config,
    name: str,
    namespace: str,
    timeout_s: float = 600,
    api: Any = None,
    poll_interval_s: float = 2.0,
) -> DeployResult:
    """Give the canary all traffic, then move ``champion`` to the version it serves."""
    deployer = InferenceServiceDeployer(api if api is not None else connect(), poll_interval_s)
    result = deployer.promote(name, namespace, timeout_s)
    if result.version is not None:
        _champion_follows(config, {"metadata": {"annotations": result.version.annotations()}})
        _record(config, result.version.version, f"serving in {namespace}/{name}")
    return result


def status(config: Config, name: str, namespace: str, api: Any = None) -> ReleaseStatus:
    """What serves and what the registry says, side by side."""
    isvc = InferenceServiceDeployer(api if api is not None else connect()).get(name, namespace)
    registry = config.registry
    champion = alias_version(config, registry.champion_alias)
    challenger = alias_version(config, registry.challenger_alias)
    state, why = readiness(isvc) if isvc is not None else ("absent", "no InferenceService")
    predictor = ((isvc or {}).get("spec") or {}).get("predictor") or {}
    return ReleaseStatus(
        name=name,
        namespace=namespace,
        state=state,
        why=why,
        storage_uri=(predictor.get("model") or {}).get("storageUri"),
        served=ServedVersion.of(isvc),
        canary_percent=predictor.get("canaryTrafficPercent"),
        model=registry.model_name,
        champion=champion,
        challenger=challenger,
    )


def _champion_follows(
    config: Config, isvc: dict[str, Any] | None, never: str | None = None
) -> None:
    """Put ``champion`` on the registered version ``isvc`` serves, when it names one of ours.

    ``never``: a version that failed its rollout (a first deploy has nothing to roll back to).
    """
    served = ServedVersion.of(isvc)
    if served is None or served.model != config.registry.model_name or served.version == never:
        return
    if alias_version(config, config.registry.champion_alias) != served.version:
        set_champion(config, served.version)


def _record(config: Config, version: str, outcome: str) -> None:
    try:
        tag_version(config, version, ROLLOUT_TAG, outcome)
    except RegistryError as e:  # the rollout itself happened; say so rather than fail it
        logger.warning("%s", e)
