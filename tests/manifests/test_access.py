"""Who may reach what, read which credential and do what, at least privilege.

No API server, CNI, MinIO or cluster runs here, so the rules are checked by construction, on the
rendered overlays, against needs written down once with their reasons:

* network: :func:`access_needs` (``manifests/cluster_model.py``) lists every flow the system
  needs. Every need is admitted at both ends, every other pair of pods is refused on every port
  its target listens on, and every peer and port of every NetworkPolicy rule is used by a need
  (the evaluator of ``network_policy.py`` stands in for the CNI);
* credentials: which pods may read which Secret (:data:`SECRET_READERS`): MinIO's root only MinIO
  and its bucket Job, each client only its own;
* RBAC: every (subject, namespace, group, resource, name, verb) the Roles grant, against
  :data:`RBAC_NEEDS`;
* MinIO: what each per-purpose user's policy (``manifests/base/mlflow/minio-policies``) lets it
  do, with a small evaluator of the S3 policy language (Allow statements, wildcards, StringLike);
* the real servers, where they are installed (``integration``): MLflow's basic-auth app with the
  manifests' config and users Job refuses anonymous requests and writes by the reader, and the
  Pushgateway with a web config as ``scripts/kind/secrets.sh`` makes refuses unauthenticated
  pushes and scrapes.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests.cluster_model import (
    CALLER_PORTS,
    OVERLAY_MODES,
    PROJECT_WORKLOADS,
    Need,
    access_needs,
    access_pods,
    one_doc,
    pod_template,
    predictor_listeners,
    serving_objects,
)
from manifests.network_policy import (
    Pod,
    connection_allowed,
    peer_matches,
    policy_types,
    port_matches,
    selector_matches,
)

REPO = Path(__file__).resolve().parents[2]
MLFLOW_DIR = REPO / "manifests" / "base" / "mlflow"
OTHER_PORTS = (80, 443, 8080, 9090)
"""Ports tried on pods outside the project, which listen on ports the tests do not know."""


@pytest.fixture(params=sorted(OVERLAY_MODES))
def overlay(request, rendered) -> tuple[str, list[dict[str, Any]]]:
    return request.param, rendered[request.param]


# -- network ----------------------------------------------------------------------------------


def listening_ports(docs: list[dict[str, Any]], name: str, pod: Pod) -> list[tuple[int, str]]:
    """(port, protocol) that the pod ``name`` listens on: the predictor's by KServe's rules, a
    project workload's declared container ports, DNS's 53, the known ports of a pod outside the
    project (:data:`CALLER_PORTS`) with :data:`OTHER_PORTS`; other pods :data:`OTHER_PORTS`."""
    if name == "predictor":
        return [(listener.port, "TCP") for listener in predictor_listeners(*serving_objects(docs))]
    if name == "kube-dns":
        return [(53, "UDP"), (53, "TCP")]
    if name in CALLER_PORTS:
        return [*CALLER_PORTS[name], *((port, "TCP") for port in OTHER_PORTS)]
    if name in PROJECT_WORKLOADS:
        return [(port, "TCP") for port in pod.ports.values()]
    return [(port, "TCP") for port in OTHER_PORTS]


def test_every_need_names_a_pod_and_a_port_it_listens_on(overlay) -> None:
    target, docs = overlay
    pods = access_pods(docs)
    problems = []
    for need in access_needs(docs):
        for end in (need.caller, need.target):
            if end not in pods:
                problems.append(f"{need}: no pod named {end!r}")
        if need.target in pods:
            listening = listening_ports(docs, need.target, pods[need.target])
            if (need.port, need.protocol) not in listening:
                problems.append(f"{need}: {need.target} listens on {listening}")
    assert not problems, f"{target}:\n" + "\n".join(problems)


def test_every_need_is_admitted_at_both_ends(overlay) -> None:
    target, docs = overlay
    pods = access_pods(docs)
    refused = [
        f"{n.caller} -> {n.target}:{n.port}/{n.protocol} ({n.why})"
        for n in access_needs(docs)
        if not connection_allowed(docs, pods[n.caller], pods[n.target], n.port, n.protocol)
    ]
    assert not refused, f"{target}: the NetworkPolicies refuse what is needed:\n" + "\n".join(
        refused
    )


def unneeded_flows(docs: list[dict[str, Any]]) -> list[str]:
    """Every (caller, target, port) the policies admit between the modelled pods that no need
    asks for. Flows between two pods outside the project are not the project's policies' to
    decide (they count as admitted) and are left out."""
    pods = access_pods(docs)
    project = {"predictor", *PROJECT_WORKLOADS}
    needed = {(n.caller, n.target, n.port, n.protocol) for n in access_needs(docs)}
    found = []
    for target_name, target in pods.items():
        for port, protocol in listening_ports(docs, target_name, target):
            for caller_name, caller in pods.items():
                if caller_name == target_name or not {caller_name, target_name} & project:
                    continue
                if (caller_name, target_name, port, protocol) in needed:
                    continue
                if connection_allowed(docs, caller, target, port, protocol):
                    found.append(f"{caller_name} -> {target_name}:{port}/{protocol}")
    return found


def test_nobody_else_reaches_anything(overlay) -> None:
    target, docs = overlay
    admitted = unneeded_flows(docs)
    assert not admitted, f"{target}: admitted, and no need asks for it:\n" + "\n".join(admitted)


def _serves(
    need: Need,
    pods: Mapping[str, Pod],
    policy: Mapping[str, Any],
    direction: str,
    peers: list[Any],
    ports: list[Any],
) -> bool:
    """Whether ``need`` flows through a rule of ``policy`` with these peers and ports."""
    own, other = (
        (need.target, need.caller) if direction == "Ingress" else (need.caller, need.target)
    )
    namespace = policy["metadata"]["namespace"]
    if pods[own].namespace != namespace:
        return False
    if not selector_matches(policy["spec"].get("podSelector") or {}, pods[own].labels):
        return False
    return any(peer_matches(p, namespace, pods[other]) for p in peers) and any(
        port_matches(q, need.port, need.protocol, pods[need.target]) for q in ports
    )


def unjustified_rules(docs: list[dict[str, Any]]) -> list[str]:
    """Every peer and every port of every NetworkPolicy rule that no need uses, and every rule
    that leaves its peers or ports open (it would admit whatever comes)."""
    pods = access_pods(docs)
    needs = access_needs(docs)
    problems = []
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        meta = policy["metadata"]
        for direction, rules_key, peers_key in (
            ("Ingress", "ingress", "from"),
            ("Egress", "egress", "to"),
        ):
            if direction not in policy_types(policy):
                continue
            for i, rule in enumerate(policy["spec"].get(rules_key) or []):
                rule_at = f"{meta['namespace']}/{meta['name']} {rules_key}[{i}]"
                peers, ports = rule.get(peers_key) or [], rule.get("ports") or []
                if not peers or not ports:
                    problems.append(f"{rule_at}: names no {peers_key if not peers else 'ports'}")
                    continue
                for j, peer in enumerate(peers):
                    if not any(_serves(n, pods, policy, direction, [peer], ports) for n in needs):
                        problems.append(f"{rule_at}.{peers_key}[{j}] {peer}: no need uses it")
                for j, port in enumerate(ports):
                    if not any(_serves(n, pods, policy, direction, peers, [port]) for n in needs):
                        problems.append(f"{rule_at}.ports[{j}] {port}: no need uses it")
    return problems


def test_every_policy_rule_is_justified_by_a_named_need(overlay) -> None:
    target, docs = overlay
    problems = unjustified_rules(docs)
    assert not problems, f"{target}:\n" + "\n".join(problems)


def _policy(docs: list[dict[str, Any]], namespace: str, name: str) -> dict[str, Any]:
    [found] = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy"
        and (d["metadata"]["namespace"], d["metadata"]["name"]) == (namespace, name)
    ]
    return found


def test_the_checks_catch_a_peer_or_port_too_many(rendered) -> None:
    docs = copy.deepcopy(rendered["overlays/kind"])
    clients = _policy(docs, "garbage-mlflow", "mlflow-clients")["spec"]["ingress"][0]
    extra = len(clients["from"])
    clients["from"].append({"podSelector": {"matchLabels": {"app": "debug"}}})
    clients["from"].append({"namespaceSelector": {}})  # every pod: needed callers among them
    clients["ports"].append({"protocol": "TCP", "port": 5001})
    problems = unjustified_rules(docs)
    assert (
        f"garbage-mlflow/mlflow-clients ingress[0].from[{extra}] {{'podSelector': {{'matchLabels': "
        "{'app': 'debug'}}}: no need uses it" in problems
    ), problems
    assert any("mlflow-clients ingress[0].ports[1]" in p for p in problems), problems
    admitted = unneeded_flows(docs)
    for flow in ("kfp api server -> mlflow:5000/TCP", "unlabelled namespace -> mlflow:5000/TCP"):
        assert flow in admitted, admitted

    gateway = _policy(docs, "garbage-monitoring", "pushgateway-ingress")["spec"]["ingress"][0]
    gateway.pop("ports")
    assert "garbage-monitoring/pushgateway-ingress ingress[0]: names no ports" in (
        unjustified_rules(docs)
    )


def test_the_checks_catch_a_need_refused(rendered) -> None:
    docs = copy.deepcopy(rendered["overlays/gpu"])
    egress = _policy(docs, "garbage-monitoring", "drift-egress")["spec"]["egress"]
    egress[:] = [rule for rule in egress if rule["ports"][0]["port"] != 9091]
    pods = access_pods(docs)
    assert not connection_allowed(docs, pods["drift job"], pods["pushgateway"], 9091)


# -- credentials ------------------------------------------------------------------------------

SECRET_READERS: dict[tuple[str, str], dict[str, str]] = {
    ("garbage-mlflow", "minio-credentials"): {
        "Deployment/minio": "MinIO's root user",
        "Job/minio-buckets": "creates the bucket, the policies and the per-purpose users",
    },
    ("garbage-mlflow", "minio-mlflow"): {
        "Deployment/mlflow": "the artifact proxy's MinIO user (read-write on bucket mlflow)",
        "Job/minio-buckets": "creates that user with this key",
    },
    ("garbage-mlflow", "minio-kserve-reader"): {
        "Job/minio-buckets": "creates the reader with this key (garbage-serving-s3 is its copy)",
    },
    ("garbage-mlflow", "minio-collector-images"): {
        "Job/minio-buckets": "creates the collector's image user (garbage-collector-images is "
        "its copy)",
    },
    ("garbage-mlflow", "minio-retrain"): {
        "Job/minio-buckets": "creates the retrain job's MinIO user (garbage-retrain-s3: its copy)",
    },
    ("garbage-mlflow", "minio-datasets-reader"): {
        "Job/minio-buckets": "creates the pipeline's read-only datasets user "
        "(kubeflow/garbage-pipeline-datasets is its copy)",
    },
    ("garbage-mlflow", "mlflow-postgres"): {
        "StatefulSet/mlflow-postgres": "the database's password",
        "Deployment/mlflow": "the backend store and auth database (PGPASSWORD)",
    },
    ("garbage-mlflow", "mlflow-auth"): {
        "Deployment/mlflow": "bootstraps the admin; the Flask secret key",
        "Job/mlflow-users": "logs in as the admin to create the users",
    },
    ("garbage-mlflow", "mlflow-users"): {
        "Job/mlflow-users": "sets the client users' passwords",
    },
    ("garbage-serving", "garbage-serving-s3"): {
        "ServiceAccount/garbage-serving": "KServe's storage initializer: the reader's keys",
    },
    ("garbage-monitoring", "garbage-monitoring-mlflow"): {
        "CronJob/garbage-drift": "MLflow's read-only user garbage-monitoring",
        "Deployment/garbage-collector": "the same user: the champion's class names",
        "CronJob/garbage-retrain": "the same user: the champion and its dataset version",
    },
    ("garbage-monitoring", "garbage-collector-token"): {
        "Deployment/garbage-collector": "the tokens /feedback accepts",
    },
    ("garbage-monitoring", "garbage-collector-images"): {
        "Deployment/garbage-collector": "its image store's MinIO user (bucket garbage-images)",
    },
    ("garbage-monitoring", "garbage-retrain-s3"): {
        "CronJob/garbage-retrain": "its MinIO user: reads logged images, writes dataset versions",
    },
    ("garbage-monitoring", "garbage-drift-pushgateway"): {
        "CronJob/garbage-drift": "pushes as the Pushgateway's user drift",
    },
    ("garbage-monitoring", "garbage-pushgateway-scrape"): {
        "ServiceMonitor/garbage-pushgateway": "Prometheus scrapes as the user prometheus",
    },
    ("garbage-monitoring", "garbage-pushgateway-web"): {
        "Deployment/garbage-pushgateway": "its web config: the users' bcrypt hashes",
    },
}
"""Who reads which Secret, and why; a reference without a reason here fails the test."""


def _secret_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "secretKeyRef" or key == "secretRef":
                yield value["name"]
            elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                yield value["secretName"]
            else:
                yield from _secret_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _secret_refs(item)


def secret_reads(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(namespace, Secret, reader) for every Secret a rendered object references: pod templates
    (env, envFrom, volumes), ServiceAccounts (``secrets``, which KServe reads) and Prometheus
    Operator monitors (basicAuth)."""
    reads = set()
    for doc in docs:
        kind, meta = doc["kind"], doc["metadata"]
        reader = f"{kind}/{meta['name']}"
        if kind in ("Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet"):
            names = set(_secret_refs(pod_template(doc)["spec"]))
        elif kind == "ServiceAccount":
            names = {s["name"] for s in doc.get("secrets") or []}
        elif kind in ("ServiceMonitor", "PodMonitor"):
            names = {ref["name"] for ref in _basic_auth_refs(doc["spec"])}
        else:
            continue
        reads |= {(meta.get("namespace"), name, reader) for name in names}
    return reads


