"""Publish a model as a KServe InferenceService: create or patch, wait for Ready, roll back.

The InferenceService runs the project's serving image through the ``garbage-onnx`` ServingRuntime
(``manifests/base/serving``); the model comes from object storage through ``storageUri``. A deploy
changes only ``spec.predictor.model.storageUri`` and ``spec.predictor.canaryTrafficPercent`` of an
existing InferenceService (resources, GPUs, replicas and the payload logger stay as the manifests
set them), then waits until the new revision is Ready. When it is not Ready in time, or KServe
reports that the model failed to load, the previous ``storageUri`` is put back, so traffic stays on
the revision that served before, and :class:`DeployError` says what happened.

A canary (``canary_percent``) needs KServe's Knative (Serverless) mode: KServe then splits traffic
between the last rolled-out revision and the new one. :meth:`InferenceServiceDeployer.promote` sends
all traffic to the new revision afterwards.

The InferenceService says which registered model version it serves in two annotations
(:data:`REGISTERED_MODEL_ANNOTATION`, :data:`MODEL_VERSION_ANNOTATION`); a deploy sets them with the
storage URI and a rollback puts the previous ones back, so they always describe what serves.
``garbage.release`` keeps the registry's aliases in step with them.

Only the Kubernetes API is used (``kubernetes`` client, ``CustomObjectsApi``); the service account
needs ``get``, ``create`` and ``patch`` on ``inferenceservices`` in the serving namespace
(``manifests/base/rbac``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from garbage.core.model_uri import ModelUriError, require_storage_uri, resolve_storage_uri
from garbage.core.names import MODEL_NAME

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
DEFAULT_NAMESPACE = "garbage-serving"
#: Where the MLflow server of manifests/base/mlflow keeps artifacts (its --artifacts-destination).
ARTIFACTS_DESTINATION = "s3://mlflow/artifacts"
MODEL_FORMAT = "garbage-onnx"
RUNTIME = "garbage-onnx"
SERVICE_ACCOUNT = "garbage-serving"
FIELD_MANAGER = "garbage-deploy"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
SERVERLESS_MODES = ("Serverless", "Knative")
DEPLOYED_BY_ANNOTATION = "garbage-classifier/deployed-model"
REGISTERED_MODEL_ANNOTATION = "garbage-classifier/registered-model"
MODEL_VERSION_ANNOTATION = "garbage-classifier/model-version"
# modelStatus.transitionStatus values after which waiting longer cannot help.
FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")
FAILED_CONDITION_REASONS = (
    "RevisionFailed",
    "RevisionMissing",
    "ContainerMissing",
    "ServingRuntimeNotFound",
    "NoSupportingRuntime",
    "InvalidSpec",
)


class DeployError(RuntimeError):
    """The InferenceService could not be created, updated or brought to Ready."""


@dataclass(frozen=True)
class ServedVersion:
    """A registered model version, as an InferenceService's annotations name it."""

    model: str
    version: str

    def __str__(self) -> str:
        return f"{self.model} v{self.version}"

    def annotations(self) -> dict[str, str]:
        """The annotations that say an InferenceService serves this version."""
        return {REGISTERED_MODEL_ANNOTATION: self.model, MODEL_VERSION_ANNOTATION: self.version}

    @classmethod
    def of(cls, isvc: dict[str, Any] | None) -> ServedVersion | None:
        """The version ``isvc`` says it serves, or None when it names none."""
        annotations = ((isvc or {}).get("metadata") or {}).get("annotations") or {}
        model = annotations.get(REGISTERED_MODEL_ANNOTATION)
        version = annotations.get(MODEL_VERSION_ANNOTATION)
        return cls(model, version) if model and version else None


