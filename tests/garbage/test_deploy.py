"""The deploy logic against a FAKE Kubernetes API server, through the real ``kubernetes`` client.

``FakeKubernetesAPI`` (``tests/fake_kubernetes.py``) is a FAKE: no Kubernetes API server (nor
kind) can run on the development and CI machines. The deploy component's tests are in
``tests/components/deploy_model``, the ``garbage deploy`` command's in ``tests/cli/test_deploy.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_kubernetes import NAME, NEW, NS, OLD, PREFIX, FakeKubernetesAPI

from garbage.deploy import DeployError, InferenceServiceDeployer, readiness


@pytest.fixture
def fake_api() -> Iterator[FakeKubernetesAPI]:
    with FakeKubernetesAPI() as server:
        yield server


def _deployer(fake: FakeKubernetesAPI) -> InferenceServiceDeployer:
    return InferenceServiceDeployer(fake.custom_objects_api(), poll_interval_s=0.01)


class FakeClock:
    """Monotonic time that advances only when slept."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_first_deploy_creates_the_inference_service_and_waits_for_ready(fake_api):
    fake_api.behaviour[NEW] = "ready"
    result = _deployer(fake_api).deploy(NEW, NAME, NS, timeout_s=10)

    assert result.created and result.storage_uri == NEW and result.previous_storage_uri is None
    assert result.url == f"http://{NAME}.{NS}.example.com"
    (post,) = fake_api.calls("POST")
    assert post["path"] == f"{PREFIX}{NS}/inferenceservices"
    assert post["query"]["fieldManager"] == ["garbage-deploy"]
    model = post["body"]["spec"]["predictor"]["model"]
    assert model == {
        "modelFormat": {"name": "garbage-onnx"},
        "runtime": "garbage-onnx",
        "storageUri": NEW,
        "resources": model["resources"],
    }
    assert set(model["resources"]) == {"requests", "limits"}
    # one lagging read (controller not caught up), then Ready
    assert len(fake_api.calls("GET")) >= 3


def test_update_patches_only_the_storage_uri_with_a_merge_patch(fake_api):
    fake_api.seed(OLD)
    fake_api.behaviour[NEW] = "ready"
    result = _deployer(fake_api).deploy(NEW, NAME, NS, timeout_s=10)

    assert not result.created and result.previous_storage_uri == OLD
    (patch,) = fake_api.calls("PATCH")
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["body"]["spec"] == {
        "predictor": {"canaryTrafficPercent": None, "model": {"storageUri": NEW}}
    }
    stored = fake_api.objects[(NS, NAME)]
    assert stored["spec"]["predictor"]["model"]["storageUri"] == NEW
    assert stored["spec"]["predictor"]["model"]["runtime"] == "garbage-onnx"  # untouched
    assert stored["metadata"]["generation"] == 2


def test_failed_model_is_rolled_back_and_the_error_says_so(fake_api):
    fake_api.seed(OLD)
    fake_api.behaviour[NEW] = "fail"
    with pytest.raises(
        DeployError, match="Rolled back to s3://mlflow/artifacts/1/models/m-old"
    ) as e:
        _deployer(fake_api).deploy(NEW, NAME, NS, timeout_s=10)

    assert "BlockedByFailedLoad" in str(e.value) and "no model.onnx" in str(e.value)
    patches = fake_api.calls("PATCH")
    assert [p["body"]["spec"]["predictor"]["model"]["storageUri"] for p in patches] == [NEW, OLD]
    assert fake_api.objects[(NS, NAME)]["spec"]["predictor"]["model"]["storageUri"] == OLD


def test_timeout_rolls_back_and_restores_the_previous_canary_setting(fake_api):
    seeded = fake_api.seed(OLD, mode="Serverless")
    seeded["spec"]["predictor"]["canaryTrafficPercent"] = 20
    fake_api.behaviour[NEW] = "never"
    clock = FakeClock()
    deployer = InferenceServiceDeployer(
        fake_api.custom_objects_api(), poll_interval_s=5, clock=clock, sleep=clock.sleep
    )
    with pytest.raises(DeployError, match=r"not Ready after 30 s .*Rolled back"):
        deployer.deploy(NEW, NAME, NS, canary_percent=10, timeout_s=30)

    rollback = fake_api.calls("PATCH")[-1]["body"]["spec"]["predictor"]
    assert rollback == {"canaryTrafficPercent": 20, "model": {"storageUri": OLD}}
    assert clock.now >= 30


