"""Traffic that flows: predictor ports by KServe's rules; NetworkPolicies admitting exactly those.

No Kubernetes API server (nor KServe, Knative or a CNI) runs on these machines, so the cluster
half is checked by construction, in three parts:

1. A small evaluator of NetworkPolicy semantics (plain functions, tested on its own below): a pod
   is isolated in a direction once a policy of its namespace selects it for that direction, and
   then admits only what one rule of one such policy allows (any peer of the rule AND any port of
   it; an absent list means all). It stands in for the CNI, which cannot run here.
2. KServe v0.20's rules for which ports the predictor pods listen on and which ports its Service
   exposes, derived from the rendered InferenceService and ServingRuntime (each rule names the
   upstream file it comes from; KServe at v0.20, Knative Serving at the 1.21 line it installs).
3. Checks of the rendered overlays (kind: Standard mode, gpu: Knative mode): on every port the
   predictor pods listen on, the NetworkPolicies admit exactly the callers that need it. Who they
   are is written down once, in :func:`required_callers`:

   * prediction traffic (the Service's targetPorts, gRPC among them where it is exposed) from the
     ingress gateways of the mode (:data:`GATEWAYS`) and from namespaces labelled
     ``garbage-classifier/inference-client: "true"`` (:data:`CLIENT_LABEL`, the one way to become a
     client; the kind e2e client's namespace ``garbage-e2e-client`` has it);
   * the model server's ``/metrics`` (its http port) from the Prometheus pods of
     kube-prometheus-stack in namespace ``monitoring``, which scrape it through a PodMonitor;
   * in Knative mode, the activator (the request path from zero and in bursts) and the
     autoscaler (queue-proxy's metrics).

   The monitoring collector needs nothing: no code in ``monitoring/`` calls the predictor (it is
   called, by the payload-logger agent). Kubelet probes come from the node, which NetworkPolicy
   does not restrict, and the agent and queue-proxy reach the model server over the pod's
   loopback, which it does not see either.
"""

from __future__ import annotations

from typing import Any

import pytest
from manifests.cluster_model import (
    AGENT_PORT,
    CALLERS,
    KFP_API_GRPC_PORT,
    KFP_API_HTTP_PORT,
    KNATIVE_H2C_PORT,
    KNATIVE_HTTP1_PORT,
    MODEL_CONTAINER,
    OVERLAY_MODES,
    ServicePort,
    deployment_mode,
    knative_user_port,
    model_container,
    model_server_listeners,
    one_doc,
    predictor_listeners,
    predictor_pod,
    predictor_service_ports,
    required_callers,
    serving_objects,
    workload_pod,
)
from manifests.network_policy import (
    NAMESPACE_NAME_LABEL,
    Pod,
    _selecting,
    connection_allowed,
    ingress_allowed,
    selector_matches,
)