@dataclass(frozen=True)
class DeployResult:
    """What a deploy did."""

    name: str
    namespace: str
    storage_uri: str
    previous_storage_uri: str | None
    created: bool
    canary_percent: int | None
    url: str | None
    version: ServedVersion | None = None
    previous_version: ServedVersion | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    def summary(self) -> str:
        """One line for people: what serves now, what served before, where."""
        share = f" ({self.canary_percent} % canary)" if self.canary_percent else ""
        what = f"{self.version} ({self.storage_uri})" if self.version else self.storage_uri
        was = self.previous_version or self.previous_storage_uri
        before = f", was {was}" if was else ""
        action = "created" if self.created else "serves"
        where = f"; {self.url}" if self.url else ""
        where_to = f"InferenceService {self.namespace}/{self.name}"
        return f"{where_to} {action} {what}{share}{before}{where}"


def build_inference_service(
    name: str,
    namespace: str,
    storage_uri: str,
    canary_percent: int | None = None,
    service_account: str = SERVICE_ACCOUNT,
    version: ServedVersion | None = None,
) -> dict[str, Any]:
    """A minimal InferenceService for ``storage_uri``, used when none exists yet.

    The manifests (``manifests/overlays/*``) define the full one (resources, GPUs, replicas,
    payload logger); apply them first on a real cluster. This one is enough to serve.
    """
    predictor: dict[str, Any] = {
        "serviceAccountName": service_account,
        "minReplicas": 1,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "model": {
            "modelFormat": {"name": MODEL_FORMAT},
            "runtime": RUNTIME,
            "storageUri": storage_uri,
            "resources": {
                "requests": {"cpu": "500m", "memory": "1Gi"},
                "limits": {"cpu": "2", "memory": "2Gi"},
            },
        },
    }
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = canary_percent
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": name,
                "app.kubernetes.io/part-of": MODEL_NAME,
            },
            "annotations": {
                DEPLOYED_BY_ANNOTATION: storage_uri,
                **(version.annotations() if version else {}),
            },
        },
        "spec": {"predictor": predictor},
    }


