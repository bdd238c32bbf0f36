"""manifests/monitoring: renders, locks pods down, every series a rule or panel reads is scraped
(rule -> series -> producer -> PodMonitor/ServiceMonitor), alerts work (promtool)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import promql_parser
import pytest
import yaml
from manifests.cluster_model import CALLERS, model_container, predictor_pod, workload_pod
from manifests.conftest import render
from manifests.crd_schema import pinned_crds
from manifests.network_policy import Pod, ingress_allowed, selector_matches
from monitoring_helpers import kserve_headers, make_jpeg, v1_request, v1_response
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
RUNBOOK_PREFIX = "https://github.com/garbage-classifier/garbage-classifier/blob/main/"


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render("monitoring")


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
    assert seen == 4  # collector, Pushgateway, drift job, retrain job


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
    """They read the champion (class names; the drift job also its reference, the retrain job
    its dataset version) from MLflow at run time: the tracking URI, a writable work dir for the
    download, and egress to the MLflow server."""
    for kind, name in (
        ("Deployment", "garbage-collector"),
        ("CronJob", "garbage-drift"),
        ("CronJob", "garbage-retrain"),
    ):
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
    crds = pinned_crds()  # the Prometheus Operator CRDs that manifests/crds.lock pins
    customs = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {"PrometheusRule", "ServiceMonitor"} <= {d["kind"] for d in customs}
    for d in customs:
        assert crds.problems(d) == []
    origin = " (prometheus-operator v0.93.0 CRD)"

    monitor = copy.deepcopy(_one(docs, "ServiceMonitor", "garbage-pushgateway"))
    monitor["spec"]["endpoints"][0]["honourLabels"] = True
    monitor["spec"]["endpoints"][0]["scheme"] = "ftp"
    del monitor["spec"]["selector"]
    problems = crds.problems(monitor)
    for expected in (
        "spec.endpoints[0].honourLabels: unknown field",
        'spec.endpoints[0].scheme: "ftp" is not one of ["http", "https", "HTTP", "HTTPS"]',
        "spec.selector: required field is missing",
    ):
        assert f"ServiceMonitor/garbage-pushgateway: {expected}{origin}" in problems, problems

    rule = copy.deepcopy(_one(docs, "PrometheusRule", "garbage-classifier"))
    rules = rule["spec"]["groups"][1]["rules"]
    rules[0]["annotation"] = {}
    rules[1]["for"] = 5
    del rules[2]["expr"]
    problems = crds.problems(rule)
    for expected in (
        "spec.groups[1].rules[0].annotation: unknown field",
        "spec.groups[1].rules[1].for: must be string, not int 5",
        "spec.groups[1].rules[2].expr: required field is missing",
    ):
        assert f"PrometheusRule/garbage-classifier: {expected}{origin}" in problems, problems


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


# -- rule -> series -> producer -> scrape target -------------------------------------------------
# Every series an alert, a recording rule or a dashboard panel reads must come from a producer that
# a rendered PodMonitor/ServiceMonitor scrapes, or from a recording rule; otherwise the alert can
# never fire (or, under absent(), always fires). The producers are the real code, run once the
# way the cluster runs it; the targets come from each rendered overlay (monitoring included).

METRICS_PATH = "/metrics"
PROMETHEUS = CALLERS["prometheus"]
"""The Prometheus pods of kube-prometheus-stack (namespace monitoring, scripts/kind/up.sh)."""
MONITOR_SELECTOR = {"release": "kube-prometheus-stack"}
"""The labels kube-prometheus-stack's Prometheus selects PodMonitors and ServiceMonitors by unless
``*SelectorNilUsesHelmValues`` is false (the chart's default: true, release=<release name>)."""
QUERY_IN_TEMPLATE = re.compile(r'query\s+"((?:[^"\\]|\\.)*)"')
MATCH_OPS = (
    (promql_parser.MatchOp.Equal, "="),
    (promql_parser.MatchOp.NotEqual, "!="),
    (promql_parser.MatchOp.Re, "=~"),
    (promql_parser.MatchOp.NotRe, "!~"),
)
"""promql_parser's label match operators (not hashable) and how PromQL writes them."""


@dataclass(frozen=True)
class Target:
    """What a PodMonitor or ServiceMonitor has to select to scrape a producer.

    ``kind`` is ``Pod`` or ``Service``; ``labels`` and ``ports`` are that object's (a Service's
    named ports map to the container port they reach); ``pod`` is the pod behind it, for the
    NetworkPolicies; ``metrics_port`` is the container port the producer serves /metrics on.
    """

    kind: str
    name: str
    labels: Mapping[str, str]
    ports: Mapping[str, int]
    pod: Pod
    metrics_port: int


@dataclass(frozen=True)
class Producer:
    """A process Prometheus scrapes, with the samples (name, labels) of its real /metrics."""

    name: str
    samples: list[tuple[str, dict[str, str]]]
    target: Target


def _samples(exposition: str) -> list[tuple[str, dict[str, str]]]:
    return [
        (sample.name, dict(sample.labels))
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    ]


def _flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    assert len(values) == 1, f"expected one {name}=... in the container's args {args}"
    return values[0]


def _service_target(docs: list[dict], namespace: str, name: str, metrics_port: int) -> Target:
    """The Service ``namespace/name``, its ports resolved on the Deployment's pods it selects."""
    [service] = [
        d
        for d in docs
        if d["kind"] == "Service"
        and (d["metadata"]["namespace"], d["metadata"]["name"]) == (namespace, name)
    ]
    selected = [
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "Deployment"
        and d["metadata"]["namespace"] == namespace
        and selector_matches(
            {"matchLabels": service["spec"]["selector"]},
            d["spec"]["template"]["metadata"]["labels"],
        )
    ]
    assert len(selected) == 1, f"Service {name} selects the pods of Deployments {selected}"
    pod = workload_pod(docs, "Deployment", selected[0])
    ports = {
        p["name"]: pod.ports.get(p["targetPort"], p["targetPort"]) for p in service["spec"]["ports"]
    }
    return Target("Service", name, service["metadata"]["labels"], ports, pod, metrics_port)


def _not_selected(monitor: dict, target: Target) -> str | None:
    """Why Prometheus does not reach ``target`` through ``monitor``, or None."""
    where = f"{monitor['kind']} {monitor['metadata']['name']}"
    if not MONITOR_SELECTOR.items() <= (monitor["metadata"].get("labels") or {}).items():
        return f"{where} lacks the labels {MONITOR_SELECTOR} kube-prometheus-stack selects by"
    namespaces = monitor["spec"].get("namespaceSelector") or {}
    covered = namespaces.get("matchNames") or [monitor["metadata"]["namespace"]]
    if not namespaces.get("any") and target.pod.namespace not in covered:
        return f"{where} looks in namespaces {covered}, not in {target.pod.namespace}"
    if not selector_matches(monitor["spec"]["selector"], target.labels):
        return f"{where}'s selector {monitor['spec']['selector']} misses {dict(target.labels)}"
    return None


def _wrong_endpoint(endpoint: dict, target: Target) -> str | None:
    port = endpoint.get("port")
    if target.ports.get(port) != target.metrics_port:
        return (
            f"endpoint port {port!r} is not the /metrics port {target.metrics_port} among the "
            f"{target.kind}'s ports {dict(target.ports)}"
        )
    if endpoint.get("path", METRICS_PATH) != METRICS_PATH:
        return f"endpoint path {endpoint['path']} is not {METRICS_PATH}"
    return None


def _stored(labels: dict[str, str], added: dict[str, str], honor: bool) -> dict[str, str]:
    """A sample's labels as Prometheus stores them after the target's labels are added."""
    if honor:
        merged = {**added, **labels}
    else:  # a scraped label that collides with a target label is kept as exported_<name>
        merged = {**{f"exported_{k}" if k in added else k: v for k, v in labels.items()}, **added}
    return {k: v for k, v in merged.items() if v}  # an empty label is no label


def scraped(docs: list[dict], producer: Producer) -> tuple[list[dict[str, str]], list[str]]:
    """The label sets (``__name__`` included) Prometheus stores from ``producer`` through every
    monitor in ``docs`` that scrapes it; when none does, why not."""
    target = producer.target
    if not ingress_allowed(docs, PROMETHEUS, target.pod, target.metrics_port):
        return [], [
            f"the NetworkPolicies of {target.pod.namespace} do not admit Prometheus "
            f"(namespace {PROMETHEUS.namespace}) on port {target.metrics_port}"
        ]
    kind = "PodMonitor" if target.kind == "Pod" else "ServiceMonitor"
    monitors = [d for d in docs if d["kind"] == kind]
    if not monitors:
        return [], [f"no {kind} in the rendered manifests"]
    stored: list[dict[str, str]] = []
    misses = []
    for monitor in monitors:
        if (miss := _not_selected(monitor, target)) is not None:
            misses.append(miss)
            continue
        spec, meta = monitor["spec"], monitor["metadata"]
        job = f"{meta['namespace']}/{meta['name']}" if kind == "PodMonitor" else target.name
        added = {
            "job": target.labels.get(spec.get("jobLabel", ""), job),
            "namespace": target.pod.namespace,
            "instance": f"{target.name}:{target.metrics_port}",
        }
        for endpoint in spec["podMetricsEndpoints" if kind == "PodMonitor" else "endpoints"]:
            if (miss := _wrong_endpoint(endpoint, target)) is not None:
                misses.append(f"{kind} {meta['name']}: {miss}")
                continue
            honor = bool(endpoint.get("honorLabels"))
            stored += [
                {"__name__": name, **_stored(labels, added, honor)}
                for name, labels in producer.samples
            ]
    return stored, [] if stored else misses


def queries(docs: list[dict]) -> list[tuple[str, str]]:
    """(where, PromQL) of every rule expression, query in an alert's template and panel target."""
    rule = _one(docs, "PrometheusRule", "garbage-classifier")
    found = []
    for r in (r for g in rule["spec"]["groups"] for r in g["rules"]):
        where = f"alert {r['alert']}" if "alert" in r else f"recording rule {r['record']}"
        found.append((where, r["expr"]))
        for key, text in (r.get("annotations") or {}).items():
            found += [
                (f"{where} (annotation {key})", query.replace('\\"', '"'))
                for query in QUERY_IN_TEMPLATE.findall(text)
            ]
    dashboard_map = _one(docs, "ConfigMap", "garbage-classifier-dashboard")
    dashboard = json.loads(dashboard_map["data"]["garbage-classifier.json"])
    for panel in dashboard["panels"]:
        found += [(f"panel {panel['title']!r}", t["expr"]) for t in panel.get("targets", [])]
    return found


def series_read_by(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """The vector selectors of a PromQL expression: (series name, [(label, op, value)])."""
    found = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = [
                (m.name, next(text for op, text in MATCH_OPS if op == m.op), m.value)
                for m in node.matchers.matchers
            ]
            [name] = [node.name] if node.name else [v for k, _, v in matchers if k == "__name__"]
            found.append((name, [m for m in matchers if m[0] != "__name__"]))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def _matches(labels: Mapping[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    """Prometheus' label matching (regular expressions anchored; a missing label is "")."""
    for label, op, value in matchers:
        have = labels.get(label, "")
        hit = bool(re.fullmatch(value, have)) if "~" in op else have == value
        if hit is op.startswith("!"):
            return False
    return True


def unscraped_series(docs: list[dict], producers: list[Producer]) -> list[str]:
    """One line for each series a rule, alert template or panel reads that no recording rule in
    ``docs`` records and no producer scraped through ``docs`` provides with matching labels."""
    rule = _one(docs, "PrometheusRule", "garbage-classifier")
    recorded = {r["record"] for g in rule["spec"]["groups"] for r in g["rules"] if "record" in r}
    through = {p.name: scraped(docs, p) for p in producers}
    problems = []
    for where, expr in queries(docs):
        for name, matchers in series_read_by(expr):
            if name in recorded:
                continue  # what the recording rule reads is checked as its own query
            shown = ",".join(f'{k}{op}"{v}"' for k, op, v in matchers)
            series = f"{where}: {name}{{{shown}}}" if matchers else f"{where}: {name}"
            exposing = [p for p in producers if any(n == name for n, _ in p.samples)]
            stored = [s for p in exposing for s in through[p.name][0] if s["__name__"] == name]
            if not exposing:
                producers_named = ", ".join(p.name for p in producers)
                problems.append(
                    f"{series}: neither a recording rule nor a producer ({producers_named}) has it"
                )
            elif not stored:
                why = "; ".join(m for p in exposing for m in through[p.name][1])
                who = " and ".join(p.name for p in exposing)
                problems.append(f"{series}: {who} exposes it, but nothing scrapes it: {why}")
            elif not any(_matches(s, matchers) for s in stored):
                seen = sorted(
                    {str({k: v for k, v in s.items() if k != "__name__"}) for s in stored}
                )
                problems.append(
                    f"{series}: scraped, but no sample has these labels; Prometheus stores "
                    f"{'; '.join(seen[:3])}"
                )
    return problems


def _kserve_rest_app(model: Any) -> Any:
    """The REST application ``kserve.ModelServer`` serves ``model`` with on its HTTP port, the
    model's own routes first as ``serving.server.serve_model`` installs them.

    ``RESTServer.create_application`` does the same to KServe's module-level app; a fresh app keeps
    these routes out of the rest of the test session.
    """
    from fastapi import FastAPI
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    from serving.rest import install_routes

    repository = ModelRepository()
    repository.update(model)
    server = RESTServer(
        "kserve.model_server:app",
        DataPlane(model_registry=repository),
        ModelRepositoryExtension(model_registry=repository),
        http_port=0,
    )
    app = FastAPI()
    install_routes(app, model)
    server._register_endpoints(app)
    server._add_exception_handlers(app)
    return app


@pytest.fixture(scope="module", params=["overlays/kind", "overlays/gpu"])
def overlay_docs(request) -> list[dict[str, Any]]:
    """An overlay as rendered: serving and monitoring (KServe Standard mode, Knative mode)."""
    return render(request.param)


@pytest.fixture(scope="module")
def model_server(overlay_docs, tiny_model_dir: Path) -> Producer:
    """The serving model server started with the runtime's args, after a good and a bad request.

    KServe runs the ServingRuntime's kserve-container in the predictor pods, ``{{.Name}}`` in its
    args replaced by the InferenceService's name.
    """
    from fastapi.testclient import TestClient

    from serving.server import _parser, build_model
    from serving.settings import ServingSettings

    isvc = _one(overlay_docs, "InferenceService", "garbage-classifier")
    runtime = _one(overlay_docs, "ServingRuntime", isvc["spec"]["predictor"]["model"]["runtime"])
    argv = [
        a.replace("{{.Name}}", isvc["metadata"]["name"])
        for a in model_container(isvc, runtime)["args"]
    ]
    args, _ = _parser().parse_known_args(argv)
    settings = ServingSettings.from_sources({}, model_name=args.model_name)
    model = build_model(tiny_model_dir, settings)
    predict, headers = f"/v1/models/{model.name}:predict", {"Content-Type": "application/json"}
    try:
        with TestClient(_kserve_rest_app(model)) as client:
            good = client.post(
                predict, content=v1_request([make_jpeg((60, 160, 90))]), headers=headers
            )
            assert good.status_code == 200, good.text
            bad = client.post(predict, content=v1_request([b"not an image"]), headers=headers)
            assert bad.status_code == 400, bad.text
            exposition = client.get(METRICS_PATH).text
    finally:
        model.stop()
    pod = predictor_pod(isvc, runtime)
    target = Target("Pod", isvc["metadata"]["name"], pod.labels, pod.ports, pod, args.http_port)
    return Producer("the model server", _samples(exposition), target)


@pytest.fixture(scope="module")
def collector(overlay_docs, tiny_model_dir: Path, tmp_path_factory) -> Producer:
    """The collector with its Deployment's windows, after a logged request (sent now), its label
    (a random pick of a review) and an event it refuses."""
    from fastapi.testclient import TestClient

    from garbage.core.classifier import OnnxClassifier
    from monitoring.collector import EVENTS_PATH, CollectorAuth, create_app, parse_credentials
    from monitoring.store import InferenceStore

    [container] = _one(overlay_docs, "Deployment", "garbage-collector")["spec"]["template"]["spec"][
        "containers"
    ]
    windows = _flag(container["args"], "--windows").split(",")
    classes = OnnxClassifier.load(tiny_model_dir, device="cpu").classes
    store = InferenceStore(str(tmp_path_factory.mktemp("collector") / "inferences.db"))
    sent = datetime.now(UTC)
    try:
        auth = CollectorAuth(feedback=parse_credentials("labeller:test-token-0123456789", "test"))
        with TestClient(create_app(store, classes, windows=windows, auth=auth)) as client:
            for kind, body in (
                ("request", v1_request([make_jpeg((60, 160, 90))])),
                ("response", v1_response([classes[0]], classes)),
            ):
                headers = {
                    **kserve_headers("c-1", kind),
                    "Ce-Time": f"{sent:%Y-%m-%dT%H:%M:%S.%f}Z",
                }
                r = client.post(EVENTS_PATH, content=body, headers=headers)
                assert r.status_code == 202, r.text
            r = client.post(
                EVENTS_PATH, content=b"{}", headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 400, r.text
            r = client.post(
                "/feedback",
                json={"inference_id": "c-1", "label": classes[0], "selection": "random"},
                headers={"Authorization": "Bearer test-token-0123456789"},
            )
            assert r.status_code == 200, r.text
            exposition = client.get(METRICS_PATH).text
    finally:
        store.close()
    port = int(_flag(container["args"], "--port"))
    target = _service_target(overlay_docs, "garbage-monitoring", "garbage-collector", port)
    return Producer("the collector", _samples(exposition), target)


@pytest.fixture(scope="module")
def drift_job(overlay_docs, pushgateway: str) -> Producer:
    """What the drift job pushes (``run_drift_job``: ``drift_registry(result.summary())``) as a
    real Pushgateway exposes it, scraped where the CronJob's ``--pushgateway`` points."""
    import httpx
    import pandas as pd

    from monitoring.accuracy import live_accuracy
    from monitoring.drift import ColumnDrift, DriftResult, DriftSettings
    from monitoring.metrics import drift_registry, push

    settings = DriftSettings()
    columns = {
        f: ColumnDrift(f, "feature", settings.feature_method, settings.feature_threshold, 0.4, True)
        for f in settings.features
    }
    labelled = pd.DataFrame({"prediction": ["glass", "paper"], "true_label": ["glass", "glass"]})
    result = DriftResult(
        status="drift",
        drift_detected=True,
        drift_share=1.0,
        window_size=200,
        reference_size=1000,
        columns=columns,
        info={},
        embedding_components={},
        embedding_drift_share=0.5,
        class_reference="prediction",
        dropped_rows=0,
        settings=settings,
        live_accuracy=live_accuracy(labelled, ["glass", "paper"]),
    )
    push(drift_registry(result.summary()), pushgateway)
    exposition = httpx.get(f"{pushgateway}{METRICS_PATH}").text

    [job] = _one(overlay_docs, "CronJob", "garbage-drift")["spec"]["jobTemplate"]["spec"][
        "template"
    ]["spec"]["containers"]
    url = urlsplit(_flag(job["args"], "--pushgateway"))
    service, namespace = url.hostname.split(".")[:2]
    ports = {p["port"] for p in _one(overlay_docs, "Service", service)["spec"]["ports"]}
    assert url.port in ports, f"the drift job pushes to port {url.port}; Service {service}: {ports}"
    [gateway] = _one(overlay_docs, "Deployment", service)["spec"]["template"]["spec"]["containers"]
    listen = int(_flag(gateway["args"], "--web.listen-address").rsplit(":", 1)[1])
    target = _service_target(overlay_docs, namespace, service, listen)
    return Producer("the drift job (through the Pushgateway)", _samples(exposition), target)


def test_queries_and_the_series_they_read(docs) -> None:
    assert series_read_by(
        'sum by (label) (rate(garbage_x_total{a="b", c=~"d|e"}[5m])) > 0 unless on() '
        'max(garbage:y) or vector(0) or absent({__name__="z", w!="v"})'
    ) == [
        ("garbage_x_total", [("a", "=", "b"), ("c", "=~", "d|e")]),
        ("garbage:y", []),
        ("z", [("w", "!=", "v")]),
    ]
    assert _matches({"a": "b"}, [("a", "=~", "b|c"), ("x", "=", ""), ("a", "!~", "c")])
    assert not _matches({"a": "bc"}, [("a", "=~", "b")])
    found = dict(queries(docs))
    assert found["alert GarbageDataDrift (annotation description)"] == (
        'max(garbage_drift_share{job="garbage-drift"})'
    )
    assert (
        "panel 'Throughput'" in found
        and "recording rule garbage:rejected_requests:ratio_5m" in found
    )


@pytest.mark.integration
def test_every_series_a_rule_or_panel_reads_is_scraped(
    overlay_docs, model_server, collector, drift_job
) -> None:
    problems = unscraped_series(overlay_docs, [model_server, collector, drift_job])
    assert not problems, "series that no scraped producer provides:\n" + "\n".join(problems)


@pytest.mark.integration
def test_a_series_nothing_scrapes_fails_and_says_what_is_missing(
    overlay_docs, model_server, collector, drift_job
) -> None:
    producers = [model_server, collector, drift_job]
    without_podmonitor = [d for d in overlay_docs if d["kind"] != "PodMonitor"]
    problems = unscraped_series(without_podmonitor, producers)
    assert (
        'alert GarbageNoTraffic: garbage_predictions_total{model_name="garbage-classifier"}: '
        "the model server exposes it, but nothing scrapes it: no PodMonitor in the rendered "
        "manifests"
    ) in problems, problems
    assert all("the model server exposes it" in p for p in problems), problems

    without_honor_labels = copy.deepcopy(overlay_docs)
    monitor = _one(without_honor_labels, "ServiceMonitor", "garbage-pushgateway")
    del monitor["spec"]["endpoints"][0]["honorLabels"]
    problems = unscraped_series(without_honor_labels, producers)
    assert any(
        p.startswith('alert GarbageDataDrift: garbage_drift_detected{job="garbage-drift"}: scraped')
        and "'exported_job': 'garbage-drift'" in p
        for p in problems
    ), problems

    unlabelled = copy.deepcopy(overlay_docs)
    del _one(unlabelled, "PodMonitor", "garbage-predictor")["metadata"]["labels"]["release"]
    problems = unscraped_series(unlabelled, producers)
    assert any(
        "nothing scrapes it: PodMonitor garbage-predictor lacks the labels" in p for p in problems
    ), problems


def test_the_dashboard_is_loaded_and_covers_every_topic(docs) -> None:
    dashboard_map = _one(docs, "ConfigMap", "garbage-classifier-dashboard")
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["garbage-classifier.json"])
    titles = " ".join(p["title"].lower() for p in dashboard["panels"] if p["type"] != "row")
    for topic in ("latency", "throughput", "class mix", "score", "drift", "live accuracy"):
        assert topic in titles
    assert any("garbage:" in expr for where, expr in queries(docs) if where.startswith("panel"))


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
    shutil.copy(REPO / "monitoring/rules/payload-logger.rules.yaml", tmp_path)
    check = subprocess.run(
        [promtool, "check", "rules", "rules.yaml", "payload-logger.rules.yaml"],
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
