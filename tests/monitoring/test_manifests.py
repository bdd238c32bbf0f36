"""manifests/monitoring: renders, locks pods down, names match the code, alerts work (promtool)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests.prometheus_operator_schema import prometheus_operator_problems

REPO = Path(__file__).resolve().parents[2]
FOLDER = REPO / "manifests" / "monitoring"
RUNBOOK_PREFIX = "https://github.com/garbage-classifier/garbage-classifier/blob/main/"
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
MATCHERS = re.compile(r"\{[^}]*\}|\[[^\]]*\]")
IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset"}


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; it renders the kustomize tree")
    out = subprocess.run(
        [kubectl, "kustomize", str(FOLDER)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _one(docs: list[dict], kind: str, name: str) -> dict:
    [found] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _pods(docs: list[dict]):
    for d in docs:
        if d["kind"] == "Deployment":
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield d["metadata"]["name"], d["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_everything_lives_in_garbage_monitoring(docs) -> None:
    assert (
        _one(docs, "Namespace", "garbage-monitoring")["metadata"]["labels"][
            "pod-security.kubernetes.io/enforce"
        ]
        == "restricted"
    )
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "garbage-monitoring", d["metadata"]["name"]
    deny = _one(docs, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}


def test_every_pod_is_locked_down_with_resources(docs) -> None:
    seen = 0
    for name, pod in _pods(docs):
        assert pod["automountServiceAccountToken"] is False, name
        assert (
            pod["securityContext"]["runAsNonRoot"] is True
            and pod["securityContext"]["runAsUser"] != 0
        )
        for c in pod["containers"]:
            seen += 1
            ctx = c["securityContext"]
            assert (
                ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
            ), name
            assert (
                ctx["capabilities"]["drop"] == ["ALL"]
                and ctx["seccompProfile"]["type"] == "RuntimeDefault"
            )
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), name
    assert seen == 3


def test_collector_service_matches_the_logger_url_and_the_cli(docs) -> None:
    service = _one(docs, "Service", "garbage-collector")
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    container = _one(docs, "Deployment", "garbage-collector")["spec"]["template"]["spec"][
        "containers"
    ][0]
    # the monitoring image: python -m monitoring (no torch, no CUDA)
    assert container["image"] == "ghcr.io/garbage-classifier/monitoring:0.1.0"
    assert container["args"][:1] == ["collector"]
    assert {"name": "http", "containerPort": 8080} in container["ports"]
    assert "--port=8080" in container["args"] and "--host=0.0.0.0" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    job = _one(docs, "CronJob", "garbage-drift")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    args = job["containers"][0]["args"]
    assert job["containers"][0]["image"] == container["image"]
    assert args[:1] == ["drift"]
    assert (
        "--pushgateway=http://garbage-pushgateway.garbage-monitoring.svc.cluster.local:9091" in args
    )
    from monitoring.collector import EVENTS_PATH

    assert EVENTS_PATH == "/events"


def _allows_egress_to_mlflow(docs: list[dict], pod_labels: dict[str, str]) -> bool:
    for policy in docs:
        if policy["kind"] != "NetworkPolicy" or "Egress" not in policy["spec"]["policyTypes"]:
            continue
        selected = policy["spec"]["podSelector"].get("matchLabels") or {}
        if not selected.items() <= pod_labels.items():
            continue
        for rule in policy["spec"].get("egress") or []:
            ports = {p["port"] for p in rule.get("ports") or []}
            for peer in rule.get("to") or []:
                namespace = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
                if (
                    namespace.get("kubernetes.io/metadata.name") == "garbage-mlflow"
                    and 5000 in ports
                ):
                    return True
    return False


def test_collector_and_drift_job_can_fetch_the_champion(docs) -> None:
    """Both read the champion (class names; the job also its reference) from MLflow at run time:
    the tracking URI, a writable work dir for the download, and egress to the MLflow server."""
    for kind, name in (("Deployment", "garbage-collector"), ("CronJob", "garbage-drift")):
        doc = _one(docs, kind, name)
        template = (
            doc["spec"]["template"]
            if kind == "Deployment"
            else (doc["spec"]["jobTemplate"]["spec"]["template"])
        )
        pod = template["spec"]
        [container] = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.garbage-mlflow.svc.cluster.local:5000"
        scratch = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in scratch]
        assert any(env["GARBAGE_WORK_DIR"].startswith(m + "/") for m in mounts), name
        assert not any(a.startswith(("--classes", "--reference")) for a in container["args"])
        assert _allows_egress_to_mlflow(docs, template["metadata"]["labels"]), name


def test_prometheus_operator_resources_are_well_formed(docs) -> None:
    customs = [d for d in docs if d["apiVersion"] == "monitoring.coreos.com/v1"]
    assert {d["kind"] for d in customs} == {"PrometheusRule", "ServiceMonitor"}
    for d in customs:
        assert prometheus_operator_problems(d) == []
    broken = copy.deepcopy(_one(docs, "ServiceMonitor", "garbage-pushgateway"))
    broken["spec"]["endpoints"][0]["honourLabels"] = True
    assert any("honourLabels: unknown field" in p for p in prometheus_operator_problems(broken))
    rule = copy.deepcopy(_one(docs, "PrometheusRule", "garbage-classifier"))
    rule["spec"]["groups"][1]["rules"][0]["annotation"] = {}
    rule["spec"]["groups"][1]["rules"][1]["for"] = 5
    problems = prometheus_operator_problems(rule)
    assert any("annotation: unknown field" in p for p in problems)
    assert any("for: expected str" in p for p in problems)


def _alerts(docs) -> list[dict]:
    rule = _one(docs, "PrometheusRule", "garbage-classifier")
    return [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_links_an_existing_runbook(docs) -> None:
    alerts = _alerts(docs)
    names = {a["alert"] for a in alerts}
    assert {
        "GarbageDataDrift",
        "GarbagePredictLatencyHigh",
        "GarbageRequestErrorsHigh",
        "GarbageLiveAccuracyLow",
        "GarbageNoTraffic",
    } <= names
    for alert in alerts:
        url = alert["annotations"]["runbook_url"]
        assert url == f"{RUNBOOK_PREFIX}docs/runbooks/{alert['alert']}.md"
        runbook = REPO / url[len(RUNBOOK_PREFIX) :]
        assert runbook.is_file(), runbook
        assert runbook.read_text().startswith(f"# {alert['alert']}\n")
        assert (
            alert["labels"]["severity"] in {"warning", "critical"}
            and alert["annotations"]["summary"]
        )


def _known_metrics() -> set[str]:
    """Every series name the code exposes: collector, drift job, model server, KServe."""
    from prometheus_client import generate_latest

    from monitoring.collector import CollectorMetrics
    from monitoring.metrics import drift_registry
    from serving.metrics import serving_metrics

    names: set[str] = set()
    metrics = CollectorMetrics()
    for family in metrics.registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(
            family.type, ("",)
        )
        names |= {family.name + suffix for suffix in suffixes}
    summary = {
        "drift_detected": True,
        "drift_share": 0.1,
        "window_size": 1,
        "embedding_drift_share": 0.0,
        "columns": {"x": {"score": 1.0, "drifted": True}},
        "live_accuracy": {"labelled": 1, "accuracy": 1.0, "recall": {"glass": 1.0}},
    }
    for family in drift_registry(summary).collect():
        names |= {s.name for s in family.samples}
    names |= {"garbage_live_accuracy", "garbage_live_recall", "garbage_live_labelled"}
    served = serving_metrics()
    for collector in vars(served).values():
        for family in collector.collect():
            names |= {
                family.name,
                f"{family.name}_total",
                f"{family.name}_bucket",
                f"{family.name}_count",
                f"{family.name}_sum",
            }
    for stage in ("preprocess", "predict", "postprocess", "explain"):
        names |= {f"request_{stage}_seconds_bucket", f"request_{stage}_seconds_count"}
    assert generate_latest(metrics.registry)
    return names


def _metrics_in(expr: str, recorded: set[str]) -> set[str]:
    """Series names in a PromQL expression (no functions, label names, keywords, recorded rules)."""
    bare = MATCHERS.sub(" ", GROUPING.sub(" ", expr))
    found = {m for m in IDENTIFIER.findall(bare) if m not in PROMQL_WORDS and m not in recorded}
    return {m for m in found if not m.startswith("garbage:")}


def test_alerts_and_dashboard_use_only_series_the_code_exposes(docs) -> None:
    assert _metrics_in(
        'sum by (label) (rate(garbage_predictons_total{a="b"}[5m])) > 0 unless on() '
        "max(garbage:x) or vector(0)",
        set(),
    ) == {"garbage_predictons_total"}
    known = _known_metrics()
    rule = _one(docs, "PrometheusRule", "garbage-classifier")
    recorded = {r["record"] for g in rule["spec"]["groups"] for r in g["rules"] if "record" in r}
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    dashboard_map = _one(docs, "ConfigMap", "garbage-classifier-dashboard")
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["garbage-classifier.json"])
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("latency", "throughput", "class mix", "score", "drift", "live accuracy"):
        assert topic in titles
    exprs += [t["expr"] for p in panels for t in p["targets"]]
    unknown = set().union(*(_metrics_in(e, recorded) for e in exprs)) - known
    assert not unknown, f"series no code exposes: {sorted(unknown)}"
    assert any("garbage:" in e for e in exprs)  # the recording rules are used


def _promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip(
            "promtool not installed (Debian package prometheus); run scripts/install-pushgateway.sh"
        )
    return binary


def test_rules_pass_promtool_check_and_alert_unit_tests(docs, tmp_path: Path) -> None:
    promtool = _promtool()
    rule = _one(docs, "PrometheusRule", "garbage-classifier")
    (tmp_path / "rules.yaml").write_text(
        yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False)
    )
    check = subprocess.run(
        [promtool, "check", "rules", "rules.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    shutil.copy(Path(__file__).with_name("alerts_test.yaml"), tmp_path / "alerts_test.yaml")
    test = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert test.returncode == 0, test.stdout + test.stderr