def _policy(name: str, spec: dict[str, Any], namespace: str = "app") -> dict[str, Any]:
    return {
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


DENY_ALL = _policy("deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
WEB = Pod("app", {"role": "web"}, ports={"http": 8080})
CLIENT_IN_APP = Pod("app", {"role": "client"})
SCRAPER = Pod("obs", {"role": "scraper"}, {"team": "obs"})
STRANGER = Pod("obs", {"role": "other"}, {"team": "obs"})
ELSEWHERE = Pod("elsewhere", {"role": "scraper"})


def _web_ingress(*rules: dict[str, Any]) -> dict[str, Any]:
    return _policy("web", {"podSelector": {"matchLabels": {"role": "web"}}, "ingress": list(rules)})


@pytest.mark.parametrize(
    ("policies", "source", "port", "allowed"),
    [
        pytest.param([], STRANGER, 8080, True, id="no-policy-no-isolation"),
        pytest.param([DENY_ALL], CLIENT_IN_APP, 8080, False, id="default-deny"),
        pytest.param(
            [DENY_ALL, _policy("eg", {"podSelector": {}, "egress": [{}]}, namespace="obs")],
            STRANGER,
            8080,
            False,
            id="an-egress-policy-elsewhere-admits-nothing-here",
        ),
        pytest.param(
            [_policy("eg", {"podSelector": {}, "policyTypes": ["Egress"]})],
            STRANGER,
            8080,
            True,
            id="egress-only-policy-leaves-ingress-open",
        ),
        pytest.param(
            [
                DENY_ALL,
                _web_ingress({"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}),
            ],
            CLIENT_IN_APP,
            9999,
            True,
            id="rule-without-ports-admits-every-port",
        ),
        pytest.param(
            [
                DENY_ALL,
                _web_ingress({"from": [{"podSelector": {"matchLabels": {"role": "scraper"}}}]}),
            ],
            SCRAPER,
            8080,
            False,
            id="pod-selector-alone-means-own-namespace",
        ),
        pytest.param(
            [
                DENY_ALL,
                _web_ingress(
                    {
                        "from": [
                            {
                                "namespaceSelector": {"matchLabels": {"team": "obs"}},
                                "podSelector": {"matchLabels": {"role": "scraper"}},
                            }
                        ]
                    }
                ),
            ],
            STRANGER,
            8080,
            False,
            id="namespace-AND-pod-selector-in-one-peer",
        ),
        pytest.param(
            [
                DENY_ALL,
                _web_ingress(
                    {
                        "from": [
                            {"namespaceSelector": {"matchLabels": {"team": "obs"}}},
                            {"podSelector": {"matchLabels": {"role": "scraper"}}},
                        ]
                    }
                ),
            ],
            STRANGER,
            8080,
            True,
            id="namespace-OR-pod-selector-in-two-peers",
        ),
        pytest.param(
            [
                DENY_ALL,
                _web_ingress({"from": [{"namespaceSelector": {}}], "ports": [{"port": 8080}]}),
            ],
            ELSEWHERE,
            8081,
            False,
            id="peer-AND-port",
        ),
        pytest.param(
            [DENY_ALL, _web_ingress({"ports": [{"port": "http"}]})],
            ELSEWHERE,
            8080,
            True,
            id="no-from-admits-every-source-on-a-named-port",
        ),
        pytest.param(
            [DENY_ALL, _web_ingress({"ports": [{"port": 8080, "protocol": "UDP"}]})],
            ELSEWHERE,
            8080,
            False,
            id="protocol-must-match",
        ),
        pytest.param(
            [DENY_ALL, _web_ingress({"ports": [{"port": 8000, "endPort": 8100}]})],
            ELSEWHERE,
            8080,
            True,
            id="port-range",
        ),
        pytest.param(
            [
                DENY_ALL,
                _web_ingress(
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchExpressions": [
                                        {
                                            "key": NAMESPACE_NAME_LABEL,
                                            "operator": "In",
                                            "values": ["obs", "x"],
                                        },
                                        {"key": "team", "operator": "Exists"},
                                        {"key": "tier", "operator": "DoesNotExist"},
                                        {"key": "team", "operator": "NotIn", "values": ["dev"]},
                                    ]
                                }
                            }
                        ]
                    }
                ),
            ],
            STRANGER,
            8080,
            True,
            id="match-expressions-and-the-namespace-name-label",
        ),
    ],
)
def test_the_evaluator_follows_networkpolicy_semantics(policies, source, port, allowed) -> None:
    assert ingress_allowed(policies, source, WEB, port) is allowed


