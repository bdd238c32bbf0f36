"""The cluster as the manifest tests model it: KServe v0.20's rules for the predictor's ports and
Service (each rule names the upstream file it comes from), the callers that exist on the cluster,
the pods the rendered workloads run, and who needs to reach what (:func:`access_needs`).
Importable as ``manifests.cluster_model``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from manifests.network_policy import CLIENT_LABEL, Pod

#: The deployment mode each overlay runs KServe in.
OVERLAY_MODES = {"overlays/kind": "Standard", "overlays/gpu": "Knative"}

MODEL_CONTAINER = "kserve-container"
"""constants.InferenceServiceContainerName (kserve pkg/constants/constants.go)."""
PREDICTOR_POD_LABEL = "serving.kserve.io/inferenceservice"
"""constants.InferenceServicePodLabelKey: KServe labels every predictor pod with the
InferenceService's name (kserve pkg/constants/constants.go)."""
SERVICE_HTTP_PORT = 80
"""constants.CommonDefaultHttpPort (kserve pkg/constants/constants.go)."""
AGENT_PORT = 9081
"""constants.InferenceServiceDefaultAgentPort (kserve pkg/constants/constants.go)."""
MODEL_SERVER_DEFAULTS = {"http_port": 8080, "grpc_port": 8081, "enable_grpc": "true"}
"""The flags of KServe's Python ModelServer (kserve/model_server.py in the SDK) that bind ports."""
KNATIVE_HTTP1_PORT, KNATIVE_H2C_PORT = 8012, 8013
"""BackendHTTPPort, BackendHTTP2Port (knative.dev/networking pkg/apis/networking/ports.go)."""
KNATIVE_SERVICE_PORTS = {"http1": ("http", 80), "h2c": ("http2", 81)}
"""ServicePortName / ServicePort by protocol (knative.dev/networking pkg/apis/networking)."""
KNATIVE_ADMIN_PORT, KNATIVE_AUTOSCALER_PORT, KNATIVE_USER_METRICS_PORT = 8022, 9090, 9091
"""QueueAdminPort, AutoscalingQueueMetricsPort, UserQueueMetricsPort (knative.dev/networking)."""
KNATIVE_RESERVED_PORTS = {
    KNATIVE_HTTP1_PORT,
    KNATIVE_H2C_PORT,
    KNATIVE_ADMIN_PORT,
    KNATIVE_AUTOSCALER_PORT,
    KNATIVE_USER_METRICS_PORT,
    8008,  # profiling.ProfilingPort
}
"""Ports a user container may not use (knative.dev/serving pkg/apis/serving/k8s_validation.go)."""
KNATIVE_PORT_NAMES = {"h2c", "http1", ""}
"""The only container port names Knative admits (k8s_validation.go ``validPortNames``)."""
KNATIVE_USER_PORT_NAME = "user-port"
"""Knative renames the user container's port in the revision's Deployment (UserPortName)."""


@dataclass(frozen=True)
class Listener:
    """A port some container of the predictor pod listens on, and why."""

    port: int
    container: str
    what: str


@dataclass(frozen=True)
class ServicePort:
    """One port of the Service that fronts the predictor pods."""

    name: str
    port: int
    target_port: int
    app_protocol: str | None = None


def deployment_mode(isvc: Mapping[str, Any]) -> str:
    """``Standard`` or ``Knative``, from the ``serving.kserve.io/deploymentMode`` annotation.

    KServe v0.20 names the modes Standard and Knative and still reads the old names RawDeployment
    and Serverless (kserve pkg/constants/constants.go ``DeploymentModeType``). Without the
    annotation the controller's configured default decides, so the ports could not be derived.

    Raises:
        AssertionError: No (known) deployment mode on the InferenceService.
    """
    annotations = isvc["metadata"].get("annotations") or {}
    mode = annotations.get("serving.kserve.io/deploymentMode")
    known = {"Standard": "Standard", "RawDeployment": "Standard"}
    known |= {"Knative": "Knative", "Serverless": "Knative"}
    assert mode in known, (
        f"InferenceService {isvc['metadata']['name']}: deployment mode {mode!r}; set the "
        "serving.kserve.io/deploymentMode annotation to Standard or Knative in the overlay, so "
        "that the cluster's default cannot change which ports the predictor exposes"
    )
    return known[mode]


