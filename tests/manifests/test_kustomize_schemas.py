"""Every kustomize tree builds, and every object in it is valid.

Core objects validate strictly (unknown fields are errors) against the Kubernetes OpenAPI schema
that ``kubernetes-validate`` ships for the kind node version; custom resources against the
structural schemas of the upstream CRDs that manifests/crds.lock pins (``crd_schemas`` in
conftest.py, ``manifests/crd_schema.py``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from manifests.crd_schema import CrdSchemas

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
KSERVE = "(kserve v0.20.0 CRD)"


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


def test_custom_resources_validate_against_the_pinned_crds(rendered, crd_schemas):
    problems = []
    kinds = set()
    for target, docs in rendered.items():
        for doc in docs:
            if not _is_core(doc):
                kinds.add(doc["kind"])
                problems += [f"{target}: {p}" for p in crd_schemas.problems(doc)]
    assert {"InferenceService", "ServingRuntime", "PrometheusRule", "ServiceMonitor"} <= kinds
    assert not problems, "\n".join(problems)


def test_no_cel_rule_of_a_rendered_kind_goes_unchecked(rendered, crd_schemas):
    kinds = {(d["apiVersion"], d["kind"]) for docs in rendered.values() for d in docs}
    unchecked = {
        kind: crd_schemas.cel_rules(*kind)
        for kind in kinds
        if not _is_core({"apiVersion": kind[0]})
    }
    # The validator does not evaluate CEL: a CRD upgrade that adds rules must be looked at.
    assert not any(unchecked.values()), unchecked


def _isvc(rendered) -> dict:
    return copy.deepcopy(
        next(d for d in rendered["overlays/gpu"] if d["kind"] == "InferenceService")
    )


def _predictor(d: dict) -> dict:
    return d["spec"]["predictor"]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (
            lambda d: _predictor(d).__setitem__("minReplica", 1),
            "InferenceService/garbage-classifier: spec.predictor.minReplica: unknown field "
            + KSERVE,
        ),
        (
            lambda d: _predictor(d)["model"].__setitem__("storageURI", "s3://x"),
            "spec.predictor.model.storageURI: unknown field",
        ),
        (
            lambda d: _predictor(d)["model"]["resources"].__setitem__("limit", {}),
            "spec.predictor.model.resources.limit: unknown field",
        ),
        (lambda d: d["metadata"].__setitem__("lables", {}), "metadata.lables: unknown field"),
        (
            lambda d: _predictor(d).__setitem__("maxReplicas", "two"),
            'spec.predictor.maxReplicas: must be integer, not str "two"',
        ),
        (
            lambda d: d["metadata"]["labels"].__setitem__("replicas", 2),
            "metadata.labels.replicas: must be string",
        ),
        (
            lambda d: _predictor(d)["model"]["resources"]["limits"].__setitem__("cpu", "lots"),
            'spec.predictor.model.resources.limits.cpu: "lots" does not match',
        ),
        (
            lambda d: _predictor(d)["model"]["modelFormat"].pop("name"),
            "spec.predictor.model.modelFormat.name: required field is missing",
        ),
        (
            lambda d: _predictor(d)["logger"].__setitem__("mode", "everything"),
            'spec.predictor.logger.mode: "everything" is not one of ["all", "request", "response"]',
        ),
        (
            lambda d: _predictor(d)["model"].__setitem__(
                "ports", [{"containerPort": 8080}, {"containerPort": 8080, "protocol": "TCP"}]
            ),
            "spec.predictor.model.ports: [1] duplicates an earlier entry's containerPort/protocol",
        ),
        (
            lambda d: d.__setitem__("apiVersion", "serving.kserve.io/v1alpha2"),
            "the kserve v0.20.0 CRD has no version v1alpha2 (served: v1beta1)",
        ),
        (
            lambda d: d.__setitem__("kind", "InferenceServer"),
            "no pinned CRD defines InferenceServer in serving.kserve.io",
        ),
    ],
)
def test_the_crd_validator_catches_mistakes(rendered, crd_schemas, mutate, expected):
    isvc = _isvc(rendered)
    assert crd_schemas.problems(isvc) == []
    mutate(isvc)
    problems = crd_schemas.problems(isvc)
    assert any(expected in p for p in problems), problems


def test_the_crd_validator_accepts_what_the_api_server_accepts(rendered, crd_schemas):
    isvc = _isvc(rendered)
    model = _predictor(isvc)["model"]
    model["resources"]["limits"]["cpu"] = 4  # int-or-string
    model["resources"]["requests"]["cpu"] = "500m"
    _predictor(isvc)["tolerations"][0]["tolerationSeconds"] = None  # a null the server drops
    isvc["metadata"]["creationTimestamp"] = None  # as kubectl writes it
    isvc["status"] = {"url": "http://x", "anything": {"the": "status keeps unknown fields"}}
    assert crd_schemas.problems(isvc) == []


def test_the_schema_validation_catches_an_unknown_field(rendered):
    import kubernetes_validate

    deployment = copy.deepcopy(next(d for d in rendered["base"] if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# -- the validator's semantics, on a small CRD written here (runs without the upstream CRDs) -------
_WIDGET_SCHEMA = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["size"],
            "properties": {
                "size": {
                    "x-kubernetes-int-or-string": True,
                    "anyOf": [{"type": "integer"}, {"type": "string"}],
                },
                "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
                "note": {"type": "string", "nullable": True},
                "when": {"type": "string", "format": "date-time"},
                "env": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "properties": {"known": {"type": "integer"}},
                },
                "opaque": {"type": "object"},
                "tags": {
                    "type": "array",
                    "items": {"type": "string"},
                    "x-kubernetes-list-type": "set",
                },
                "ports": {
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["port", "protocol"],
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "integer"},
                            "protocol": {"type": "string", "default": "TCP"},
                        },
                    },
                },
                "template": {
                    "type": "object",
                    "x-kubernetes-embedded-resource": True,
                    "x-kubernetes-preserve-unknown-fields": True,
                },
            },
        },
    },
}


@pytest.fixture
def widgets(tmp_path: Path) -> CrdSchemas:
    def crd(api: str, versions: dict) -> dict:
        return {
            "apiVersion": f"apiextensions.k8s.io/{api}",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{versions['kind'].lower()}s.example.com"},
            "spec": {"group": "example.com", "names": {"kind": versions.pop("kind")}, **versions},
        }

    folder = tmp_path / "widgets-v1.2.3"
    folder.mkdir()
    widget = crd(
        "v1",
        {
            "kind": "Widget",
            "versions": [
                {"name": "v1", "served": True, "schema": {"openAPIV3Schema": _WIDGET_SCHEMA}},
                {"name": "v0", "served": False, "schema": {"openAPIV3Schema": _WIDGET_SCHEMA}},
            ],
        },
    )
    legacy = crd("v1beta1", {"kind": "Gadget", "version": "v1"})
    (folder / "crds.yaml").write_text(yaml.safe_dump_all([widget, legacy]))
    return CrdSchemas.load(tmp_path)


def _widget(**spec) -> dict:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": "ns", "labels": {"a": "b"}},
        "spec": {"size": 1, **spec},
    }


@pytest.mark.parametrize(
    "spec",
    [
        {"size": "2Gi"},
        {"note": None},
        {"mode": None},  # defaulted
        {"when": "2024-05-01T10:00:00Z"},
        {"env": {"A": "1"}},
        {"free": {"known": 1, "anything": {"goes": [1]}}},
        {"tags": ["a", "b"]},
        {"ports": [{"port": 80}, {"port": 80, "protocol": "UDP"}]},
        {"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "x": 1}},
    ],
)
def test_the_validator_accepts_valid_widgets(widgets, spec):
    assert widgets.problems(_widget(**spec)) == []


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"size": 1.5}, "spec.size: 1.5 matches none of the allowed forms"),
        ({"size": None}, "spec.size: required field is missing"),
        ({"mode": "medium"}, 'spec.mode: "medium" is not one of ["fast", "slow"]'),
        ({"when": "yesterday"}, "spec.when: 'yesterday' is not a 'date-time'"),
        ({"env": {"A": 1}}, "spec.env.A: must be string, not int 1"),
        ({"free": {"known": "one"}}, "spec.free.known: must be integer"),
        ({"opaque": {"x": 1}}, "spec.opaque.x: unknown field"),
        ({"colour": "red"}, "spec.colour: unknown field (widgets v1.2.3 CRD)"),
        ({"tags": ["a", "a"]}, "spec.tags: [1] duplicates an earlier entry's value"),
        ({"ports": [{"port": 80}, {"port": 80, "protocol": "TCP"}]}, "spec.ports: [1] duplicates"),
        ({"template": {"kind": "Pod"}}, "spec.template.apiVersion: required field is missing"),
        (
            {"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"nme": "p"}}},
            "spec.template.metadata.nme: unknown field",
        ),
    ],
)
def test_the_validator_reports_invalid_widgets(widgets, spec, expected):
    problems = widgets.problems(_widget(**spec))
    assert any(p.startswith("Widget/w: ") and expected in p for p in problems), problems


def test_the_validator_checks_metadata_and_versions(widgets):
    bad_name = _widget()
    bad_name["metadata"]["name"] = "Not_A_Name"
    assert any("metadata.name: " in p for p in widgets.problems(bad_name))
    for api, kind, expected in [
        ("example.com/v0", "Widget", "the widgets v1.2.3 CRD does not serve v0 (served: v1)"),
        ("example.com/v2", "Widget", "has no version v2"),
        ("example.com/v1", "Gizmo", "no pinned CRD defines Gizmo in example.com"),
        ("example.com/v1", "Gadget", "has no schema for v1 (an apiextensions.k8s.io/v1beta1 CRD"),
        ("v1", "ConfigMap", "name no custom resource"),
    ]:
        obj = {**_widget(), "apiVersion": api, "kind": kind}
        [problem] = widgets.problems(obj)
        assert expected in problem, problem
