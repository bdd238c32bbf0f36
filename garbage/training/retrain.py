"""When a retrain is due, at most one retrain per dataset version, and the config it runs with.

Plain functions that ``garbage retrain`` (:mod:`cli.retrain`, the one place that wires the
collector's store, the drift check, dataset versions and the pipeline together) builds on:

* **The champion** (:func:`current_champion`): its registered version and the dataset version it
  was trained on (its ``data.version`` tag; None for a model trained on the plain archive).
* **New labels** (:func:`count_new_labels`): labelled images the champion's dataset version does
  not hold, or holds with another label.
* **The decision** (:func:`decide_retrain`): due on enough new labels
  (``retrain.min_new_labels``) or on ``retrain.drift_windows`` consecutive drifted windows, with
  the reasons in sentences a person reads.
* **The ledger** (:func:`claim_retrain`, :func:`finish_retrain`, :func:`read_retrain`): one
  JSON record per dataset version, ``retrains/<version>.json`` under the datasets root, claimed
  before the pipeline starts (a claim two writers cannot both win), so a version is retrained
  at most once.
* **The retrain's config** (:func:`retrain_config`): the run's config on the new version, with
  ``retrain.train`` merged into ``train`` and a warm start from the champion.

Retraining never moves the champion alias itself: the pipeline's register step does, through
the promotion gate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import ValidationError

from garbage.core.config import Config, ConfigError, RetrainConfig, deep_merge
from garbage.core.model_uri import champion_uri
from garbage.training.data.versions import NAME_PATTERN, DatasetStore, version_manifest
from garbage.training.lineage import TAG_DATA_VERSION
from garbage.training.registry import champion_version

#: The folder of the ledger, relative to the datasets root.
LEDGER_FOLDER = "retrains"
RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"


class RetrainError(RuntimeError):
    """The registry or the ledger cannot be read; the message says where and what to do."""


# --------------------------------------------------------------------------------------------
# The champion.


@dataclass(frozen=True)
class Champion:
    """The version that serves, and the data it was trained on.

    Attributes:
        version: Its registered version.
        data_version: The dataset version it was trained on (``ds-...``, its ``data.version``
            tag); None when it was trained on the plain archive.
        uri: ``models:/NAME@ALIAS`` of the champion.
    """

    version: str
    data_version: str | None
    uri: str


def registry_client(config: Config) -> MlflowClient:
    """An MLflow client for the configured tracking server and registry."""
    uri = config.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def current_champion(config: Config) -> Champion | None:
    """The configured registry's champion, or None when no version holds the champion alias.

    Raises:
        RetrainError: The registry cannot be read (a registry that is down is not "no
            champion": that would retrain on everything).
    """
    version = champion_version(config)
    client = registry_client(config)
    try:
        if version is None:
            client.search_registered_models(max_results=1)  # raises when it cannot be read
            return None
        tags = client.get_model_version(config.registry.model_name, version).tags
    except MlflowException as e:
        raise RetrainError(
            f"cannot read the registry at {config.mlflow_tracking_uri}: {e}; check "
            "registry.tracking_uri (or MLFLOW_TRACKING_URI)"
        ) from e
    data = str(tags.get(TAG_DATA_VERSION, ""))
    return Champion(version, data if NAME_PATTERN.fullmatch(data) else None, champion_uri(config))


def held_labels(store: DatasetStore, name: str | None) -> dict[str, str] | None:
    """Image hash to label of dataset version ``name``; None when ``name`` is None.

    Raises:
        garbage.training.data.versions.VersionNotFoundError: No such version.
    """
    if name is None:
        return None
    manifest = version_manifest(store, name)
    return dict(zip(manifest["sha256"], manifest["label"], strict=True))


# --------------------------------------------------------------------------------------------
# New labels and the decision.


def count_new_labels(labelled: Iterable[tuple[str, str]], held: Mapping[str, str] | None) -> int:
    """How many labelled images a dataset version does not hold, or holds with another label.

    Args:
        labelled: ``(sha256, label)`` of the labelled images, oldest label first: for an image
            labelled more than once the last one (the newest label) wins.
        held: Image hash to label of the champion's dataset version; None when it has none
            (then every labelled image is new).

    Returns:
        The number of distinct images whose newest label the version does not hold.
    """
    newest: dict[str, str] = {}
    for sha256, label in labelled:
        newest[sha256] = label
    if held is None:
        return len(newest)
    return sum(1 for sha256, label in newest.items() if held.get(sha256) != label)


@dataclass(frozen=True)
class RetrainDecision:
    """Whether a retrain is due, and why.

    Attributes:
        due: Whether to retrain.
        reasons: Sentences a person reads: what the labels and the drift say, against the
            thresholds that make a retrain due.
    """

    due: bool
    reasons: tuple[str, ...]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def decide_retrain(
    new_labels: int,
    drift: Sequence[bool],
    settings: RetrainConfig,
    *,
    since: str | None = None,
    force: bool = False,
) -> RetrainDecision:
    """Decide whether a retrain is due.

    Due when ``new_labels >= settings.min_new_labels``, or when at least
    ``settings.drift_windows`` windows were judged and the newest ``drift_windows`` of them all
    drifted, or when ``force``.

    Args:
        new_labels: Labelled images the champion's dataset version does not hold
            (:func:`count_new_labels`).
        drift: One flag per drift window, the newest first; empty when drift was not checked.
        settings: The ``retrain`` section.
        since: The champion's dataset version, for the reasons; None when it has none.
        force: Retrain whatever the labels and the drift say.

    Returns:
        The decision with its reasons.
    """
    basis = f"since {since}" if since else "that the champion was not trained on"
    by_labels = new_labels >= settings.min_new_labels
    reasons = [
        f"{_plural(new_labels, 'new label')} {basis} (at least {settings.min_new_labels} make "
        "a retrain due)"
    ]
    needed = settings.drift_windows
    newest = list(drift[:needed])
    by_drift = len(newest) >= needed and all(newest)
    rule = f"{_plural(needed, 'consecutive drifted window')} make a retrain due"
    if not drift:
        reasons.append(f"drift not checked ({rule})")
    elif len(newest) < needed:
        reasons.append(f"drift judged on only {_plural(len(newest), 'window')} ({rule})")
    else:
        reasons.append(f"drift in {sum(newest)} of the last {_plural(needed, 'window')} ({rule})")
    if force:
        reasons.append("forced: retrain whatever the labels and the drift say")
    return RetrainDecision(by_labels or by_drift or force, tuple(reasons))


# --------------------------------------------------------------------------------------------
# The ledger: at most one retrain per dataset version.


def ledger_path(name: str) -> str:
    """Where the retrain record of dataset version ``name`` lies, relative to the datasets root."""
    return f"{LEDGER_FOLDER}/{name}.json"


def now_text() -> str:
    """The current time as the ledger records it: ISO 8601 in UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def claim_retrain(
    store: DatasetStore, record: Mapping[str, Any], *, overwrite: bool = False
) -> bool:
    """Claim the retrain of ``record["version"]`` by writing its record, unless one exists.

    Args:
        store: The datasets root.
        record: The record (JSON-ready); ``version`` names the dataset version.
        overwrite: Write it even when a record exists (a forced retrain).

    Returns:
        False when a record existed and ``overwrite`` is off (nothing is written), else True.

    Raises:
        KeyError: ``record`` has no ``version``.
        garbage.training.data.versions.DatasetStoreError: The store cannot be written.
    """
    text = json.dumps(dict(record), indent=2) + "\n"
    return store.write_file(ledger_path(str(record["version"])), text, exclusive=not overwrite)


def read_retrain(store: DatasetStore, name: str) -> dict[str, Any] | None:
    """The retrain record of dataset version ``name``; None when it was never retrained.

    Raises:
        RetrainError: The record is not a JSON object.
        garbage.training.data.versions.DatasetStoreError: The store cannot be read.
    """
    text = store.read_file(ledger_path(name))
    if text is None:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise RetrainError(
            f"the retrain record {ledger_path(name)} under {store.location} is damaged ({e}); "
            "delete it, or retrain with --force to write it again"
        ) from e
    if not isinstance(record, dict):
        raise RetrainError(
            f"the retrain record {ledger_path(name)} under {store.location} is not a JSON "
            "object; delete it, or retrain with --force to write it again"
        )
    return record


def finish_retrain(store: DatasetStore, name: str, **fields: Any) -> dict[str, Any]:
    """Update the retrain record of ``name`` with ``fields`` (``finished`` defaults to now).

    A record that went missing meanwhile is written again from ``fields``.

    Returns:
        The record as written.

    Raises:
        RetrainError: The existing record is damaged.
        garbage.training.data.versions.DatasetStoreError: The store cannot be written.
    """
    record = read_retrain(store, name) or {"version": name}
    record.update(fields)
    record.setdefault("finished", now_text())
    store.write_file(ledger_path(name), json.dumps(record, indent=2) + "\n")
    return record


# --------------------------------------------------------------------------------------------
# The retrain's config.


def warm_start_uri(config: Config, champion: Champion | None) -> str | None:
    """What a retrain starts from: the champion's URI with ``retrain.warm_start``, else None."""
    if champion is None or not config.retrain.warm_start:
        return None
    return champion.uri


def retrain_config(config: Config, version: str, init_from: str | None) -> Config:
    """The retrain's config: on dataset ``version``, with ``retrain.train`` and ``retrain.model``.

    Args:
        config: The run's config.
        version: The dataset version to train on (``data.version``).
        init_from: Weights to start from (``train.init_from``; the champion's URI for a warm
            start); None leaves ``train.init_from`` as the config has it.

    Returns:
        The validated config.

    Raises:
        ConfigError: The result is not a valid config (the message names the key).
    """
    tree = config.model_dump(mode="json")
    tree["data"]["version"] = version
    tree["train"] = deep_merge(tree["train"], dict(config.retrain.train))
    tree["model"] = deep_merge(tree["model"], dict(config.retrain.model))
    if init_from is not None:
        tree["train"]["init_from"] = init_from
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        reasons = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(
            f"the retrain's config is not valid ({reasons}); check retrain.train, retrain.model "
            "and the train and model sections"
        ) from e