def model_container(isvc: Mapping[str, Any], runtime: Mapping[str, Any]) -> dict[str, Any]:
    """The predictor pod's first container: the runtime's kserve-container.

    KServe merges ``spec.predictor.model`` into the runtime's container
    (pkg/controller/v1beta1/inferenceservice/utils/utils.go ``MergeRuntimeContainers``); this
    derivation supports the case the project has, where the model sets no ports or args.

    Raises:
        AssertionError: The model overrides ports or args, or the runtime has no kserve-container.
    """
    model = isvc["spec"]["predictor"]["model"]
    assert not {"ports", "args", "command"} & set(model), (
        "spec.predictor.model sets ports/args: extend model_container to merge them as KServe does"
    )
    (container,) = [c for c in runtime["spec"]["containers"] if c["name"] == MODEL_CONTAINER]
    return container


def _flags(args: Iterable[str]) -> dict[str, str]:
    flags: dict[str, str] = {}
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            name, value = arg[2:].split("=", 1)
            flags[name] = value
    return flags


def model_server_listeners(container: Mapping[str, Any]) -> list[Listener]:
    """What the serving image's KServe ModelServer binds, from its ``--flag=value`` args.

    REST (v1, v2, health, ``/metrics``) on ``--http_port``; gRPC v2 on ``--grpc_port`` unless
    ``--enable_grpc=false`` (kserve/model_server.py; serving/server.py passes both ports on).
    """
    flags = {**MODEL_SERVER_DEFAULTS, **_flags(container.get("args") or [])}
    listeners = [Listener(int(flags["http_port"]), container["name"], "model server REST")]
    if flags["enable_grpc"].lower() not in ("false", "0", "no", "off"):
        listeners.append(Listener(int(flags["grpc_port"]), container["name"], "model server gRPC"))
    return listeners


def knative_user_port(container: Mapping[str, Any]) -> dict[str, Any]:
    """The one port Knative admits on the user container.

    knative.dev/serving pkg/apis/serving/k8s_validation.go (``validateContainerPorts``,
    ``validateContainersPorts``): at most one container port across the revision's containers,
    named ``http1``, ``h2c`` or nothing, not one of the queue-proxy's reserved ports.

    Raises:
        ValueError: The container's ports would be refused by Knative's admission webhook.
    """
    ports = container.get("ports") or []
    if len(ports) != 1:
        raise ValueError(
            f"Knative admits one container port, {container['name']} declares "
            f"{[p['containerPort'] for p in ports]}: declare exactly one (http1 for REST, h2c "
            "for gRPC)"
        )
    (port,) = ports
    if port.get("name", "") not in KNATIVE_PORT_NAMES:
        raise ValueError(f"Knative admits port names h2c and http1 only, not {port['name']!r}")
    if port["containerPort"] in KNATIVE_RESERVED_PORTS:
        raise ValueError(f"port {port['containerPort']} is reserved for Knative's queue-proxy")
    return port


def predictor_listeners(isvc: Mapping[str, Any], runtime: Mapping[str, Any]) -> list[Listener]:
    """Every port a predictor pod listens on (the pod's network namespace, all containers).

    * the model server: :func:`model_server_listeners`;
    * KServe's agent when ``spec.predictor.logger`` or ``batcher`` is set: container ``agent``,
      port ``agent-port`` 9081 (kserve pkg/webhook/admission/pod/agent_injector.go ``InjectAgent``;
      in Knative mode it also points queue-proxy's USER_PORT at 9081);
    * in Knative mode, queue-proxy: its serving port (8012 for an http1 user port, 8013 for h2c),
      8022 (admin), 9090 (autoscaler metrics), 9091 (user metrics) (knative.dev/serving
      pkg/reconciler/revision/resources/queue.go). Profiling (8008) and the system-internal TLS
      port are off by default and not modelled.
    """
    mode = deployment_mode(isvc)
    container = model_container(isvc, runtime)
    listeners = model_server_listeners(container)
    predictor = isvc["spec"]["predictor"]
    if predictor.get("logger") or predictor.get("batcher"):
        listeners.append(Listener(AGENT_PORT, "agent", "KServe agent (payload logger)"))
    if mode == "Knative":
        user = knative_user_port(container)
        serving = KNATIVE_H2C_PORT if user.get("name") == "h2c" else KNATIVE_HTTP1_PORT
        listeners += [
            Listener(serving, "queue-proxy", "Knative requests"),
            Listener(KNATIVE_ADMIN_PORT, "queue-proxy", "Knative admin"),
            Listener(KNATIVE_AUTOSCALER_PORT, "queue-proxy", "autoscaler metrics"),
            Listener(KNATIVE_USER_METRICS_PORT, "queue-proxy", "queue-proxy user metrics"),
        ]
    return listeners


