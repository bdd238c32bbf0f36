"""``deploy_model`` under kfp.local against a FAKE Kubernetes API server (the task inherits
KUBECONFIG). ``FakeKubernetesAPI`` is a FAKE: no API server can run on these machines."""

import pytest
from fake_kubernetes import NAME, NEW, NS, OLD, FakeKubernetesAPI
from support import aliases, register_sources

from components.deploy_model import deploy_model
from garbage.core.config import Config
from garbage.core.names import MODEL_NAME
from garbage.deploy import ARTIFACTS_DESTINATION, DEFAULT_NAMESPACE


@pytest.mark.integration
def test_deploy_model_runs_under_kfp_local(
    kfp_local, kube: FakeKubernetesAPI, smoke_config: Config
) -> None:
    registry = register_sources(smoke_config, [OLD, NEW], champion="1", challenger="2")
    kube.seed(OLD)
    kube.behaviour[NEW] = "ready"

    task = deploy_model(
        config_json=smoke_config.model_dump_json(),
        version="2",
        promoted=True,
        name=MODEL_NAME,
        namespace=DEFAULT_NAMESPACE,
        artifacts_destination=ARTIFACTS_DESTINATION,
        timeout_s=30,
    )

    assert task.output == NEW
    assert kube.objects[(NS, NAME)]["spec"]["predictor"]["model"]["storageUri"] == NEW
    assert [r["method"] for r in kube.requests if r["method"] != "GET"] == ["PATCH"]
    assert aliases(registry, smoke_config) == {"champion": "2"}
