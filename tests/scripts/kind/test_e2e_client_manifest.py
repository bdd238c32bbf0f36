"""scripts/kind/e2e-client.yaml, the kind e2e's client Job, checked as an API server would.

Rendered the way e2e.sh renders it (its @PLACEHOLDER@s replaced), then validated against the
Kubernetes 1.33 schema in strict mode, checked against Pod Security ``restricted`` (which the
client namespace enforces) and against what the NetworkPolicy and the predictor Service expect.
"""

from __future__ import annotations

import re
import shlex

import kubernetes_validate
import pytest
import yaml
from support import REPO_ROOT

MANIFEST = REPO_ROOT / "scripts/kind/e2e-client.yaml"
E2E = REPO_ROOT / "scripts/kind/e2e.sh"
PREDICTOR = "garbage-classifier-predictor.garbage-serving.svc"


@pytest.fixture(scope="module")
def documents() -> dict[str, dict]:
    text = MANIFEST.read_text()
    placeholders = set(re.findall(r"@[A-Z_]+@", text))
    substituted = set(re.findall(r"\$\{manifest//(@[A-Z_]+@)/", E2E.read_text()))
    assert placeholders == substituted, (
        f"e2e.sh replaces {substituted}, the file has {placeholders}"
    )
    text = text.replace("@JOB_NAME@", "e2e-client-1")
    text = text.replace("@SERVING_IMAGE@", "ghcr.io/garbage-classifier/serving:test")
    return {doc["kind"]: doc for doc in yaml.safe_load_all(text)}


def test_the_objects_are_valid_kubernetes(documents: dict[str, dict]) -> None:
    assert set(documents) == {"Namespace", "Job"}
    for doc in documents.values():
        kubernetes_validate.validate(doc, "1.33.0", strict=True)


def test_the_namespace_is_an_inference_client_under_restricted_pod_security(documents) -> None:
    namespace = documents["Namespace"]
    assert namespace["metadata"]["name"] == documents["Job"]["metadata"]["namespace"]
    labels = namespace["metadata"]["labels"]
    assert labels["garbage-classifier/inference-client"] == "true"
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_pod_passes_restricted_pod_security(documents) -> None:
    pod = documents["Job"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
        assert context["readOnlyRootFilesystem"] is True
        assert {"cpu", "memory"} <= container["resources"]["limits"].keys()


def test_the_client_calls_the_predictor_service_on_both_ports(documents) -> None:
    (container,) = documents["Job"]["spec"]["template"]["spec"]["containers"]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"])
    assert args["rest-url"] == f"http://{PREDICTOR}:80"
    assert args["grpc-target"] == f"{PREDICTOR}:8081"
    assert container["command"][-1] == "/e2e/e2e_client.py"
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/e2e"]
    (volume,) = [
        v
        for v in documents["Job"]["spec"]["template"]["spec"]["volumes"]
        if v["name"] == mount["name"]
    ]
    # e2e.sh creates that ConfigMap from scripts/kind/e2e_client.py
    script = E2E.read_text().replace("\\\n", " ")
    created = [shlex.split(line) for line in script.splitlines() if "create configmap" in line]
    assert len(created) == 1, created
    words = created[0]
    assert words[words.index("configmap") + 1] == volume["configMap"]["name"]
    assert "--from-file=e2e_client.py=scripts/kind/e2e_client.py" in words