def test_the_evaluator_needs_both_ends_and_refuses_what_it_does_not_model() -> None:
    out = _policy("out", {"podSelector": {}, "policyTypes": ["Egress"]}, namespace="obs")
    assert ingress_allowed([out], SCRAPER, WEB, 8080)
    assert not connection_allowed([out], SCRAPER, WEB, 8080)  # the source's egress is denied
    with pytest.raises(ValueError, match="ipBlock"):
        ingress_allowed(
            [_web_ingress({"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]})], SCRAPER, WEB, 1
        )
    with pytest.raises(ValueError, match="Gt"):
        selector_matches({"matchExpressions": [{"key": "a", "operator": "Gt"}]}, {})


def _isvc(mode: str, **predictor: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "m", "annotations": {"serving.kserve.io/deploymentMode": mode}},
        "spec": {"predictor": {"model": {"runtime": "r"}, **predictor}},
    }


def _runtime(*ports: tuple[str, int], args: tuple[str, ...] = ()) -> dict[str, Any]:
    container = {"name": MODEL_CONTAINER, "args": list(args)}
    container["ports"] = [{"name": n, "containerPort": p} for n, p in ports]
    return {"spec": {"containers": [container]}}


LOGGER = {"logger": {"mode": "all", "url": "http://collector/events"}}


def test_kserve_standard_mode_service_rules() -> None:
    one_port = _runtime(("http1", 8080))
    assert predictor_service_ports(_isvc("Standard"), one_port) == [ServicePort("http1", 80, 8080)]
    assert predictor_service_ports(_isvc("RawDeployment", **LOGGER), one_port) == [
        ServicePort("http1", 80, AGENT_PORT)
    ]
    two_ports = _runtime(("http1", 8080), ("h2c", 8081))
    assert predictor_service_ports(_isvc("Standard", batcher={"maxBatchSize": 8}), two_ports) == [
        ServicePort("http1", 80, AGENT_PORT),
        ServicePort("h2c", 8081, 8081, "kubernetes.io/h2c"),
    ]
    assert predictor_service_ports(_isvc("Standard"), _runtime()) == [ServicePort("m", 80, 8080)]


def test_kserve_pod_listeners_follow_the_flags_the_agent_and_queue_proxy() -> None:
    standard = predictor_listeners(
        _isvc("Standard"), _runtime(("http1", 9000), args=("--http_port=9000",))
    )
    assert [listener.port for listener in standard] == [9000, 8081]
    off = _runtime(("http1", 8080), args=("--enable_grpc=false",))
    knative = predictor_listeners(_isvc("Serverless", **LOGGER), off)
    assert [listener.port for listener in knative] == [8080, AGENT_PORT, 8012, 8022, 9090, 9091]
    grpc_only = _runtime(("h2c", 8081))
    assert KNATIVE_H2C_PORT in {
        listener.port for listener in predictor_listeners(_isvc("Knative"), grpc_only)
    }
    assert predictor_service_ports(_isvc("Knative"), grpc_only) == [
        ServicePort("http2", 81, KNATIVE_H2C_PORT, "kubernetes.io/h2c")
    ]


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        (_runtime(("http1", 8080), ("h2c", 8081)), "admits one container port"),
        (_runtime(("grpc", 8081)), "names h2c and http1 only"),
        (_runtime(("http1", 8012)), "reserved"),
    ],
)
def test_knative_refuses_what_its_webhook_refuses(runtime, message) -> None:
    with pytest.raises(ValueError, match=message):
        predictor_listeners(_isvc("Knative"), runtime)


def test_a_missing_deployment_mode_is_an_error() -> None:
    isvc = _isvc("Standard")
    isvc["metadata"]["annotations"] = {}
    with pytest.raises(AssertionError, match="deploymentMode"):
        deployment_mode(isvc)


@pytest.fixture(params=sorted(OVERLAY_MODES))
def overlay(request, rendered) -> tuple[str, list[dict[str, Any]]]:
    return request.param, rendered[request.param]


def test_each_overlay_runs_the_mode_its_checks_assume(overlay) -> None:
    target, docs = overlay
    assert deployment_mode(one_doc(docs, "InferenceService")) == OVERLAY_MODES[target]


def test_every_exposed_port_has_a_listener(overlay) -> None:
    """Declared container ports and Service targetPorts lead to a port something listens on."""
    target, docs = overlay
    isvc, runtime = serving_objects(docs)
    listening = {listener.port for listener in predictor_listeners(isvc, runtime)}
    declared = {p["containerPort"] for p in model_container(isvc, runtime).get("ports") or []}
    targets = {s.target_port for s in predictor_service_ports(isvc, runtime)}
    assert declared | targets <= listening, (
        f"{target}: ports {sorted((declared | targets) - listening)} are declared or exposed, "
        f"but nothing listens there (listening: {sorted(listening)})"
    )


def test_standard_mode_exposes_rest_through_the_logger_and_grpc_as_h2c(rendered) -> None:
    isvc, runtime = serving_objects(rendered["overlays/kind"])
    assert predictor_service_ports(isvc, runtime) == [
        ServicePort("http1", 80, AGENT_PORT),
        ServicePort("h2c", 8081, 8081, "kubernetes.io/h2c"),
    ]


def test_knative_mode_has_one_rest_port_and_no_grpc_server(rendered) -> None:
    isvc, runtime = serving_objects(rendered["overlays/gpu"])
    assert knative_user_port(model_container(isvc, runtime)) == {
        "name": "http1",
        "containerPort": 8080,
        "protocol": "TCP",
    }
    assert [
        listener.port for listener in model_server_listeners(model_container(isvc, runtime))
    ] == [8080]
    assert predictor_service_ports(isvc, runtime) == [ServicePort("http", 80, KNATIVE_HTTP1_PORT)]


