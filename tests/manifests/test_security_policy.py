"""The rendered manifests follow the project's security and operations rules.

Every pod: non-root, no privilege escalation, all capabilities dropped, seccomp RuntimeDefault,
read-only root filesystem, CPU and memory requests and limits on every container. Namespaces
enforce Pod Security "restricted" and deny network traffic by default. No Secret in the tree.
RBAC grants no wildcard.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

PROJECT_NAMESPACES = ("garbage-serving", "garbage-mlflow", "garbage-monitoring")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet")
SECRETISH = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY)", re.IGNORECASE)


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """``(where, pod-level securityContext, containers)`` for each pod template in ``doc``."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    spec = doc.get("spec") or {}
    if kind in WORKLOADS:
        pod = spec["template"]["spec"]
        yield (
            f"{kind}/{name}",
            pod.get("securityContext") or {},
            pod.get("initContainers", []) + pod["containers"],
        )
    elif kind == "CronJob":
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        yield (
            f"{kind}/{name}",
            pod.get("securityContext") or {},
            pod.get("initContainers", []) + pod["containers"],
        )
    elif kind == "Pod":
        yield f"{kind}/{name}", spec.get("securityContext") or {}, spec["containers"]
    elif kind == "InferenceService":
        predictor = spec["predictor"]
        containers = [predictor["model"], *predictor.get("containers", [])]
        yield f"{kind}/{name}", predictor.get("securityContext") or {}, containers
    elif kind in ("ServingRuntime", "ClusterServingRuntime"):
        # The runtime's containers run inside the InferenceService's pod (its pod context).
        yield (
            f"{kind}/{name}",
            {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            spec["containers"],
        )


def _all(rendered):
    for target, docs in rendered.items():
        for doc in docs:
            yield target, doc


def test_every_container_is_locked_down(rendered):
    problems = []
    seen = 0
    for target, doc in _all(rendered):
        for where, pod, containers in pod_specs(doc):
            for c in containers:
                seen += 1
                ctx = c.get("securityContext") or {}
                label = f"{target}: {where} container {c.get('name', 'model')}"
                if not (ctx.get("runAsNonRoot", pod.get("runAsNonRoot"))):
                    problems.append(f"{label}: runAsNonRoot is not true")
                if ctx.get("runAsUser", pod.get("runAsUser")) == 0:
                    problems.append(f"{label}: runs as uid 0")
                if ctx.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{label}: allowPrivilegeEscalation is not false")
                if ctx.get("privileged"):
                    problems.append(f"{label}: privileged")
                if "ALL" not in ((ctx.get("capabilities") or {}).get("drop") or []):
                    problems.append(f"{label}: capabilities are not all dropped")
                if (ctx.get("capabilities") or {}).get("add"):
                    problems.append(f"{label}: adds capabilities")
                seccomp = (ctx.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
                if seccomp != "RuntimeDefault":
                    problems.append(f"{label}: seccomp profile is {seccomp}, not RuntimeDefault")
                if ctx.get("readOnlyRootFilesystem") is not True:
                    problems.append(f"{label}: root filesystem is writable")
                resources = c.get("resources") or {}
                for kind in ("requests", "limits"):
                    for res in ("cpu", "memory"):
                        if res not in (resources.get(kind) or {}):
                            problems.append(f"{label}: no {res} {kind}")
    assert seen >= 6
    assert not problems, "\n".join(problems)


def test_project_namespaces_enforce_restricted_pod_security(rendered):
    for target, docs in rendered.items():
        namespaces = [d for d in docs if d["kind"] == "Namespace"]
        if target.startswith(("base", "overlays")):
            assert {"garbage-serving", "garbage-mlflow"} <= {
                n["metadata"]["name"] for n in namespaces
            }
        for ns in namespaces:
            labels = ns["metadata"].get("labels") or {}
            assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", (
                f"{target}: namespace {ns['metadata']['name']} does not enforce restricted"
            )


def test_every_project_namespace_denies_traffic_by_default(rendered):
    for target, docs in rendered.items():
        namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
        for namespace in namespaces & set(PROJECT_NAMESPACES):
            deny = [
                d
                for d in docs
                if d["kind"] == "NetworkPolicy"
                and d["metadata"].get("namespace") == namespace
                and d["spec"].get("podSelector") == {}
                and set(d["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
                and not d["spec"].get("ingress")
                and not d["spec"].get("egress")
            ]
            assert deny, f"{target}: no default-deny NetworkPolicy in {namespace}"


def test_every_namespaced_object_lives_in_a_known_namespace(rendered):
    cluster_scoped = {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterServingRuntime",
        "StorageClass",
        "PriorityClass",
    }
    allowed = set(PROJECT_NAMESPACES) | {"kubeflow"}
    for target, doc in _all(rendered):
        if doc["kind"] in cluster_scoped:
            continue
        namespace = doc["metadata"].get("namespace")
        assert namespace in allowed, (
            f"{target}: {doc['kind']}/{doc['metadata']['name']} in {namespace}"
        )


def test_no_secret_values_in_the_repository(rendered):
    for target, doc in _all(rendered):
        assert doc["kind"] != "Secret", f"{target}: Secret {doc['metadata']['name']} is in the tree"
        for _, _, containers in pod_specs(doc):
            for c in containers:
                for env in c.get("env") or []:
                    if SECRETISH.search(env["name"]) and not env["name"].endswith("_FILE"):
                        assert "value" not in env, (
                            f"{target}: {doc['metadata']['name']} sets {env['name']} in plain text"
                        )


def test_rbac_grants_no_wildcards_and_no_cluster_roles(rendered):
    for target, doc in _all(rendered):
        assert doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"), (
            f"{target}: {doc['kind']}/{doc['metadata']['name']}: cluster-wide RBAC is not needed"
        )
        if doc["kind"] == "Role":
            for rule in doc["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(field, []), (
                        f"{target}: Role {doc['metadata']['name']}"
                    )
                assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(
                    rule["verbs"]
                ), f"{target}: Role {doc['metadata']['name']} {rule['verbs']}"


@pytest.mark.parametrize("target", ["overlays/kind", "overlays/gpu"])
def test_service_accounts_do_not_mount_tokens_unless_needed(rendered, target):
    for doc in rendered[target]:
        for where, _, _ in pod_specs(doc):
            if doc["kind"] in WORKLOADS:
                pod = doc["spec"]["template"]["spec"]
                assert pod.get("automountServiceAccountToken") is False, f"{target}: {where}"
            elif doc["kind"] == "CronJob":
                pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
                assert pod.get("automountServiceAccountToken") is False, f"{target}: {where}"


@pytest.mark.parametrize("target", ["overlays/kind", "overlays/gpu"])
def test_cronjobs_never_overlap(rendered, target):
    """A scheduled job that is still running when the next is due is not started twice."""
    cronjobs = [d for d in rendered[target] if d["kind"] == "CronJob"]
    assert cronjobs
    for doc in cronjobs:
        assert doc["spec"].get("concurrencyPolicy") == "Forbid", doc["metadata"]["name"]