def test_canary_in_serverless_mode_sets_the_traffic_split(fake_api):
    fake_api.seed(OLD, mode="Serverless")
    fake_api.behaviour[NEW] = "ready"
    result = _deployer(fake_api).deploy(NEW, NAME, NS, canary_percent=10, timeout_s=10)

    assert result.canary_percent == 10
    (patch,) = fake_api.calls("PATCH")
    assert patch["body"]["spec"]["predictor"]["canaryTrafficPercent"] == 10

    promoted = _deployer(fake_api).promote(NAME, NS, timeout_s=10)
    assert fake_api.calls("PATCH")[-1]["body"] == {
        "spec": {"predictor": {"canaryTrafficPercent": None}}
    }
    assert "canaryTrafficPercent" not in fake_api.objects[(NS, NAME)]["spec"]["predictor"]
    assert promoted.storage_uri == NEW


def test_canary_in_standard_mode_is_refused_before_any_change(fake_api):
    fake_api.seed(OLD, mode="Standard")
    with pytest.raises(DeployError, match="canary needs KServe's Serverless"):
        _deployer(fake_api).deploy(NEW, NAME, NS, canary_percent=10, timeout_s=10)
    assert fake_api.calls("PATCH") == [] and fake_api.calls("POST") == []


def test_same_model_already_ready_changes_nothing(fake_api):
    fake_api.seed(OLD)
    result = _deployer(fake_api).deploy(OLD, NAME, NS, timeout_s=10)
    assert result.storage_uri == OLD and fake_api.calls("PATCH") == []


def test_forbidden_answers_explain_the_missing_rbac(fake_api):
    fake_api.seed(OLD)
    fake_api.forbidden.add("PATCH")
    with pytest.raises(DeployError, match=r"HTTP 403.*RBAC"):
        _deployer(fake_api).deploy(NEW, NAME, NS, timeout_s=10)


def test_first_deploy_that_fails_has_nothing_to_fall_back_to(fake_api):
    fake_api.behaviour[NEW] = "fail"
    with pytest.raises(DeployError, match="no earlier model to fall back to"):
        _deployer(fake_api).deploy(NEW, NAME, NS, timeout_s=10)


@pytest.mark.parametrize(
    "uri",
    ["/tmp/model", "file:///tmp/model", "models:/garbage-classifier@champion", "ftp://host/model"],
)
def test_storage_uri_that_kserve_cannot_download_is_rejected(fake_api, uri):
    with pytest.raises(DeployError, match="not one KServe can download"):
        _deployer(fake_api).deploy(uri, NAME, NS)
    assert fake_api.requests == []


@pytest.mark.parametrize("percent", [0, 101, -5])
def test_bad_canary_percentage_is_rejected_without_requests(fake_api, percent):
    with pytest.raises(DeployError, match="between 1 and 100"):
        _deployer(fake_api).deploy(NEW, NAME, NS, canary_percent=percent)
    assert fake_api.requests == []


def test_readiness_waits_for_the_controller_to_see_the_latest_generation():
    isvc = {
        "metadata": {"generation": 3},
        "status": {"observedGeneration": 2, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert readiness(isvc)[0] == "pending"
    isvc["status"]["observedGeneration"] = 3
    assert readiness(isvc) == ("ready", "Ready")
    isvc["status"]["components"] = {
        "predictor": {"latestCreatedRevision": "p-00004", "latestReadyRevision": "p-00003"}
    }
    assert readiness(isvc)[0] == "pending"


def test_rollback_that_fails_too_says_how_to_restore(fake_api):
    fake_api.seed(OLD)
    fake_api.behaviour[NEW] = "fail"

    class PatchOnce:
        """Forward to the real client, but make the second PATCH (the rollback) fail."""

        def __init__(self, api):
            self.api, self.patches = api, 0

        def __getattr__(self, name):
            return getattr(self.api, name)

        def patch_namespaced_custom_object(self, *args, **kwargs):
            self.patches += 1
            if self.patches == 2:
                fake_api.forbidden.add("PATCH")
            return self.api.patch_namespaced_custom_object(*args, **kwargs)

    deployer = InferenceServiceDeployer(
        PatchOnce(fake_api.custom_objects_api()), poll_interval_s=0.01
    )
    with pytest.raises(
        DeployError,
        match=f"rolling back to {OLD} failed too: .*HTTP 403.*garbage deploy --model-uri {OLD}",
    ):
        deployer.deploy(NEW, NAME, NS, timeout_s=10)