def test_policies_admit_exactly_the_callers_each_port_needs(overlay) -> None:
    target, docs = overlay
    isvc, runtime = serving_objects(docs)
    predictor = predictor_pod(isvc, runtime)
    needed = required_callers(isvc, runtime)
    listeners = predictor_listeners(isvc, runtime)
    assert set(needed) <= {listener.port for listener in listeners}
    problems = []
    for listener in listeners:
        for name, caller in CALLERS.items():
            allowed = ingress_allowed(docs, caller, predictor, listener.port)
            wanted = name in needed.get(listener.port, set())
            if allowed != wanted:
                verb = "deny" if wanted else "admit"
                problems.append(
                    f"{listener.port} ({listener.what}): the policies {verb} {name} "
                    f"({caller.namespace})"
                )
    assert not problems, f"{target}:\n" + "\n".join(problems)


def test_predictor_policies_name_only_ports_something_listens_on(overlay) -> None:
    target, docs = overlay
    isvc, runtime = serving_objects(docs)
    predictor = predictor_pod(isvc, runtime)
    listening = {listener.port for listener in predictor_listeners(isvc, runtime)}
    named = {
        port["port"]
        for policy in _selecting(docs, predictor, "Ingress")
        for rule in policy["spec"].get("ingress") or []
        for port in rule.get("ports") or []
    }
    assert named <= listening, f"{target}: policies open {sorted(named - listening)}, unused"


def test_the_predictors_own_calls_are_admitted_at_both_ends(overlay) -> None:
    """The storage initializer -> MinIO, the logger agent -> collector, DNS; nothing else."""
    target, docs = overlay
    isvc, runtime = serving_objects(docs)
    predictor = predictor_pod(isvc, runtime)
    collector = workload_pod(docs, "Deployment", "garbage-collector")
    minio = workload_pod(docs, "Deployment", "minio")
    mlflow = workload_pod(docs, "Deployment", "mlflow")
    dns = Pod("kube-system", {"k8s-app": "kube-dns"})
    logger_url = isvc["spec"]["predictor"]["logger"]["url"]
    assert logger_url.startswith(f"http://garbage-collector.{collector.namespace}.svc")
    service_target = one_doc(docs, "Service", "garbage-collector")["spec"]["ports"][0]["targetPort"]
    collector_port = collector.ports.get(service_target, service_target)
    assert connection_allowed(docs, predictor, collector, collector_port), target
    assert connection_allowed(docs, predictor, minio, 9000), target
    assert connection_allowed(docs, predictor, dns, 53, "UDP"), target
    assert not connection_allowed(docs, predictor, mlflow, 5000), target
    assert not connection_allowed(docs, predictor, collector, 9091), target


def test_the_retrain_jobs_calls_are_admitted_and_nothing_else(overlay) -> None:
    """The retrain job reaches the KFP API (HTTP), MLflow, MinIO and DNS; nothing reaches it; the
    pipeline's steps (fetch, split) reach MinIO for the dataset versions, other pods of kubeflow
    do not."""
    target, docs = overlay
    retrain = workload_pod(docs, "CronJob", "garbage-retrain")
    kfp = CALLERS["kfp api server"]
    minio = workload_pod(docs, "Deployment", "minio")
    mlflow = workload_pod(docs, "Deployment", "mlflow")
    collector = workload_pod(docs, "Deployment", "garbage-collector")
    pushgateway = workload_pod(docs, "Deployment", "garbage-pushgateway")
    dns = Pod("kube-system", {"k8s-app": "kube-dns"})
    assert connection_allowed(docs, retrain, kfp, KFP_API_HTTP_PORT), target
    assert connection_allowed(docs, retrain, mlflow, 5000), target
    assert connection_allowed(docs, retrain, minio, 9000), target
    assert connection_allowed(docs, retrain, dns, 53, "UDP"), target
    assert not connection_allowed(docs, retrain, kfp, KFP_API_GRPC_PORT), target
    assert not connection_allowed(docs, retrain, CALLERS["other workflow pod in kubeflow"], 8888)
    assert not connection_allowed(docs, retrain, pushgateway, 9091), target
    assert not connection_allowed(docs, retrain, collector, 8080), target
    assert not connection_allowed(docs, retrain, CALLERS["unlabelled namespace"], 443), target
    for name in ("prometheus", "monitoring collector", "other pod in garbage-monitoring"):
        assert not ingress_allowed(docs, CALLERS[name], retrain, 8080), f"{target}: {name}"
    assert connection_allowed(docs, CALLERS["pipeline step"], minio, 9000), target
    assert not connection_allowed(docs, CALLERS["other workflow pod in kubeflow"], minio, 9000)
    assert not connection_allowed(docs, CALLERS["kfp api server"], minio, 9000), target
