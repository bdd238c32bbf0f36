"""The Katib Experiment of a hyperparameter search: the config's search space on a cluster.

:func:`build_experiment` turns the same ``tune`` section that ``garbage tune`` runs with Optuna
into a ``kubeflow.org/v1beta1`` Experiment (Katib v0.19): maximize ``val_macro_f1``, TPE with the
config's seed, the median stopping rule with the pruner's settings, and one ``batch/v1`` Job per
trial. The Job runs ``garbage train`` in the components image with the cluster's config (in
``$GARBAGE_CONFIG_JSON``) and the trial's parameters as ``--set key=value``; that entry point
prints every epoch's metrics as Katib's StdOut collector reads them
(:func:`garbage.training.tune.katib_metric_line`). Trials log to MLflow with the pipeline's login
and are sized like the pipeline's train step (:data:`pipelines.training.GPU_CLUSTER` or
:data:`pipelines.training.CPU_CLUSTER`).
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from components.image import COMPONENTS_IMAGE
from garbage.core.config import CategoricalParam, Config, FloatParam, IntParam
from garbage.core.names import MODEL_NAME
from pipelines.training import (
    DATASETS_LOGIN,
    DATASETS_SECRET,
    GPU_CLUSTER,
    GPU_NODE_LABEL,
    GPU_RESOURCE,
    MLFLOW_LOGIN,
    MLFLOW_SECRET,
    TrainResources,
)

API_VERSION = "kubeflow.org/v1beta1"
DEFAULT_NAMESPACE = "kubeflow"
#: The trials' identity (manifests/base/rbac/tune-trial-service-account.yaml): no API access.
TRIAL_SERVICE_ACCOUNT = "garbage-tune-trial"
#: The label of every trial pod (``app.kubernetes.io/name``), for NetworkPolicies.
TRIAL_APP = "garbage-tune-trial"
PRIMARY_CONTAINER = "training"
#: Katib's trial conditions for a batch/v1 Job (GJSON paths).
JOB_SUCCESS = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
JOB_FAILURE = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
#: The components image's user and home (components/Dockerfile): the work dir is relative to it.
IMAGE_UID = 10001
IMAGE_HOME = "/home/app"
#: Katib's name rule for an Experiment; its trials, Jobs and pods add suffixes, hence the limit.
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LENGTH = 40
#: A categorical choice goes into a shell command line (Katib wraps the trial's command in
#: ``sh -c``), so it must be a plain word.
_PLAIN_WORD = re.compile(r"^[A-Za-z0-9_.+-]+$")


class KatibError(ValueError):
    """The search space or a setting cannot be expressed as a Katib Experiment."""


def _number(value: float) -> str:
    """A number in fixed-point notation, which a YAML reader keeps a string when quoted.

    ``1e-05`` unquoted is a float to kubectl's YAML reader, and Katib's fields are strings.
    """
    text = format(Decimal(repr(value)), "f")
    return text if "." in text or isinstance(value, int) else f"{text}.0"


def _cli_value(key: str, value: Any) -> str:
    """``value`` as ``--set key=<text>`` must spell it: YAML that reads back as ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _number(value)
    text = str(value)
    if not _PLAIN_WORD.match(text) or yaml.safe_load(text) != value:
        raise KatibError(
            f"tune.space.{key}: the choice {value!r} cannot be passed to a trial as --set "
            f"{key}=...: use plain words (letters, digits, . _ + -) that YAML reads as strings"
        )
    return text


def _trial_parameter(key: str) -> str:
    return key.replace(".", "_")


def katib_parameters(config: Config) -> list[dict[str, Any]]:
    """``spec.parameters``: one Katib parameter per key of ``tune.space``, named by the key.

    Raises:
        KatibError: The space is empty, or a choice cannot travel on a command line.
    """
    if not config.tune.space:
        raise KatibError("tune.space is empty: declare the keys to search in a config file")
    parameters = []
    for key, spec in config.tune.space.items():
        feasible: dict[str, Any]
        if isinstance(spec, FloatParam):
            feasible = {
                "min": _number(spec.low),
                "max": _number(spec.high),
                "distribution": "logUniform" if spec.log else "uniform",
            }
            kind = "double"
        elif isinstance(spec, IntParam):
            feasible = {"min": str(spec.low), "max": str(spec.high), "step": str(spec.step)}
            kind = "int"
        elif isinstance(spec, CategoricalParam):
            feasible = {"list": [_cli_value(key, v) for v in spec.choices]}
            kind = "categorical"
        else:
            raise KatibError(f"tune.space.{key}: unknown parameter spec {spec!r}")
        parameters.append({"name": key, "parameterType": kind, "feasibleSpace": feasible})
    return parameters