def predictor_service_ports(
    isvc: Mapping[str, Any], runtime: Mapping[str, Any]
) -> list[ServicePort]:
    """The ports of the Service in front of the predictor pods, and where they lead.

    Standard mode, KServe's own Service (kserve pkg/controller/v1beta1/inferenceservice/
    reconcilers/service/service_reconciler.go ``createDefaultSvc``): port 80 -> the first
    container's first port (8080 when it declares none); every further port i > 0 as
    port == targetPort == containerPort; with a batcher or a logger, port 80's targetPort becomes
    the agent's 9081; a port whose name contains ``grpc`` or ``h2c`` gets appProtocol
    ``kubernetes.io/h2c`` (``isGrpcPort``).

    Knative mode, the revision's Service (knative.dev/networking pkg/apis/networking): 80 "http"
    -> 8012 for an http1 revision, 81 "http2" -> 8013 for h2c; clients usually reach it through
    the Knative ingress, which routes to the same queue-proxy port.
    """
    container = model_container(isvc, runtime)
    if deployment_mode(isvc) == "Knative":
        user = knative_user_port(container)
        protocol = "h2c" if user.get("name") == "h2c" else "http1"
        name, port = KNATIVE_SERVICE_PORTS[protocol]
        target = KNATIVE_H2C_PORT if protocol == "h2c" else KNATIVE_HTTP1_PORT
        return [ServicePort(name, port, target, "kubernetes.io/h2c" if protocol == "h2c" else None)]

    def app_protocol(port: Mapping[str, Any]) -> str | None:
        named = port.get("name", "")
        return "kubernetes.io/h2c" if "grpc" in named or "h2c" in named else None

    ports = container.get("ports") or []
    if not ports:
        services = [ServicePort(isvc["metadata"]["name"], SERVICE_HTTP_PORT, 8080)]
    else:
        first = ports[0]
        services = [
            ServicePort(
                first.get("name", ""),
                SERVICE_HTTP_PORT,
                first["containerPort"],
                app_protocol(first),
            )
        ]
        services += [
            ServicePort(p.get("name", ""), p["containerPort"], p["containerPort"], app_protocol(p))
            for p in ports[1:]
        ]
    predictor = isvc["spec"]["predictor"]
    if predictor.get("logger") or predictor.get("batcher"):
        first_port = services[0]
        services[0] = ServicePort(
            first_port.name, first_port.port, AGENT_PORT, first_port.app_protocol
        )
    return services


