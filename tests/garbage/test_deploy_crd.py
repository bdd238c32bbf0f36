"""What ``garbage deploy`` sends is what the pinned InferenceService CRD (KServe v0.20.0) accepts.

A first deploy creates ``build_inference_service(...)``; a deploy, a rollback and a promote send
JSON merge patches, which the API server applies to the stored object (RFC 7386) and validates as
a whole. The deployer runs against ``FakeKubernetesAPI`` (``tests/fake_kubernetes.py``), a FAKE
API server (none can run here) that records the bodies; each patch is applied in turn to the
InferenceService that an overlay renders, and every result is checked against the CRD's
structural schema (``manifests.crd_schema``; unknown fields fail).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from fake_kubernetes import NAME, NEW, NS, FakeKubernetesAPI, merge_patch
from manifests.conftest import render
from manifests.crd_schema import CrdSchemas, pinned_crds

from garbage.deploy import (
    DEPLOYMENT_MODE_ANNOTATION,
    SERVERLESS_MODES,
    DeployError,
    InferenceServiceDeployer,
    ServedVersion,
    build_inference_service,
)

CANARY = "s3://mlflow/artifacts/1/models/m-canary/artifacts"
BROKEN = "s3://mlflow/artifacts/1/models/m-broken/artifacts"
VERSION = ServedVersion("garbage-classifier", "7")


@pytest.fixture(scope="module")
def crds() -> CrdSchemas:
    return pinned_crds()


@pytest.fixture
def fake_api() -> Iterator[FakeKubernetesAPI]:
    with FakeKubernetesAPI() as server:
        yield server


def _deployer(fake: FakeKubernetesAPI) -> InferenceServiceDeployer:
    return InferenceServiceDeployer(fake.custom_objects_api(), poll_interval_s=0.01)


@pytest.mark.parametrize("canary_percent", [None, 10])
@pytest.mark.parametrize("version", [None, VERSION])
def test_the_inference_service_a_first_deploy_creates_fits_the_crd(crds, canary_percent, version):
    body = build_inference_service(NAME, NS, NEW, canary_percent=canary_percent, version=version)
    assert crds.problems(body) == []


def test_the_create_request_body_fits_the_crd(crds, fake_api):
    fake_api.behaviour[NEW] = "ready"
    _deployer(fake_api).deploy(NEW, NAME, NS, timeout_s=10, version=VERSION)
    [post] = fake_api.calls("POST")
    assert post["body"]["spec"]["predictor"]["model"]["storageUri"] == NEW
    assert crds.problems(post["body"]) == []


@pytest.mark.parametrize("target", ["base", "overlays/kind", "overlays/gpu"])
def test_every_patch_applied_to_the_rendered_inference_service_fits_the_crd(crds, fake_api, target):
    [rendered] = [d for d in render(target) if d["kind"] == "InferenceService"]
    assert (rendered["metadata"]["namespace"], rendered["metadata"]["name"]) == (NS, NAME)
    assert crds.problems(rendered) == []
    stored = copy.deepcopy(rendered)
    stored["metadata"].update(generation=1, resourceVersion="1")
    fake_api.objects[(NS, NAME)] = stored
    current = rendered["spec"]["predictor"]["model"]["storageUri"]
    fake_api.behaviour.update({current: "ready", NEW: "ready", CANARY: "ready", BROKEN: "fail"})

    deployer = _deployer(fake_api)
    deployer.deploy(NEW, NAME, NS, timeout_s=10, version=VERSION)
    mode = rendered["metadata"].get("annotations", {}).get(DEPLOYMENT_MODE_ANNOTATION)
    if mode in SERVERLESS_MODES:
        deployer.deploy(CANARY, NAME, NS, canary_percent=10, timeout_s=10)
        deployer.promote(NAME, NS, timeout_s=10)
    with pytest.raises(DeployError, match="Rolled back"):
        deployer.deploy(BROKEN, NAME, NS, timeout_s=10)

    patches = [p["body"] for p in fake_api.calls("PATCH")]
    assert len(patches) == (5 if mode in SERVERLESS_MODES else 3)  # the rollback is one too
    state: dict[str, Any] = rendered
    for number, patch in enumerate(patches, 1):
        state = merge_patch(state, patch)
        problems = crds.problems(state)
        assert problems == [], f"{target}, patch {number} {patch}: {problems}"
    served = CANARY if mode in SERVERLESS_MODES else NEW
    assert state["spec"]["predictor"]["model"]["storageUri"] == served  # rolled back to it


def test_a_patch_with_a_field_the_crd_lacks_would_be_caught(crds):
    [rendered] = [d for d in render("overlays/gpu") if d["kind"] == "InferenceService"]
    patched = merge_patch(rendered, {"spec": {"predictor": {"canaryTraficPercent": 10}}})
    assert crds.problems(patched) == [
        "InferenceService/garbage-classifier: spec.predictor.canaryTraficPercent: unknown field "
        "(kserve v0.20.0 CRD)"
    ]