def _basic_auth_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "basicAuth":
                yield from (value["username"], value["password"])
            else:
                yield from _basic_auth_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _basic_auth_refs(item)


@pytest.mark.parametrize("target", sorted(OVERLAY_MODES))
def test_each_secret_is_read_only_by_those_that_need_it(rendered, target) -> None:
    reads = secret_reads(rendered[target])
    wanted = {
        (namespace, name, reader)
        for (namespace, name), readers in SECRET_READERS.items()
        for reader in readers
    }
    unexpected = sorted(reads - wanted)
    missing = sorted(wanted - reads)
    assert not unexpected, f"{target}: reads no reason is written for: {unexpected}"
    assert not missing, f"{target}: SECRET_READERS names readers that do not read: {missing}"


def test_minio_root_credentials_stay_in_minio_namespace(rendered) -> None:
    readers = {
        (namespace, reader)
        for namespace, name, reader in secret_reads(rendered["overlays/kind"])
        if name == "minio-credentials"
    }
    assert readers == {
        ("garbage-mlflow", "Deployment/minio"),
        ("garbage-mlflow", "Job/minio-buckets"),
    }


FAKE_KUBECTL = r"""
import base64, json, sys
from pathlib import Path

# A FAKE kubectl: the Secret and Namespace commands scripts/kind/secrets.sh runs, on a JSON file.
state_file = Path(__file__).with_name("cluster.json")
state = json.loads(state_file.read_text())
args, namespace = sys.argv[1:], "default"
while args and args[0] in ("--context", "-n"):
    if args[0] == "-n":
        namespace = args[1]
    args = args[2:]
verb, kind, rest = args[0], args[1], args[2:]
secrets = state["secrets"].setdefault(namespace, {})
if kind == "namespace":
    sys.exit(0 if rest[0] in state["namespaces"] else 1)
if verb == "get":
    secret = secrets.get(rest[0])
    if secret is None:
        sys.exit(f'Error from server (NotFound): secrets "{rest[0]}" not found')
    if "-o" in rest:
        key = rest[rest.index("-o") + 1].removeprefix("jsonpath={.data.").removesuffix("}")
        value = secret["data"].get(key)
        print(base64.b64encode(value.encode()).decode() if value is not None else "", end="")
elif verb == "create":
    name = rest[1]
    if name in secrets:
        sys.exit(f'Error from server (AlreadyExists): secrets "{name}" already exists')
    data = dict(a.removeprefix("--from-literal=").split("=", 1) for a in rest[2:])
    secrets[name] = {"data": data, "annotations": {}}
elif verb == "delete":
    if rest[0] not in secrets and "--ignore-not-found" not in rest:
        sys.exit(f'Error from server (NotFound): secrets "{rest[0]}" not found')
    secrets.pop(rest[0], None)
elif verb == "annotate":
    secrets[rest[0]]["annotations"].update(a.split("=", 1) for a in rest[1:])
else:
    sys.exit(f"the fake kubectl does not do {args}")
state_file.write_text(json.dumps(state))
"""