GATEWAYS = {
    # Gateway API through Envoy Gateway (KServe v0.20's Standard-mode quick install:
    # hack/setup/quick-install kserve-standard-mode-full-install: envoy-gateway, gateway-api-gw;
    # Envoy Gateway runs the proxies of the kserve/kserve-ingress-gateway Gateway in its own
    # namespace), or KServe's Ingress of class istio (inferenceservice-config ingressClassName).
    "Standard": ("envoy-gateway-system", "istio-system"),
    # Knative's networking layer in KServe's Knative-mode install (kserve-knative-mode-dependency-
    # install: istio, knative-operator): net-istio's istio-ingressgateway and knative-local-gateway.
    "Knative": ("istio-system",),
}
CALLERS = {
    "gateway envoy-gateway-system": Pod(
        "envoy-gateway-system", {"app.kubernetes.io/name": "envoy"}
    ),
    "gateway istio-system": Pod("istio-system", {"istio": "ingressgateway"}),
    "inference client": Pod("garbage-e2e-client", {"job-name": "e2e"}, {CLIENT_LABEL: "true"}),
    "prometheus": Pod("monitoring", {"app.kubernetes.io/name": "prometheus"}),
    "knative activator": Pod("knative-serving", {"app": "activator"}),
    "knative autoscaler": Pod("knative-serving", {"app": "autoscaler"}),
    # callers that need nothing from the predictor pods
    "monitoring collector": Pod(
        "garbage-monitoring", {"app.kubernetes.io/name": "garbage-collector"}
    ),
    "grafana": Pod("monitoring", {"app.kubernetes.io/name": "grafana"}),
    "kserve controller": Pod("kserve", {"control-plane": "kserve-controller-manager"}),
    "knative controller": Pod("knative-serving", {"app": "controller"}),
    # KFP's Argo compiler labels every pod of a v2 run (driver and launcher alike) in the workflow's
    # podMetadata (kubeflow/pipelines backend/src/v2/compiler/argocompiler).
    "pipeline step": Pod(
        "kubeflow",
        {"workflows.argoproj.io/workflow": "run", "pipelines.kubeflow.org/v2_component": "true"},
    ),
    "kfp api server": Pod("kubeflow", {"app": "ml-pipeline"}),
    # A Katib trial of `garbage tune --katib` (pipelines/katib.py labels its Job's pods).
    "tune trial": Pod("kubeflow", {"app.kubernetes.io/name": "garbage-tune-trial"}),
    "other workflow pod in kubeflow": Pod("kubeflow", {"workflows.argoproj.io/workflow": "x"}),
    "other pod in garbage-monitoring": Pod("garbage-monitoring", {"app": "debug"}),
    "other pod in garbage-mlflow": Pod("garbage-mlflow", {"app": "debug"}),
    "other pod in monitoring": Pod("monitoring", {"app.kubernetes.io/name": "alertmanager"}),
    # Knative Eventing's Kafka broker delivers a Trigger's events from its dispatcher pods.
    "knative broker dispatcher": Pod("knative-eventing", {"app": "kafka-broker-dispatcher"}),
    "other pod in garbage-serving": Pod("garbage-serving", {"app": "debug"}),
    "unlabelled namespace": Pod("default", {"app": "curl"}),
    "client label with another value": Pod("sandbox", {"app": "curl"}, {CLIENT_LABEL: "false"}),
}


def required_callers(isvc: Mapping[str, Any], runtime: Mapping[str, Any]) -> dict[int, set[str]]:
    """For each port, the callers (names in :data:`CALLERS`) that need it; nobody else may.

    Prediction: every Service targetPort (in Standard mode the h2c port is one, so gRPC is
    covered) from the mode's gateways and the inference clients. Metrics: the model server's
    REST port (``/metrics``) from Prometheus. Knative mode: the activator on queue-proxy's
    serving port, the autoscaler on 9090.
    """
    mode = deployment_mode(isvc)
    needed: dict[int, set[str]] = defaultdict(set)
    prediction = {"inference client", *(f"gateway {ns}" for ns in GATEWAYS[mode])}
    for service_port in predictor_service_ports(isvc, runtime):
        needed[service_port.target_port] |= prediction
    rest = model_server_listeners(model_container(isvc, runtime))[0]
    needed[rest.port].add("prometheus")
    if mode == "Knative":
        for listener in predictor_listeners(isvc, runtime):
            if listener.what == "Knative requests":
                needed[listener.port].add("knative activator")
        needed[KNATIVE_AUTOSCALER_PORT].add("knative autoscaler")
    return dict(needed)


