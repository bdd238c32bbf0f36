"""``deploy_model`` against a FAKE Kubernetes API server, credentials from KUBECONFIG as in a pod,
and a real MLflow registry (SQLite) whose versions point at ``s3://`` sources.

``FakeKubernetesAPI`` (``tests/fake_kubernetes.py``) is a FAKE: no Kubernetes API server can run
on the development and CI machines.
"""

from __future__ import annotations

import pytest
from fake_kubernetes import NAME, NEW, NS, OLD, FakeKubernetesAPI
from support import aliases, register_sources

from components.deploy_model import deploy_model
from garbage.core.config import Config
from garbage.core.names import MODEL_NAME
from garbage.deploy import (
    ARTIFACTS_DESTINATION,
    DEFAULT_NAMESPACE,
    MODEL_VERSION_ANNOTATION,
    DeployError,
    ServedVersion,
)

#: What the pipeline passes (pipelines/training.py).
TARGET = {
    "name": MODEL_NAME,
    "namespace": DEFAULT_NAMESPACE,
    "artifacts_destination": ARTIFACTS_DESTINATION,
}


def test_kfp_deploy_step_deploys_only_a_promoted_model(
    kube: FakeKubernetesAPI, smoke_config: Config
) -> None:
    """The KFP component's function, run as the pod runs it (credentials from KUBECONFIG)."""
    from components.image import COMPONENTS_IMAGE

    assert deploy_model.component_spec.implementation.container.image == COMPONENTS_IMAGE
    registry = register_sources(smoke_config, [OLD, NEW], champion="1", challenger="2")
    kube.seed(OLD, version=ServedVersion(MODEL_NAME, "1"))
    kube.behaviour[NEW] = "ready"
    config_json = smoke_config.model_dump_json()

    assert (
        deploy_model.python_func(config_json=config_json, version="2", promoted=False, **TARGET)
        == ""
    )
    assert kube.requests == []
    assert (
        deploy_model.python_func(
            config_json=config_json, version="2", promoted=True, timeout_s=30, **TARGET
        )
        == NEW
    )
    served = kube.objects[(NS, NAME)]
    assert served["spec"]["predictor"]["model"]["storageUri"] == NEW
    assert served["metadata"]["annotations"][MODEL_VERSION_ANNOTATION] == "2"
    assert aliases(registry, smoke_config) == {"champion": "2"}
    # canary_percent 0 (the default) is a full rollout: no traffic split
    (patch,) = kube.calls("PATCH")
    assert patch["body"]["spec"]["predictor"]["canaryTrafficPercent"] is None


def test_a_model_that_fails_to_load_fails_the_step_and_the_champion_stays(
    kube: FakeKubernetesAPI, smoke_config: Config
) -> None:
    registry = register_sources(smoke_config, [OLD, NEW], champion="1", challenger="2")
    kube.seed(OLD, version=ServedVersion(MODEL_NAME, "1"))
    kube.behaviour[NEW] = "fail"
    with pytest.raises(DeployError, match=f"Rolled back to {OLD}"):
        deploy_model.python_func(
            config_json=smoke_config.model_dump_json(),
            version="2",
            promoted=True,
            timeout_s=30,
            **TARGET,
        )
    assert kube.objects[(NS, NAME)]["spec"]["predictor"]["model"]["storageUri"] == OLD
    assert aliases(registry, smoke_config) == {"champion": "1", "challenger": "2"}


def test_a_version_stored_outside_object_storage_is_refused_before_any_request(
    kube: FakeKubernetesAPI, smoke_config: Config, tmp_path
) -> None:
    register_sources(smoke_config, [str(tmp_path)])
    with pytest.raises(DeployError, match="not one KServe can download"):
        deploy_model.python_func(
            config_json=smoke_config.model_dump_json(), version="1", promoted=True, **TARGET
        )
    assert kube.requests == []