def _run_secrets_script(tmp_path: Path, state: dict[str, Any]) -> subprocess.CompletedProcess:
    if shutil.which("htpasswd") is None or shutil.which("openssl") is None:
        pytest.skip("scripts/kind/secrets.sh needs htpasswd (apache2-utils) and openssl")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f"#!{sys.executable}\n{FAKE_KUBECTL}")
    kubectl.chmod(0o755)
    (bin_dir / "cluster.json").write_text(json.dumps(state))
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "kind" / "secrets.sh")],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    state.clear()
    state.update(json.loads((bin_dir / "cluster.json").read_text()))
    return result


NAMESPACES = ["garbage-mlflow", "garbage-serving", "garbage-monitoring", "kubeflow"]


def _referenced_keys(docs: list[dict[str, Any]]) -> set[tuple[str, str, str | None]]:
    """(namespace, Secret, key or None for the whole Secret) that the rendered objects read."""
    found: set[tuple[str, str, str | None]] = set()

    def walk(node: Any, namespace: str) -> None:
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                ref = node["secretKeyRef"]
                found.add((namespace, ref["name"], ref["key"]))
            if isinstance(node.get("secret"), dict) and "secretName" in node["secret"]:
                volume = node["secret"]
                keys = [item["key"] for item in volume.get("items") or []] or [None]
                found.update((namespace, volume["secretName"], key) for key in keys)
            if "basicAuth" in node:
                found.update((namespace, r["name"], r["key"]) for r in node["basicAuth"].values())
            for value in node.values():
                walk(value, namespace)
        elif isinstance(node, list):
            for item in node:
                walk(item, namespace)

    for doc in docs:
        namespace = doc["metadata"].get("namespace")
        walk(doc.get("spec"), namespace)
        if doc["kind"] == "ServiceAccount":
            found.update((namespace, s["name"], None) for s in doc.get("secrets") or [])
    return found


def _compiled_pipeline(path: Path) -> list[dict[str, Any]]:
    from garbage.core.config import Config
    from pipelines.training import compile_pipeline

    return [d for d in yaml.safe_load_all(compile_pipeline(path, Config()).read_text()) if d]