def readiness(isvc: dict[str, Any]) -> tuple[str, str]:
    """``("ready" | "failed" | "pending", why)`` for an InferenceService as the API returns it.

    Ready means: the controller has seen the latest spec (``observedGeneration``), the ``Ready``
    condition is True and, where KServe reports revisions, the latest created one is ready.
    """
    status = isvc.get("status") or {}
    generation = (isvc.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    model_status = status.get("modelStatus") or {}
    transition = model_status.get("transitionStatus")
    if transition in FAILED_TRANSITIONS:
        info = model_status.get("lastFailureInfo") or {}
        detail = info.get("message") or info.get("reason") or "no detail"
        return "failed", f"model status {transition}: {detail}"
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    for kind in ("PredictorReady", "Ready", "PredictorConfigurationReady"):
        condition = conditions.get(kind) or {}
        if (
            condition.get("status") == "False"
            and condition.get("reason") in FAILED_CONDITION_REASONS
        ):
            return "failed", f"{kind}: {condition.get('reason')}: {condition.get('message', '')}"
    if generation is not None and (observed is None or observed < generation):
        return (
            "pending",
            f"controller has not yet seen generation {generation} (observed {observed})",
        )
    ready = conditions.get("Ready") or {}
    if ready.get("status") != "True":
        return "pending", (
            f"Ready is {ready.get('status', 'unknown')}"
            f"{': ' + ready['message'] if ready.get('message') else ''}"
        )
    predictor = (status.get("components") or {}).get("predictor") or {}
    created, ready_rev = (
        predictor.get("latestCreatedRevision"),
        predictor.get("latestReadyRevision"),
    )
    if created and ready_rev and created != ready_rev:
        return "pending", f"revision {created} is not ready yet (ready: {ready_rev})"
    return "ready", "Ready"


class InferenceServiceDeployer:
    """Create, update and roll back the InferenceService through the Kubernetes API.

    Args:
        api: A ``kubernetes.client.CustomObjectsApi`` (see :func:`connect`).
        poll_interval_s: Seconds between status reads while waiting.
        clock: Monotonic seconds (tests pass a fake).
        sleep: Sleeps (tests pass a fake).
    """

    def __init__(
        self,
        api: Any,
        poll_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api = api
        self.poll_interval_s = poll_interval_s
        self._clock = clock
        self._sleep = sleep

    # -- API calls ------------------------------------------------------------------------------
    def get(self, name: str, namespace: str) -> dict[str, Any] | None:
        """The InferenceService, or None when there is none."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise DeployError(_api_message(e, f"read InferenceService {namespace}/{name}")) from e

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        meta = body["metadata"]
        try:
            return self.api.create_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], PLURAL, body, field_manager=FIELD_MANAGER
            )
        except ApiException as e:
            raise DeployError(
                _api_message(e, f"create InferenceService {meta['namespace']}/{meta['name']}")
            ) from e

    def _patch(self, name: str, namespace: str, patch: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            # A JSON merge patch: only the named fields change; None deletes a field.
            return self.api.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, patch, field_manager=FIELD_MANAGER
            )
        except ApiException as e:
            raise DeployError(_api_message(e, f"patch InferenceService {namespace}/{name}")) from e

    # -- operations -----------------------------------------------------------------------------
    def deploy(
        self,
        storage_uri: str,
        name: str = MODEL_NAME,
        namespace: str = DEFAULT_NAMESPACE,
        canary_percent: int | None = None,
        timeout_s: float = 600,
        version: ServedVersion | None = None,
    ) -> DeployResult:
        """Serve ``storage_uri`` from the InferenceService ``namespace/name``.

        Args:
            storage_uri: Where the model folder (``model.onnx``) is, e.g. ``s3://...``.
            name: InferenceService name; also the model's name on the wire.
            namespace: Its namespace.
            canary_percent: Percentage of traffic for the new revision (1-99; Serverless mode
                only); None or 100 sends all traffic to it once it is Ready.
            timeout_s: How long to wait for Ready.
            version: The registered version ``storage_uri`` holds, recorded on the
                InferenceService; None when it is not from the registry.

        Raises:
            DeployError: Bad arguments, an API error, or the new revision not Ready in time (the
                previous model is restored first when there was one).
        """
        try:
            storage_uri = require_storage_uri(storage_uri)
        except ModelUriError as e:
            raise DeployError(str(e)) from e
        if canary_percent is not None and not 0 < canary_percent <= 100:
            raise DeployError(f"canary percent must be between 1 and 100, got {canary_percent}")
        if canary_percent == 100:
            canary_percent = None
        if timeout_s <= 0:
            raise DeployError(f"timeout must be positive, got {timeout_s}")
        current = self.get(name, namespace)
        if current is None:
            # No earlier revision, so all traffic goes to this one: no canary on a first deploy.
            created = self._create(
                build_inference_service(name, namespace, storage_uri, version=version)
            )
            try:
                final = self.wait_ready(
                    name, namespace, timeout_s, after_generation=_generation(created)
                )
            except DeployError as e:
                raise DeployError(
                    f"{e}; there was no earlier model to fall back to: fix the model "
                    f"or delete the InferenceService {namespace}/{name}"
                ) from e
            return DeployResult(
                name, namespace, storage_uri, None, True, None, _url(final), version, None
            )

        mode = ((current.get("metadata") or {}).get("annotations") or {}).get(
            DEPLOYMENT_MODE_ANNOTATION
        )
        if canary_percent is not None and mode not in SERVERLESS_MODES:
            raise DeployError(
                f"a canary needs KServe's Serverless (Knative) mode, but InferenceService "
                f"{namespace}/{name} runs in {mode or 'the cluster default'} mode "
                f"({DEPLOYMENT_MODE_ANNOTATION}); deploy without a canary percentage, or use the "
                "gpu overlay, which runs Serverless"
            )
        predictor = (current.get("spec") or {}).get("predictor") or {}
        model = predictor.get("model") or {}
        previous_uri = model.get("storageUri")
        previous_canary = predictor.get("canaryTrafficPercent")
        previous_version = ServedVersion.of(current)
        if (
            previous_uri == storage_uri
            and readiness(current)[0] == "ready"
            and previous_canary == canary_percent
            and previous_version == version
        ):
            return DeployResult(
                name,
                namespace,
                storage_uri,
                previous_uri,
                False,
                canary_percent,
                _url(current),
                version,
                previous_version,
            )
        patched = self._point_to(name, namespace, storage_uri, canary_percent, version)
        try:
            final = self.wait_ready(
                name, namespace, timeout_s, after_generation=_generation(patched)
            )
        except DeployError as e:
            try:
                self.rollback(name, namespace, previous_uri, previous_canary, previous_version)
            except DeployError as rollback_error:
                raise DeployError(
                    f"InferenceService {namespace}/{name} did not become Ready with {storage_uri}: "
                    f"{e}; rolling back to {previous_uri} failed too: {rollback_error}. Restore it "
                    f"with: garbage deploy --model-uri {previous_uri}"
                ) from e
            raise DeployError(
                f"InferenceService {namespace}/{name} did not become Ready with {storage_uri}: "
                f"{e}. "
                f"Rolled back to {previous_uri}; traffic stays on the previous revision"
            ) from e
        return DeployResult(
            name,
            namespace,
            storage_uri,
            previous_uri,
            False,
            canary_percent,
            _url(final),
            version,
            previous_version,
        )

    def rollback(
        self,
        name: str,
        namespace: str,
        storage_uri: str | None,
        canary_percent: int | None = None,
        version: ServedVersion | None = None,
    ) -> dict[str, Any]:
        """Put ``storage_uri`` (the previous model) back; all traffic to it, unless a canary."""
        if storage_uri is None:
            raise DeployError(
                f"InferenceService {namespace}/{name} had no storageUri to roll back to"
            )
        return self._point_to(name, namespace, storage_uri, canary_percent, version)

    def _point_to(
        self,
        name: str,
        namespace: str,
        storage_uri: str,
        canary_percent: int | None,
        version: ServedVersion | None,
    ) -> dict[str, Any]:
        """Patch the predictor to serve ``storage_uri`` with that canary share (None: all).

        The version annotations follow: set for a registered version, removed otherwise.
        """
        served: dict[str, str | None] = (
            dict(version.annotations())
            if version
            else dict.fromkeys((REGISTERED_MODEL_ANNOTATION, MODEL_VERSION_ANNOTATION))
        )
        return self._patch(
            name,
            namespace,
            {
                "metadata": {"annotations": {DEPLOYED_BY_ANNOTATION: storage_uri, **served}},
                "spec": {
                    "predictor": {
                        "canaryTrafficPercent": canary_percent,
                        "model": {"storageUri": storage_uri},
                    }
                },
            },
        )

    def promote(
        self, name: str = MODEL_NAME, namespace: str = DEFAULT_NAMESPACE, timeout_s: float = 600
    ) -> DeployResult:
        """Send all traffic to the canary (drop ``canaryTrafficPercent``) and wait for Ready."""
        current = self.get(name, namespace)
        if current is None:
            raise DeployError(f"there is no InferenceService {namespace}/{name} to promote")
        patched = self._patch(
            name, namespace, {"spec": {"predictor": {"canaryTrafficPercent": None}}}
        )
        final = self.wait_ready(name, namespace, timeout_s, after_generation=_generation(patched))
        uri = ((final.get("spec") or {}).get("predictor") or {}).get("model", {}).get("storageUri")
        served = ServedVersion.of(final)
        return DeployResult(
            name, namespace, uri or "", uri, False, None, _url(final), served, served
        )

    def wait_ready(
        self, name: str, namespace: str, timeout_s: float, after_generation: int | None = None
    ) -> dict[str, Any]:
        """Poll until Ready; return the InferenceService.

        Raises:
            DeployError: It disappeared, KServe reports a failure, or ``timeout_s`` passed.
        """
        deadline = self._clock() + timeout_s
        why = "not read yet"
        while True:
            isvc = self.get(name, namespace)
            if isvc is None:
                raise DeployError(f"InferenceService {namespace}/{name} was deleted while waiting")
            generation = _generation(isvc)
            if (
                after_generation is not None
                and generation is not None
                and generation < after_generation
            ):
                state, why = "pending", f"generation {generation} < {after_generation}"
            else:
                state, why = readiness(isvc)
            if state == "ready":
                return isvc
            if state == "failed":
                raise DeployError(f"KServe reports a failure: {why}")
            if self._clock() >= deadline:
                raise DeployError(f"not Ready after {timeout_s:g} s (last status: {why})")
            self._sleep(self.poll_interval_s)


def connect(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A ``CustomObjectsApi`` for the cluster: in-cluster credentials inside a pod, else kubeconfig.

    Raises:
        DeployError: No usable credentials.
    """
    import os

    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    # KUBECONFIG is read here, not when the kubernetes package was imported.
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG")
    try:
        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config(config_file=kubeconfig, context=context)
    except ConfigException as e:
        raise DeployError(
            f"no Kubernetes credentials ({e}); set KUBECONFIG or pass --kubeconfig, "
            "or run inside the cluster with a service account"
        ) from e
    return client.CustomObjectsApi()


def publish_model(
    model_uri: str,
    name: str = MODEL_NAME,
    namespace: str = DEFAULT_NAMESPACE,
    canary_percent: int | None = None,
    timeout_s: float = 600,
    tracking_uri: str | None = None,
    artifacts_destination: str | None = None,
    api: Any = None,
    poll_interval_s: float = 2.0,
    version: ServedVersion | None = None,
) -> DeployResult:
    """Resolve ``model_uri`` and deploy it (``garbage deploy`` of a URI outside the registry).

    ``garbage.release`` deploys registered versions through this and moves the registry's aliases.

    Args:
        model_uri: ``s3://...`` (or another storage URI), or an MLflow ``models:/``/``runs:/`` URI.
        name: InferenceService name.
        namespace: Its namespace.
        canary_percent: Traffic percentage for the new revision; None for all.
        timeout_s: How long to wait for Ready.
        tracking_uri: MLflow tracking server, for MLflow URIs.
        artifacts_destination: The MLflow server's ``--artifacts-destination``, for proxied
            artifacts.
        api: A ``CustomObjectsApi``; None connects with :func:`connect`.
        poll_interval_s: Seconds between status reads.
        version: The registered version ``model_uri`` names, recorded on the InferenceService.
    """
    try:
        storage_uri = resolve_storage_uri(model_uri, tracking_uri, artifacts_destination)
    except ModelUriError as e:
        raise DeployError(str(e)) from e
    deployer = InferenceServiceDeployer(
        api if api is not None else connect(), poll_interval_s=poll_interval_s
    )
    return deployer.deploy(
        storage_uri,
        name=name,
        namespace=namespace,
        canary_percent=canary_percent,
        timeout_s=timeout_s,
        version=version,
    )


def _generation(isvc: dict[str, Any] | None) -> int | None:
    return ((isvc or {}).get("metadata") or {}).get("generation")


def _url(isvc: dict[str, Any]) -> str | None:
    return (isvc.get("status") or {}).get("url")


def _api_message(error: Any, action: str) -> str:
    import json

    reason = getattr(error, "reason", "")
    try:
        body = json.loads(error.body or "{}")
        detail = body.get("message") or reason
    except (TypeError, ValueError):
        detail = reason
    hint = ""
    if error.status == 403:
        hint = (
            " (the service account lacks RBAC for inferenceservices in this namespace: apply "
            "manifests/base/rbac, or use the garbage-pipeline service account)"
        )
    elif error.status == 404:
        hint = " (is KServe installed, and does the namespace exist?)"
    return f"cannot {action}: HTTP {error.status} {detail}{hint}"
