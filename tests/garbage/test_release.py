"""Rollouts keep the registry and the cluster in agreement: a real MLflow registry (SQLite) and a
FAKE Kubernetes API server.

``FakeKubernetesAPI`` (``tests/fake_kubernetes.py``) is a FAKE: no Kubernetes API server can run on
the development and CI machines. The registry is MLflow's own, in a temporary SQLite store; its
versions point at ``s3://`` sources, as versions registered through the cluster's MLflow server do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_kubernetes import NAME, NEW, NS, OLD, FakeKubernetesAPI
from mlflow import MlflowClient
from support import aliases, register_sources

from garbage.core.config import Config, load_config
from garbage.deploy import (
    MODEL_VERSION_ANNOTATION,
    REGISTERED_MODEL_ANNOTATION,
    DeployError,
    ServedVersion,
)
from garbage.release import ROLLOUT_TAG, promote, release, status

BROKEN = "s3://mlflow/artifacts/1/models/m-broken/artifacts"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(profile="smoke", overrides=[f"work_dir={tmp_path}"], environ={})


@pytest.fixture
def registry(config: Config) -> MlflowClient:
    """Versions 1 (OLD, champion), 2 (NEW, challenger) and 3 (BROKEN) of the configured model."""
    return register_sources(config, [OLD, NEW, BROKEN], champion="1", challenger="2")


@pytest.fixture
def fake_api() -> Iterator[FakeKubernetesAPI]:
    with FakeKubernetesAPI() as server:
        server.behaviour[NEW] = "ready"
        server.behaviour[BROKEN] = "fail"
        yield server


def _rollout(client: MlflowClient, config: Config, version: str) -> str | None:
    tags = client.get_model_version(config.registry.model_name, version).tags
    return tags.get(ROLLOUT_TAG)


def _release(config: Config, fake: FakeKubernetesAPI, version: str, **kwargs: Any) -> Any:
    return release(
        config,
        version,
        NAME,
        NS,
        timeout_s=10,
        api=fake.custom_objects_api(),
        poll_interval_s=0.01,
        **kwargs,
    )


def _served(fake: FakeKubernetesAPI) -> tuple[str, str | None, str | None]:
    isvc = fake.objects[(NS, NAME)]
    annotations = isvc["metadata"]["annotations"]
    return (
        isvc["spec"]["predictor"]["model"]["storageUri"],
        annotations.get(REGISTERED_MODEL_ANNOTATION),
        annotations.get(MODEL_VERSION_ANNOTATION),
    )


def test_champion_moves_only_once_the_new_revision_is_ready(config, registry, fake_api):
    model = config.registry.model_name
    fake_api.seed(OLD, version=ServedVersion(model, "1"))
    seen_by_controller: list[dict[str, str]] = []
    original = fake_api._reconcile

    def spy(obj: dict[str, Any]) -> None:  # what the registry says while KServe rolls out
        seen_by_controller.append(aliases(registry, config))
        original(obj)

    fake_api._reconcile = spy  # type: ignore[method-assign]
    result = _release(config, fake_api, "2")

    assert result.version == ServedVersion(model, "2")
    assert result.previous_version == ServedVersion(model, "1")
    assert _served(fake_api) == (NEW, model, "2")
    assert aliases(registry, config) == {"champion": "2"}  # the challenger alias is dropped
    assert _rollout(registry, config, "2") == f"serving in {NS}/{NAME}"
    assert seen_by_controller and all(a["champion"] == "1" for a in seen_by_controller)


def test_a_failed_rollout_is_rolled_back_and_the_champion_stays(config, registry, fake_api):
    model = config.registry.model_name
    fake_api.seed(OLD, version=ServedVersion(model, "1"))

    with pytest.raises(DeployError, match=r"Rolled back to .*champion stays where it was"):
        _release(config, fake_api, "3")

    assert _served(fake_api) == (OLD, model, "1")
    assert aliases(registry, config) == {"champion": "1", "challenger": "2"}
    assert _rollout(registry, config, "3") == "failed: rolled back"


def test_a_rollback_moves_the_champion_back_to_what_serves(config, registry, fake_api):
    """The registry said v2 while v1 served (moved by hand): after the rollback both say v1."""
    model = config.registry.model_name
    registry.set_registered_model_alias(model, "champion", "2")
    fake_api.seed(OLD, version=ServedVersion(model, "1"))

    with pytest.raises(DeployError):
        _release(config, fake_api, "3")

    assert aliases(registry, config)["champion"] == "1"
    assert status(config, NAME, NS, api=fake_api.custom_objects_api()).agree


def test_a_first_deploy_that_fails_moves_no_alias(config, registry, fake_api):
    with pytest.raises(DeployError, match="no earlier model to fall back to"):
        _release(config, fake_api, "3")

    assert aliases(registry, config) == {"champion": "1", "challenger": "2"}


def test_a_canary_keeps_the_champion_until_it_is_promoted(config, registry, fake_api):
    model = config.registry.model_name
    fake_api.seed(OLD, mode="Serverless", version=ServedVersion(model, "1"))

    _release(config, fake_api, "2", canary_percent=10)
    assert aliases(registry, config)["champion"] == "1"
    assert _rollout(registry, config, "2") == "canary at 10 %"
    during = status(config, NAME, NS, api=fake_api.custom_objects_api())
    assert not during.agree and during.canary_percent == 10

    promote(config, NAME, NS, timeout_s=10, api=fake_api.custom_objects_api(), poll_interval_s=0.01)
    assert aliases(registry, config) == {"champion": "2"}
    assert status(config, NAME, NS, api=fake_api.custom_objects_api()).agree


def test_status_shows_both_sides_and_says_when_they_disagree(config, registry, fake_api):
    model = config.registry.model_name
    fake_api.seed(OLD, version=ServedVersion(model, "1"))
    agreeing = status(config, NAME, NS, api=fake_api.custom_objects_api())
    assert agreeing.agree and agreeing.state == "ready"
    text = "\n".join(agreeing.lines())
    assert f"serves      {model} v1" in text and "champion v1, challenger v2" in text
    assert text.endswith("registry and cluster agree")

    registry.set_registered_model_alias(model, "champion", "2")
    disagreeing = status(config, NAME, NS, api=fake_api.custom_objects_api())
    assert not disagreeing.agree
    assert disagreeing.lines()[-1].startswith("registry and cluster DISAGREE")


def test_status_without_an_inference_service(config, registry, fake_api):
    absent = status(config, NAME, NS, api=fake_api.custom_objects_api())
    assert absent.state == "absent" and absent.served is None and not absent.agree
    assert absent.champion == "1" and absent.challenger == "2"


def test_an_unknown_version_fails_before_any_change(config, registry, fake_api):
    fake_api.seed(OLD)
    with pytest.raises(DeployError, match="models:/garbage-classifier/9"):
        _release(config, fake_api, "9")
    assert fake_api.calls("PATCH") == []