def _pipeline_secrets(ir: list[dict[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """For each step (executor) of the compiled pipeline, the Secrets it reads as env and their
    keys."""
    executors = ir[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return {
        name: {s["secretName"]: [k["secretKey"] for k in s["keyToEnv"]] for s in secrets}
        for name, spec in executors.items()
        if (secrets := spec.get("secretAsEnv"))
    }


def _pipeline_keys() -> set[tuple[str, str, str | None]]:
    """(namespace, Secret, key) that the pipeline's steps read (its pods run in kubeflow)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ir = _compiled_pipeline(Path(tmp) / "pipeline.yaml")
    return {
        ("kubeflow", name, key)
        for secrets in _pipeline_secrets(ir).values()
        for name, keys in secrets.items()
        for key in keys
    }


def test_only_the_steps_that_read_dataset_versions_get_the_datasets_key(tmp_path) -> None:
    """fetch and split read ``data.datasets_root`` (garbage/training/steps.py); no other step
    gets the read-only datasets key, and they get nothing else but it."""
    from pipelines.training import DATASETS_LOGIN, DATASETS_SECRET

    secrets = _pipeline_secrets(_compiled_pipeline(tmp_path / "pipeline.yaml"))
    readers = {name for name, read in secrets.items() if DATASETS_SECRET in read}
    assert readers == {"exec-fetch-data", "exec-split-data"}
    for name in readers:
        assert secrets[name] == {DATASETS_SECRET: list(DATASETS_LOGIN)}, name


def test_the_secrets_script_makes_every_secret_the_manifests_read(rendered, tmp_path) -> None:
    """Run against a FAKE kubectl (no API server runs here), on a cluster of the old layout
    whose serving Secret still holds MinIO's root key."""
    import crypt  # to check htpasswd's bcrypt hashes (libxcrypt); removed in Python 3.13

    root = {"MINIO_ROOT_USER": "garbage-root", "MINIO_ROOT_PASSWORD": "root-password-0123"}
    old_serving = {
        "AWS_ACCESS_KEY_ID": root["MINIO_ROOT_USER"],
        "AWS_SECRET_ACCESS_KEY": root["MINIO_ROOT_PASSWORD"],
    }
    state: dict[str, Any] = {
        "namespaces": NAMESPACES,
        "secrets": {
            "garbage-mlflow": {"minio-credentials": {"data": root, "annotations": {}}},
            "garbage-serving": {"garbage-serving-s3": {"data": old_serving, "annotations": {}}},
        },
    }
    result = _run_secrets_script(tmp_path, state)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "replacing garbage-serving/garbage-serving-s3" in result.stderr
    secrets = state["secrets"]

    def data(namespace: str, name: str) -> dict[str, str]:
        return secrets[namespace][name]["data"]

    read = _referenced_keys(rendered["overlays/kind"]) | _pipeline_keys()
    missing = [
        f"{namespace}/{name}" + (f" key {key}" if key else "")
        for namespace, name, key in sorted(read, key=str)
        if name not in secrets.get(namespace, {})
        or (key is not None and key not in data(namespace, name))
    ]
    assert not missing, (
        f"the manifests or the pipeline read Secrets the script does not make: {missing}"
    )

    assert data("garbage-mlflow", "minio-credentials") == root  # kept
    serving = secrets["garbage-serving"]["garbage-serving-s3"]
    assert serving["data"] == data("garbage-mlflow", "minio-kserve-reader")
    assert serving["data"]["AWS_ACCESS_KEY_ID"] == "kserve-reader"
    assert serving["annotations"]["serving.kserve.io/s3-endpoint"] == (
        "minio.garbage-mlflow.svc.cluster.local:9000"
    )
    outside = [
        f"{namespace}/{name}"
        for namespace, names in secrets.items()
        if namespace != "garbage-mlflow"
        for name, secret in names.items()
        if root["MINIO_ROOT_PASSWORD"] in secret["data"].values()
    ]
    assert not outside, f"MinIO's root password outside garbage-mlflow: {outside}"
    users = data("garbage-mlflow", "mlflow-users")
    assert data("kubeflow", "garbage-pipeline-mlflow") == {
        "MLFLOW_TRACKING_USERNAME": "garbage-pipeline",
        "MLFLOW_TRACKING_PASSWORD": users["GARBAGE_PIPELINE_PASSWORD"],
    }
    assert data("garbage-monitoring", "garbage-collector-images") == data(
        "garbage-mlflow", "minio-collector-images"
    )
    assert data("garbage-monitoring", "garbage-collector-images")["AWS_ACCESS_KEY_ID"] == (
        "garbage-collector"
    )
    assert data("garbage-monitoring", "garbage-monitoring-mlflow") == {
        "MLFLOW_TRACKING_USERNAME": "garbage-monitoring",
        "MLFLOW_TRACKING_PASSWORD": users["GARBAGE_MONITORING_PASSWORD"],
    }
    assert data("garbage-monitoring", "garbage-retrain-s3") == data(
        "garbage-mlflow", "minio-retrain"
    )
    assert data("garbage-mlflow", "minio-retrain")["AWS_ACCESS_KEY_ID"] == "garbage-retrain"
    reader = data("garbage-mlflow", "minio-datasets-reader")
    assert reader["AWS_ACCESS_KEY_ID"] == "garbage-datasets-reader"
    minio = one_doc(rendered["base"], "Service", "minio")
    endpoint = (
        f"http://minio.{minio['metadata']['namespace']}.svc.cluster.local:"
        f"{minio['spec']['ports'][0]['port']}"
    )
    assert data("kubeflow", "garbage-pipeline-datasets") == {**reader, "AWS_ENDPOINT_URL": endpoint}
    keys = {
        name: secret["data"]["AWS_ACCESS_KEY_ID"]
        for name, secret in secrets["garbage-mlflow"].items()
        if "AWS_ACCESS_KEY_ID" in secret["data"]
    }
    assert len(set(keys.values())) == len(keys), f"two purposes share a MinIO user: {keys}"
    web = yaml.safe_load(data("garbage-monitoring", "garbage-pushgateway-web")["web-config.yml"])
    for name, user in (
        ("garbage-drift-pushgateway", "drift"),
        ("garbage-pushgateway-scrape", "prometheus"),
    ):
        login = data("garbage-monitoring", name)
        assert login["username"] == user
        hashed = web["basic_auth_users"][user]
        assert crypt.crypt(login["password"], hashed) == hashed, f"{user}'s hash does not verify"
        assert crypt.crypt("wrong", hashed) != hashed

    before = copy.deepcopy(state)
    again = _run_secrets_script(tmp_path, state)
    assert again.returncode == 0, again.stderr
    assert state == before, "a second run changed Secrets"
    assert "created" not in again.stderr and "replacing" not in again.stderr


def test_the_secrets_script_needs_the_namespaces(tmp_path) -> None:
    state: dict[str, Any] = {"namespaces": NAMESPACES[:2], "secrets": {}}
    result = _run_secrets_script(tmp_path, state)
    assert result.returncode != 0
    assert "namespace garbage-monitoring is missing" in result.stderr
    assert state["secrets"] == {}


# -- RBAC -------------------------------------------------------------------------------------

PIPELINE = "ServiceAccount kubeflow/garbage-pipeline"
RBAC_NEEDS: dict[tuple[str, str, str, str, str, str], str] = {
    **{
        (PIPELINE, "garbage-serving", "serving.kserve.io", "inferenceservices", "*", verb): why
        for verb, why in {
            "get": "the deploy step reads the InferenceService (garbage/deploy.py)",
            "create": "the deploy step creates it on the first deploy",
            "patch": "the deploy step points storageUri / canaryTrafficPercent at a new model",
        }.items()
    },
    (PIPELINE, "kubeflow", "argoproj.io", "workflowtaskresults", "*", "create"): (
        "the Argo executor reports a step's outputs"
    ),
    (PIPELINE, "kubeflow", "argoproj.io", "workflowtaskresults", "*", "patch"): (
        "the Argo executor updates a step's outputs"
    ),
    (PIPELINE, "kubeflow", "", "pods", "*", "get"): "the Argo executor reads its own pod",
    (PIPELINE, "kubeflow", "", "pods", "*", "watch"): "the Argo executor waits on its own pod",
    (PIPELINE, "kubeflow", "", "pods", "*", "patch"): "the Argo executor annotates its own pod",
    (PIPELINE, "kubeflow", "", "pods/log", "*", "get"): "the Argo executor saves step logs",
    (PIPELINE, "kubeflow", "", "configmaps", "kfp-launcher", "get"): (
        "the KFP launcher's settings (pipeline root)"
    ),
    (PIPELINE, "kubeflow", "", "configmaps", "metadata-grpc-configmap", "get"): (
        "the KFP launcher finds the ML Metadata service"
    ),
    (PIPELINE, "kubeflow", "", "secrets", "mlpipeline-minio-artifact", "get"): (
        "the KFP launcher's credentials for the pipeline artifact store"
    ),
}
"""Every (subject, namespace, API group, resource, resource name or ``*``, verb) that a Role
grants, and why. Nothing else is granted: no ClusterRole, no wildcard."""


def rbac_grants(docs: list[dict[str, Any]]) -> set[tuple[str, str, str, str, str, str]]:
    """(subject, namespace, group, resource, name, verb) for every RoleBinding -> Role rule."""
    roles = {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d["kind"] == "Role"
    }
    grants = set()
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        namespace = binding["metadata"]["namespace"]
        ref = binding["roleRef"]
        assert ref["kind"] == "Role", f"RoleBinding {binding['metadata']['name']} binds {ref}"
        role = roles[(namespace, ref["name"])]
        for subject in binding["subjects"]:
            who = f"{subject['kind']} {subject.get('namespace', namespace)}/{subject['name']}"
            for rule in role["rules"]:
                grants |= {
                    (who, namespace, group, resource, name, verb)
                    for group in rule["apiGroups"]
                    for resource in rule["resources"]
                    for name in rule.get("resourceNames") or ["*"]
                    for verb in rule["verbs"]
                }
    return grants


@pytest.mark.parametrize("target", ["base", *sorted(OVERLAY_MODES)])
def test_rbac_grants_exactly_the_needs(rendered, target) -> None:
    docs = rendered[target]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    grants = rbac_grants(docs)
    assert all("*" not in (g, r, v) for _, _, g, r, _, v in grants), grants
    extra, missing = sorted(grants - set(RBAC_NEEDS)), sorted(set(RBAC_NEEDS) - grants)
    assert not extra, f"{target}: granted without a need: {extra}"
    assert not missing, f"{target}: needed and not granted: {missing}"


def test_rbac_check_sees_a_grant_too_many(rendered) -> None:
    docs = copy.deepcopy(rendered["base"])
    one_doc(docs, "Role", "inferenceservice-deployer")["rules"][0]["verbs"].append("delete")
    assert (
        PIPELINE,
        "garbage-serving",
        "serving.kserve.io",
        "inferenceservices",
        "*",
        "delete",
    ) in rbac_grants(docs) - set(RBAC_NEEDS)


# -- MinIO's per-purpose users ----------------------------------------------------------------


def s3_allowed(policy: Mapping[str, Any], action: str, resource: str, **context: str) -> bool:
    """Whether an identity policy allows ``action`` on ``resource`` (an ARN).

    The subset of the S3 policy language the project's policies use: Allow and Deny statements
    (an explicit Deny wins), ``*``/``?`` wildcards in actions and resources, and ``StringLike``
    conditions on request keys (``s3:prefix``); anything else is refused as not modelled.
    """
    allowed = False
    for statement in policy["Statement"]:
        actions = statement["Action"]
        resources = statement["Resource"]
        actions = [actions] if isinstance(actions, str) else actions
        resources = [resources] if isinstance(resources, str) else resources
        if not any(fnmatch.fnmatchcase(action, a) for a in actions):
            continue
        if not any(fnmatch.fnmatchcase(resource, r) for r in resources):
            continue
        conditions = statement.get("Condition") or {}
        unknown = set(conditions) - {"StringLike"}
        if unknown:
            raise ValueError(f"condition operators {unknown} are not modelled")
        if not all(
            any(fnmatch.fnmatchcase(context.get(key, ""), v) for v in values)
            for key, values in (conditions.get("StringLike") or {}).items()
        ):
            continue
        if statement["Effect"] == "Deny":
            return False
        allowed = True
    return allowed


def _minio_policy(name: str) -> dict[str, Any]:
    return json.loads((MLFLOW_DIR / "minio-policies" / f"{name}.json").read_text())


BUCKET = "arn:aws:s3:::mlflow"
MODEL = f"{BUCKET}/artifacts/1/models/m-abc/artifacts/model.onnx"
IMAGES = "arn:aws:s3:::garbage-images"
IMAGE = f"{IMAGES}/ab/ab{'0' * 62}"
DATASETS = "arn:aws:s3:::garbage-datasets"
VERSION_FILE = f"{DATASETS}/versions/ds-0123456789ab/manifest.csv"
LEDGER = f"{DATASETS}/retrains/ds-0123456789ab.json"
MLFLOW_ARTIFACT = f"{BUCKET}/artifacts/1/runs/abc/artifacts/model.onnx"


@pytest.mark.parametrize(
    ("policy", "action", "resource", "context", "allowed"),
    [
        ("kserve-reader", "s3:GetObject", MODEL, {}, True),
        (
            "kserve-reader",
            "s3:ListBucket",
            "arn:aws:s3:::mlflow",
            {"s3:prefix": "artifacts/1/"},
            True,
        ),
        ("kserve-reader", "s3:PutObject", MODEL, {}, False),
        ("kserve-reader", "s3:DeleteObject", MODEL, {}, False),
        ("kserve-reader", "s3:GetObject", "arn:aws:s3:::mlflow/other/x", {}, False),
        ("kserve-reader", "s3:ListBucket", "arn:aws:s3:::mlflow", {"s3:prefix": ""}, False),
        ("kserve-reader", "s3:ListAllMyBuckets", "arn:aws:s3:::*", {}, False),
        ("kserve-reader", "admin:CreateUser", "arn:aws:s3:::*", {}, False),
        ("mlflow-readwrite", "s3:PutObject", MODEL, {}, True),
        ("mlflow-readwrite", "s3:GetObject", MODEL, {}, True),
        ("mlflow-readwrite", "s3:DeleteObject", MODEL, {}, True),
        ("mlflow-readwrite", "s3:ListBucket", "arn:aws:s3:::mlflow", {"s3:prefix": ""}, True),
        ("mlflow-readwrite", "s3:AbortMultipartUpload", MODEL, {}, True),
        ("mlflow-readwrite", "s3:PutObject", "arn:aws:s3:::other/x", {}, False),
        ("mlflow-readwrite", "s3:DeleteBucket", "arn:aws:s3:::mlflow", {}, False),
        ("mlflow-readwrite", "s3:PutBucketPolicy", "arn:aws:s3:::mlflow", {}, False),
        ("mlflow-readwrite", "admin:CreateUser", "arn:aws:s3:::*", {}, False),
        ("mlflow-readwrite", "s3:GetObject", IMAGE, {}, False),
        ("kserve-reader", "s3:GetObject", IMAGE, {}, False),
        # the collector's image store: keep, read and prune images, in its bucket only
        ("collector-images", "s3:PutObject", IMAGE, {}, True),
        ("collector-images", "s3:GetObject", IMAGE, {}, True),
        ("collector-images", "s3:DeleteObject", IMAGE, {}, True),
        ("collector-images", "s3:ListBucket", IMAGES, {"s3:prefix": "ab/"}, True),
        ("collector-images", "s3:GetObject", MODEL, {}, False),
        ("collector-images", "s3:PutObject", MODEL, {}, False),
        ("collector-images", "s3:ListBucket", BUCKET, {"s3:prefix": ""}, False),
        ("collector-images", "s3:DeleteBucket", IMAGES, {}, False),
        ("collector-images", "s3:PutBucketPolicy", IMAGES, {}, False),
        ("collector-images", "s3:ListAllMyBuckets", "arn:aws:s3:::*", {}, False),
        ("collector-images", "admin:CreateUser", "arn:aws:s3:::*", {}, False),
        ("collector-images", "s3:GetObject", VERSION_FILE, {}, False),
        # the retrain job: reads the logged images, builds dataset versions, keeps its ledger
        ("retrain-datasets", "s3:GetObject", IMAGE, {}, True),
        ("retrain-datasets", "s3:ListBucket", IMAGES, {"s3:prefix": "ab/"}, True),
        ("retrain-datasets", "s3:PutObject", IMAGE, {}, False),
        ("retrain-datasets", "s3:DeleteObject", IMAGE, {}, False),
        ("retrain-datasets", "s3:PutObject", VERSION_FILE, {}, True),
        ("retrain-datasets", "s3:GetObject", VERSION_FILE, {}, True),
        ("retrain-datasets", "s3:PutObject", LEDGER, {}, True),
        ("retrain-datasets", "s3:DeleteObject", f"{DATASETS}/versions/.incoming-x/a", {}, True),
        ("retrain-datasets", "s3:AbortMultipartUpload", VERSION_FILE, {}, True),
        ("retrain-datasets", "s3:ListBucket", DATASETS, {"s3:prefix": "versions/"}, True),
        ("retrain-datasets", "s3:GetObject", MODEL, {}, False),
        ("retrain-datasets", "s3:GetObject", MLFLOW_ARTIFACT, {}, False),
        ("retrain-datasets", "s3:PutObject", MLFLOW_ARTIFACT, {}, False),
        ("retrain-datasets", "s3:DeleteObject", MODEL, {}, False),
        ("retrain-datasets", "s3:ListBucket", BUCKET, {"s3:prefix": "artifacts/"}, False),
        ("retrain-datasets", "s3:DeleteBucket", DATASETS, {}, False),
        ("retrain-datasets", "s3:PutBucketPolicy", DATASETS, {}, False),
        ("retrain-datasets", "s3:ListAllMyBuckets", "arn:aws:s3:::*", {}, False),
        ("retrain-datasets", "admin:CreateUser", "arn:aws:s3:::*", {}, False),
        # the pipeline's fetch and split steps: read a dataset version, nothing else
        ("datasets-reader", "s3:GetObject", VERSION_FILE, {}, True),
        ("datasets-reader", "s3:GetObject", f"{DATASETS}/images/ab/ab{'0' * 62}.jpg", {}, True),
        ("datasets-reader", "s3:ListBucket", DATASETS, {"s3:prefix": "versions/"}, True),
        ("datasets-reader", "s3:PutObject", VERSION_FILE, {}, False),
        ("datasets-reader", "s3:PutObject", LEDGER, {}, False),
        ("datasets-reader", "s3:DeleteObject", VERSION_FILE, {}, False),
        ("datasets-reader", "s3:GetObject", IMAGE, {}, False),
        ("datasets-reader", "s3:GetObject", MODEL, {}, False),
        ("datasets-reader", "s3:ListBucket", IMAGES, {"s3:prefix": ""}, False),
        ("datasets-reader", "s3:ListAllMyBuckets", "arn:aws:s3:::*", {}, False),
        ("datasets-reader", "admin:CreateUser", "arn:aws:s3:::*", {}, False),
        ("mlflow-readwrite", "s3:GetObject", VERSION_FILE, {}, False),
        ("kserve-reader", "s3:GetObject", VERSION_FILE, {}, False),
    ],
)
def test_minio_users_may_do_what_their_purpose_needs_and_no_more(
    policy, action, resource, context, allowed
) -> None:
    assert s3_allowed(_minio_policy(policy), action, resource, **context) is allowed


ALL_BUCKETS = ("mlflow", "garbage-images", "garbage-datasets")
MINIO_USER_BUCKETS = {
    # policy: (buckets it may read, buckets it may write or delete in)
    "mlflow-readwrite": ({"mlflow"}, {"mlflow"}),
    "kserve-reader": ({"mlflow"}, set()),
    "collector-images": ({"garbage-images"}, {"garbage-images"}),
    "retrain-datasets": ({"garbage-images", "garbage-datasets"}, {"garbage-datasets"}),
    "datasets-reader": ({"garbage-datasets"}, set()),
}
"""What each MinIO user reaches; the retrain job never writes the images or touches MLflow's
bucket, the pipeline's datasets reader writes nowhere."""


@pytest.mark.parametrize("policy", sorted(MINIO_USER_BUCKETS))
def test_each_minio_user_reaches_only_its_buckets(policy) -> None:
    document = _minio_policy(policy)
    key = "artifacts/1/x"  # a key the narrowest (kserve-reader) may read
    reads = {
        b for b in ALL_BUCKETS if s3_allowed(document, "s3:GetObject", f"arn:aws:s3:::{b}/{key}")
    }
    writes = {
        b
        for b in ALL_BUCKETS
        for action in ("s3:PutObject", "s3:DeleteObject")
        if s3_allowed(document, action, f"arn:aws:s3:::{b}/{key}")
    }
    assert (reads, writes) == MINIO_USER_BUCKETS[policy]


def test_every_policy_file_has_its_buckets_written_down() -> None:
    files = {p.stem for p in (MLFLOW_DIR / "minio-policies").glob("*.json")}
    assert files == set(MINIO_USER_BUCKETS)


def test_the_s3_evaluator_honours_deny_and_refuses_what_it_does_not_model() -> None:
    policy = {
        "Statement": [
            {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/*"},
            {"Effect": "Deny", "Action": ["s3:Delete*"], "Resource": ["arn:aws:s3:::b/keep/*"]},
        ]
    }
    assert s3_allowed(policy, "s3:DeleteObject", "arn:aws:s3:::b/x")
    assert not s3_allowed(policy, "s3:DeleteObject", "arn:aws:s3:::b/keep/x")
    odd = {"Statement": [{**policy["Statement"][0], "Condition": {"IpAddress": {}}}]}
    with pytest.raises(ValueError, match="IpAddress"):
        s3_allowed(odd, "s3:GetObject", "arn:aws:s3:::b/x")


def test_the_bucket_job_attaches_each_policy_to_its_user(rendered) -> None:
    """Every policy file is created under its own name and attached to the user whose Secret
    holds that purpose's key; the job is idempotent by construction (bucket --ignore-existing,
    policy create and user add overwrite, attach skips what is attached, mc since 2024-10)."""
    job = one_doc(rendered["base"], "Job", "minio-buckets")
    [container] = pod_template(job)["spec"]["containers"]
    lines = [line.split() for line in container["args"][0].splitlines() if line.strip()]
    created = {ln[5]: ln[6] for ln in lines if ln[:4] == ["mc", "admin", "policy", "create"]}
    attached = {ln[5]: ln[7] for ln in lines if ln[:4] == ["mc", "admin", "policy", "attach"]}
    files = sorted(p.name for p in (MLFLOW_DIR / "minio-policies").glob("*.json"))
    assert sorted(Path(f).name for f in created.values()) == files
    assert all(created[name] == f"/policies/{name}.json" for name in created)
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    users = {name: env[user.strip('"$')]["name"] for name, user in attached.items()}
    assert users == {
        "mlflow-readwrite": "minio-mlflow",
        "kserve-reader": "minio-kserve-reader",
        "collector-images": "minio-collector-images",
        "retrain-datasets": "minio-retrain",
        "datasets-reader": "minio-datasets-reader",
    }
    for bucket in ("mlflow", "garbage-images", "garbage-datasets"):
        assert f"mc mb --ignore-existing store/{bucket}" in container["args"][0]


# -- the real servers -------------------------------------------------------------------------


def _mlflow_server_python() -> str:
    """A Python with MLflow's auth extra: this one, or $GARBAGE_MLFLOW_SERVER_PYTHON."""
    configured = os.environ.get("GARBAGE_MLFLOW_SERVER_PYTHON")
    if configured:
        return configured
    try:
        import flask_wtf  # noqa: F401  (MLflow's auth extra)
    except ImportError:
        pytest.skip(
            "MLflow's auth extra (Flask-WTF) is not installed here; it is in the MLflow image's "
            "lock: point GARBAGE_MLFLOW_SERVER_PYTHON at a venv made from "
            "manifests/base/mlflow/image/requirements.txt"
        )
    return sys.executable


def _wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers (with 401)
        except OSError as e:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up:\n{log.read_text()[-3000:]}") from e
            time.sleep(0.5)


@pytest.fixture(scope="module")
def mlflow_auth_server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """``mlflow server --app-name basic-auth`` with the manifests' args and auth config (its
    database on SQLite here instead of PostgreSQL), its users made by the Job's script and
    arguments as rendered."""
    from support import free_port

    python = _mlflow_server_python()
    docs = [d for d in yaml.safe_load_all(_kustomize("base")) if d]
    mlflow = one_doc(docs, "Deployment", "mlflow")
    [server] = pod_template(mlflow)["spec"]["containers"]
    users_job = one_doc(docs, "Job", "mlflow-users")
    [job] = pod_template(users_job)["spec"]["containers"]
    config_map = one_doc(docs, "ConfigMap", "mlflow-auth")["data"]

    root = tmp_path_factory.mktemp("mlflow-auth")
    ini = config_map["basic_auth.ini"].replace(
        "database_uri = postgresql+psycopg2://mlflow@mlflow-postgres:5432/mlflow_auth",
        f"database_uri = sqlite:///{root / 'auth.db'}",
    )
    assert ini != config_map["basic_auth.ini"], "the auth config's database_uri changed"
    (root / "basic_auth.ini").write_text(ini)
    (root / "users.py").write_text(config_map["users.py"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    admin = {e["name"]: e.get("value") for e in job["env"]}["MLFLOW_TRACKING_USERNAME"]
    secrets = {
        "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-password-for-tests",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask-secret-for-tests",
        "GARBAGE_PIPELINE_PASSWORD": "pipeline-password-for-tests",
        "GARBAGE_MONITORING_PASSWORD": "monitoring-password-for-tests",
    }
    env = {**os.environ, **secrets, "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini")}
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    keep = ("--app-name=", "--serve-artifacts")
    args = [a for a in server["args"] if a.startswith(keep)]
    assert "--app-name=basic-auth" in args
    command = [python, "-m", "mlflow", "server", *args, "--host=127.0.0.1", f"--port={port}"]
    command += [f"--backend-store-uri=sqlite:///{root / 'mlflow.db'}", "--workers=1"]
    command += [f"--artifacts-destination={root / 'artifacts'}"]
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(f"{url}/health", process, log)
        job_env = {
            **env,
            "MLFLOW_TRACKING_URI": url,
            "MLFLOW_TRACKING_USERNAME": admin,
            "MLFLOW_TRACKING_PASSWORD": secrets["MLFLOW_AUTH_ADMIN_PASSWORD"],
        }
        for _ in range(2):  # the Job may run again: the second run must succeed too
            result = subprocess.run(
                [python, str(root / "users.py"), *job["args"]],
                env=job_env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert result.returncode == 0, result.stdout + result.stderr
        yield {
            "url": url,
            "garbage-pipeline": secrets["GARBAGE_PIPELINE_PASSWORD"],
            "garbage-monitoring": secrets["GARBAGE_MONITORING_PASSWORD"],
            "result": result.stdout,
        }
    finally:
        process.terminate()
        process.wait(timeout=30)


def _kustomize(target: str) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; it renders the kustomize trees")
    return subprocess.run(
        [kubectl, "kustomize", str(REPO / "manifests" / target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


def _status(method: str, url: str, auth: tuple[str, str] | None = None, **kwargs: Any) -> int:
    import requests

    return requests.request(method, url, auth=auth, timeout=30, **kwargs).status_code


@pytest.mark.integration
def test_mlflow_refuses_anonymous_requests_and_writes_by_the_reader(
    mlflow_auth_server, tmp_path, monkeypatch
) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    url = mlflow_auth_server["url"]
    assert mlflow_auth_server["result"].split("\n")[:2] == [
        "garbage-pipeline: password set",
        "garbage-monitoring: password set",
    ]

    def client(user: str) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_auth_server[user])
        return MlflowClient(tracking_uri=url, registry_uri=url)

    pipeline = client("garbage-pipeline")
    experiment = pipeline.create_experiment("garbage-classifier")
    run = pipeline.create_run(experiment)
    (tmp_path / "model.onnx").write_bytes(b"weights")
    pipeline.log_artifact(run.info.run_id, str(tmp_path / "model.onnx"))
    pipeline.create_registered_model("garbage-classifier")
    version = pipeline.create_model_version(
        "garbage-classifier", f"runs:/{run.info.run_id}/model.onnx", run.info.run_id
    )
    pipeline.set_registered_model_alias("garbage-classifier", "champion", version.version)

    reader = client("garbage-monitoring")
    champion = reader.get_model_version_by_alias("garbage-classifier", "champion")
    assert champion.version == version.version
    listed = reader.list_artifacts(run.info.run_id)
    assert [a.path for a in listed] == ["model.onnx"]
    for write in (
        lambda: reader.log_metric(run.info.run_id, "accuracy", 1.0),
        lambda: reader.set_registered_model_alias("garbage-classifier", "champion", "1"),
        lambda: reader.log_artifact(run.info.run_id, str(tmp_path / "model.onnx")),
    ):
        with pytest.raises((MlflowException, OSError), match=r"403|Forbidden|PERMISSION"):
            write()

    artifact = (
        f"{url}/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run.info.run_id}/artifacts/"
        "model.onnx"
    )
    reader_auth = ("garbage-monitoring", mlflow_auth_server["garbage-monitoring"])
    assert _status("PUT", artifact, data=b"replaced") == 401
    assert _status("GET", artifact) == 401
    assert _status("PUT", artifact, reader_auth, data=b"replaced") == 403
    assert _status("GET", f"{url}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    new_user = {"username": "intruder", "password": "intruder-password"}
    assert _status("POST", f"{url}/api/2.0/mlflow/users/create", json=new_user) == 401
    assert _status("POST", f"{url}/api/2.0/mlflow/users/create", reader_auth, json=new_user) == 403
    assert _status("GET", f"{url}/health") == 200  # the probes need no user
    assert (
        _status(
            "GET",
            artifact,
            ("garbage-pipeline", mlflow_auth_server["garbage-pipeline"]),
        )
        == 200
    )


def _bcrypt(password: str) -> str:
    """A bcrypt hash as ``htpasswd -B`` makes it for scripts/kind/secrets.sh."""
    htpasswd = shutil.which("htpasswd")
    if htpasswd:
        out = subprocess.run(
            [htpasswd, "-niBC", "10", "user"],
            input=password,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.strip().split(":", 1)[1]
    import crypt  # the C library's bcrypt (libxcrypt); removed in Python 3.13

    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))


@pytest.mark.integration
def test_the_pushgateway_refuses_unauthenticated_pushes_and_scrapes(rendered, tmp_path) -> None:
    from prometheus_client import CollectorRegistry, Gauge
    from support import free_port

    from monitoring.metrics import (
        PUSHGATEWAY_PASSWORD_ENV,
        PUSHGATEWAY_USERNAME_ENV,
        PushError,
        push,
        pushgateway_auth,
    )

    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        pytest.skip("prometheus-pushgateway not installed; run scripts/install-pushgateway.sh")
    docs = rendered["monitoring"]
    [gateway] = pod_template(one_doc(docs, "Deployment", "garbage-pushgateway"))["spec"][
        "containers"
    ]
    config_flag = next(a for a in gateway["args"] if a.startswith("--web.config.file="))
    mounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    assert mounts[str(Path(config_flag.split("=", 1)[1]).parent)] == "web-config"
    # Probes cannot send credentials, and basic auth covers /-/ready too.
    assert "tcpSocket" in gateway["readinessProbe"] and "tcpSocket" in gateway["livenessProbe"]

    passwords = {"drift": "drift-password-0123", "prometheus": "scrape-password-0123"}
    config = {"basic_auth_users": {user: _bcrypt(pw) for user, pw in passwords.items()}}
    (tmp_path / "web-config.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "pushgateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--web.listen-address=127.0.0.1:{port}",
                f"--web.config.file={tmp_path / 'web-config.yml'}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(f"{url}/-/ready", process, log)
        body = b"# TYPE garbage_drift_detected gauge\ngarbage_drift_detected 0\n"
        push_url = f"{url}/metrics/job/garbage-drift"
        assert _status("PUT", push_url, data=body) == 401
        assert _status("POST", push_url, data=body) == 401
        assert _status("GET", f"{url}/metrics") == 401
        assert _status("GET", f"{url}/-/ready") == 401
        assert _status("PUT", push_url, ("drift", "wrong-password"), data=body) == 401

        registry = CollectorRegistry()
        Gauge("garbage_drift_detected", "drift", registry=registry).set(1)
        # The drift job's own push, with the login its CronJob gets from the environment.
        with pytest.raises(PushError, match="401"):
            push(registry, url)
        login = pushgateway_auth(
            {
                PUSHGATEWAY_USERNAME_ENV: "drift",
                PUSHGATEWAY_PASSWORD_ENV: passwords["drift"],
            }
        )
        push(registry, url, auth=login)
        scrape = ("prometheus", passwords["prometheus"])
        import requests

        metrics = requests.get(f"{url}/metrics", auth=scrape, timeout=30).text
        assert 'garbage_drift_detected{instance="",job="garbage-drift"} 1' in metrics
    finally:
        process.terminate()
        process.wait(timeout=30)