def one_doc(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def serving_objects(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    isvc = one_doc(docs, "InferenceService")
    runtime = one_doc(docs, "ServingRuntime", isvc["spec"]["predictor"]["model"]["runtime"])
    return isvc, runtime


def predictor_pod(isvc: Mapping[str, Any], runtime: Mapping[str, Any]) -> Pod:
    """A predictor pod: the InferenceService's labels (KServe copies them), its pod label, and
    the user container's port names (Knative renames its one port ``user-port``)."""
    container = model_container(isvc, runtime)
    ports = {p["name"]: p["containerPort"] for p in container.get("ports") or [] if "name" in p}
    if deployment_mode(isvc) == "Knative":
        ports = {KNATIVE_USER_PORT_NAME: knative_user_port(container)["containerPort"]}
    labels = {
        **(isvc["metadata"].get("labels") or {}),
        PREDICTOR_POD_LABEL: isvc["metadata"]["name"],
        "component": "predictor",
    }
    return Pod(isvc["metadata"]["namespace"], labels, ports=ports)


def pod_template(workload: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod template of a Deployment, StatefulSet, Job or CronJob."""
    spec = workload["spec"]
    return (
        spec["jobTemplate"]["spec"]["template"]
        if workload["kind"] == "CronJob"
        else spec["template"]
    )


def workload_pod(docs: list[dict[str, Any]], kind: str, name: str) -> Pod:
    """The pod a rendered Deployment/StatefulSet/Job/CronJob runs: its template's labels and
    named ports."""
    workload = one_doc(docs, kind, name)
    template = pod_template(workload)
    ports = {
        p["name"]: p["containerPort"]
        for c in template["spec"]["containers"]
        for p in c.get("ports") or []
        if "name" in p
    }
    return Pod(workload["metadata"]["namespace"], template["metadata"]["labels"], ports=ports)


DNS = Pod("kube-system", {"k8s-app": "kube-dns"})
"""The cluster DNS (CoreDNS keeps kube-dns's pod label)."""

PROJECT_WORKLOADS = {
    "mlflow": ("Deployment", "mlflow"),
    "postgres": ("StatefulSet", "mlflow-postgres"),
    "minio": ("Deployment", "minio"),
    "minio buckets job": ("Job", "minio-buckets"),
    "mlflow users job": ("Job", "mlflow-users"),
    "collector": ("Deployment", "garbage-collector"),
    "pushgateway": ("Deployment", "garbage-pushgateway"),
    "drift job": ("CronJob", "garbage-drift"),
    "retrain job": ("CronJob", "garbage-retrain"),
}
"""The project's own pods by name: the rendered workload each one is."""

KFP_API_HTTP_PORT, KFP_API_GRPC_PORT = 8888, 8887
"""The ml-pipeline API server's ports: HTTP (REST, what ``kfp.Client`` calls) and gRPC
(kubeflow/pipelines manifests/kustomize/base/pipeline/ml-pipeline-apiserver-deployment.yaml)."""
CALLER_PORTS: dict[str, tuple[tuple[int, str], ...]] = {
    "kfp api server": ((KFP_API_HTTP_PORT, "TCP"), (KFP_API_GRPC_PORT, "TCP")),
}
"""What pods outside the project that a need targets listen on, where the tests know it."""


@dataclass(frozen=True)
class Need:
    """One flow the system needs: ``caller`` opens ``port`` on ``target``, because ``why``.

    ``caller`` and ``target`` name pods of :func:`access_pods`.
    """

    caller: str
    target: str
    port: int
    why: str
    protocol: str = "TCP"


def access_pods(docs: list[dict[str, Any]]) -> dict[str, Pod]:
    """Every pod the access rules talk about: :data:`CALLERS`, the cluster DNS, the predictor
    (``predictor``) and the project's workloads (:data:`PROJECT_WORKLOADS`) as rendered."""
    project = {"predictor": predictor_pod(*serving_objects(docs))}
    for name, (kind, workload) in PROJECT_WORKLOADS.items():
        project[name] = workload_pod(docs, kind, workload)

    def rendered(caller: Pod) -> bool:  # a caller that is one of the project's pods
        return any(
            pod.namespace == caller.namespace and caller.labels.items() <= pod.labels.items()
            for pod in project.values()
        )

    return {
        **{name: pod for name, pod in CALLERS.items() if not rendered(pod)},
        "kube-dns": DNS,
        **project,
    }


def _service_port(docs: list[dict[str, Any]], url: str) -> tuple[str, int]:
    """The workload name (in :data:`PROJECT_WORKLOADS`) and container port behind an in-cluster
    ``http://service.namespace.svc...[:port]/path`` URL."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    service_name, namespace = (parts.hostname or "").split(".")[:2]
    [service] = [
        d
        for d in docs
        if d["kind"] == "Service"
        and (d["metadata"]["name"], d["metadata"].get("namespace")) == (service_name, namespace)
    ]
    port = parts.port or 80
    [target_port] = [p["targetPort"] for p in service["spec"]["ports"] if p["port"] == port]
    for name, (kind, workload) in PROJECT_WORKLOADS.items():
        pod = workload_pod(docs, kind, workload)
        if pod.namespace == namespace and all(
            pod.labels.get(k) == v for k, v in service["spec"]["selector"].items()
        ):
            return name, pod.ports.get(target_port, target_port)
    raise AssertionError(f"{url}: Service {namespace}/{service_name} selects no project workload")


def access_needs(docs: list[dict[str, Any]]) -> list[Need]:
    """Who needs to reach what on a rendered overlay, each with its reason; nobody else may.

    The predictor's inbound flows come from KServe's rules (:func:`required_callers`); its payload
    logger's destination from the InferenceService's logger URL.
    """
    isvc, runtime = serving_objects(docs)
    needs = [
        Need(caller, "predictor", port, "prediction, metrics or Knative traffic (KServe's rules)")
        for port, callers in required_callers(isvc, runtime).items()
        for caller in sorted(callers)
    ]
    logger, logger_port = _service_port(docs, isvc["spec"]["predictor"]["logger"]["url"])
    needs.append(Need("predictor", logger, logger_port, "the payload logger posts CloudEvents"))
    needs += [
        Need("predictor", "minio", 9000, "KServe's storage initializer downloads the model"),
        Need("mlflow", "postgres", 5432, "the backend store and the auth app's users"),
        Need("mlflow", "minio", 9000, "the artifact proxy stores artifacts in bucket mlflow"),
        Need("minio buckets job", "minio", 9000, "creates the bucket, policies and users"),
        Need("mlflow users job", "mlflow", 5000, "creates the MLflow users as the admin"),
        Need("pipeline step", "mlflow", 5000, "runs, the registry and artifacts (proxied)"),
        Need("tune trial", "mlflow", 5000, "each trial's run, nested in the study's"),
        Need("collector", "mlflow", 5000, "the champion's class names at start"),
        Need("collector", "minio", 9000, "the image store: logged images in bucket garbage-images"),
        Need("drift job", "mlflow", 5000, "the champion and its reference profile"),
        Need("drift job", "pushgateway", 9091, "pushes the drift metrics"),
        Need("retrain job", "kfp api server", KFP_API_HTTP_PORT, "submits and waits for the run"),
        Need("retrain job", "mlflow", 5000, "the champion and its dataset version (tags)"),
        Need("retrain job", "minio", 9000, "reads logged images, writes dataset versions"),
        Need("pipeline step", "minio", 9000, "fetch and split read the dataset version"),
        Need("tune trial", "minio", 9000, "reads the dataset version it trains on"),
        Need("prometheus", "pushgateway", 9091, "scrapes the drift metrics (ServiceMonitor)"),
        Need("prometheus", "collector", 8080, "scrapes the collector (ServiceMonitor)"),
    ]
    for trigger in (d for d in docs if d["kind"] == "Trigger"):
        subscriber = trigger["spec"]["subscriber"]
        url = subscriber.get("uri") or (
            f"http://{subscriber['ref']['name']}."
            f"{subscriber['ref'].get('namespace', trigger['metadata']['namespace'])}.svc"
        )
        target, port = _service_port(docs, url)
        needs.append(
            Need("knative broker dispatcher", target, port, "delivers the Trigger's events")
        )
    # Every project pod resolves Service names; the allow-dns policies admit it for all of them.
    for name in ["predictor", *PROJECT_WORKLOADS]:
        needs += [
            Need(name, "kube-dns", 53, "resolves Service names", protocol)
            for protocol in ("UDP", "TCP")
        ]
    return needs