def _trial_job(
    trial_config: Config, keys: list[str], resources: TrainResources, image: str
) -> dict[str, Any]:
    """The batch/v1 Job of one trial, ``${trialParameters.*}`` still to be filled in by Katib."""
    from garbage.training.tune import TRIAL_CONFIG_ENV

    args = ["--run-name", "${trialSpec.Name}"]
    for key in keys:
        args += ["--set", f"{key}=${{trialParameters.{_trial_parameter(key)}}}"]
    env: list[dict[str, Any]] = [
        {"name": TRIAL_CONFIG_ENV, "value": trial_config.model_dump_json(exclude={"tune"})},
        {"name": "TQDM_DISABLE", "value": "1"},  # no progress bars in the metrics log
    ]
    secrets = {key: MLFLOW_SECRET for key in MLFLOW_LOGIN}
    if trial_config.data.version is not None:  # the trial reads a dataset version: read-only key
        secrets |= {key: DATASETS_SECRET for key in DATASETS_LOGIN}
    env += [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for key, secret in secrets.items()
    ]
    limits: dict[str, str] = {"cpu": resources.cpu_limit, "memory": resources.memory_limit}
    if resources.gpu:
        limits[GPU_RESOURCE] = "1"
    pod: dict[str, Any] = {
        "serviceAccountName": TRIAL_SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "fsGroup": IMAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": PRIMARY_CONTAINER,
                "image": image,
                "command": ["garbage", "train"],
                "args": args,
                "workingDir": IMAGE_HOME,
                "env": env,
                "resources": {
                    "requests": {
                        "cpu": resources.cpu_request,
                        "memory": resources.memory_request,
                    },
                    "limits": limits,
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumeMounts": [
                    {"name": "work", "mountPath": f"{IMAGE_HOME}/{trial_config.work_dir}"},
                    {"name": "cache", "mountPath": f"{IMAGE_HOME}/.cache"},
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
            }
        ],
        "volumes": [
            {"name": "work", "emptyDir": {}},
            {"name": "cache", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            # Data loader workers share tensors through /dev/shm (64 MB in a container).
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": resources.shm_size}},
        ],
    }
    if resources.gpu:
        pod["nodeSelector"] = {GPU_NODE_LABEL: "true"}
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    labels = {"app.kubernetes.io/name": TRIAL_APP, "app.kubernetes.io/part-of": MODEL_NAME}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "backoffLimit": 0,  # a failed trial is Katib's to count, not the Job's to retry
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def build_experiment(
    config: Config,
    *,
    name: str | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    resources: TrainResources = GPU_CLUSTER,
    image: str = COMPONENTS_IMAGE,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """The Katib Experiment of ``config.tune``, its trials configured for the cluster.

    Args:
        config: The validated config (as for ``garbage tune``); its tracking URI and work dir
            are made cluster-ready with :func:`pipelines.submit.cluster_config`.
        name: The Experiment's name (default: the Optuna study name of the config).
        namespace: Where the Experiment and its trials run (the MLflow login Secret must be
            there: ``kubeflow`` in the manifests' stack).
        resources: :data:`pipelines.training.GPU_CLUSTER` or ``CPU_CLUSTER``.
        image: The components image the trials run in.
        tracking_uri: The MLflow server as the trials see it (default: the config's, else the
            manifests' in-cluster server).

    Returns:
        The Experiment as a dict, ready for ``yaml.safe_dump`` or the Kubernetes API.

    Raises:
        KatibError: The name is not a valid Experiment name, or the space cannot be expressed.
    """
    from garbage.training.tune import ADDITIONAL_METRICS, DIRECTION, study_name
    from pipelines.submit import cluster_config

    tune = config.tune
    name = name or study_name(config)
    if len(name) > MAX_NAME_LENGTH or not _NAME.match(name):
        raise KatibError(
            f"experiment name {name!r} must be lower-case letters, digits and '-', start with a "
            f"letter, end with a letter or digit, and have at most {MAX_NAME_LENGTH} characters"
        )
    parameters = katib_parameters(config)
    keys = [p["name"] for p in parameters]
    metric = tune.metric
    max_trials = tune.trials
    job = _trial_job(cluster_config(config, tracking_uri), keys, resources, image)
    return {
        "apiVersion": API_VERSION,
        "kind": "Experiment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "garbage-tune",
                "app.kubernetes.io/part-of": MODEL_NAME,
            },
        },
        "spec": {
            "objective": {
                "type": DIRECTION,
                "objectiveMetricName": metric,
                "additionalMetricNames": list(ADDITIONAL_METRICS),
                "metricStrategies": [
                    {"name": metric, "value": "max"},  # the best epoch, as locally
                    {"name": "val_accuracy", "value": "max"},
                    {"name": "val_loss", "value": "min"},
                ],
            },
            "algorithm": {
                "algorithmName": "tpe",
                "algorithmSettings": [{"name": "random_state", "value": str(tune.seed)}],
            },
            "earlyStopping": {
                "algorithmName": "medianstop",
                "algorithmSettings": [
                    {
                        "name": "min_trials_required",
                        "value": str(max(1, tune.pruner.n_startup_trials)),
                    },
                    {"name": "start_step", "value": str(max(1, tune.pruner.n_warmup_steps))},
                ],
            },
            "maxTrialCount": max_trials,
            "parallelTrialCount": min(tune.parallel_trials, max_trials),
            # Three failures mean something is broken (the image, the data, the login): stop.
            "maxFailedTrialCount": min(3, max_trials),
            # A finished Experiment takes a higher maxTrialCount (kubectl apply) and resumes.
            "resumePolicy": "LongRunning",
            "parameters": parameters,
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "trialTemplate": {
                "primaryContainerName": PRIMARY_CONTAINER,
                "successCondition": JOB_SUCCESS,
                "failureCondition": JOB_FAILURE,
                "trialParameters": [
                    {
                        "name": _trial_parameter(key),
                        "description": f"{key} (tune.space)",
                        "reference": key,
                    }
                    for key in keys
                ],
                "trialSpec": job,
            },
        },
    }


def write_experiment(path: Path, experiment: dict[str, Any]) -> Path:
    """Write the Experiment as YAML (folders are created); ``kubectl apply -f`` takes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(experiment, sort_keys=False, width=100))
    return path
