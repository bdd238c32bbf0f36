"""Every kustomize tree builds, and every object in it is valid.

Core objects validate strictly (unknown fields are errors) against the Kubernetes OpenAPI schema
that ``kubernetes-validate`` ships for the kind node version; KServe custom resources against the
KServe SDK's typed models (see ``strict_check`` in conftest.py).
"""

from __future__ import annotations

import copy

import pytest

KUBERNETES_VERSION = "1.33.0"  # the kind node image (kind-config.yaml)
CORE_GROUPS = (
    "v1",
    "apps/v1",
    "batch/v1",
    "networking.k8s.io/v1",
    "rbac.authorization.k8s.io/v1",
    "policy/v1",
    "autoscaling/v2",
    "storage.k8s.io/v1",
)


def _is_core(doc: dict) -> bool:
    return doc.get("apiVersion") in CORE_GROUPS


def test_the_overlays_are_there(rendered):
    assert {"base", "overlays/kind", "overlays/gpu"} <= set(rendered)
    for target, docs in rendered.items():
        assert docs, f"manifests/{target} renders nothing"


def test_core_objects_validate_strictly_against_the_kubernetes_schema(rendered):
    import kubernetes_validate

    problems = []
    for target, docs in rendered.items():
        for doc in filter(_is_core, docs):
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(
                    f"{target}: {doc['kind']}/{doc['metadata'].get('name')}: "
                    f"{e.message} at {'.'.join(map(str, e.path))}"
                )
    assert not problems, "\n".join(problems)


def test_custom_resources_validate_strictly_against_the_kserve_models(rendered, strict_check):
    problems = []
    customs = 0
    for target, docs in rendered.items():
        for doc in docs:
            if not _is_core(doc):
                customs += 1
                problems += [f"{target}: {p}" for p in strict_check(doc)]
    assert customs, "no custom resources rendered (the InferenceService is missing)"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["spec"]["predictor"].__setitem__("minReplica", 1), "unknown field"),
        (
            lambda d: d["spec"]["predictor"]["model"].__setitem__("storageURI", "s3://x"),
            "unknown field",
        ),
        (lambda d: d["spec"]["predictor"].__setitem__("maxReplicas", "two"), "expected int"),
        (
            lambda d: d["spec"]["predictor"]["model"]["resources"].__setitem__("limit", {}),
            "unknown field",
        ),
    ],
)
def test_the_strict_checker_catches_mistakes(rendered, strict_check, mutate, expected):
    isvc = next(d for d in rendered["overlays/gpu"] if d["kind"] == "InferenceService")
    assert strict_check(isvc) == []
    broken = copy.deepcopy(isvc)
    mutate(broken)
    assert any(expected in p for p in strict_check(broken))


def test_the_schema_validation_catches_an_unknown_field(rendered):
    import kubernetes_validate

    deployment = copy.deepcopy(next(d for d in rendered["base"] if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
