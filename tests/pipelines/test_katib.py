"""The Katib Experiment of ``garbage tune --katib`` is one Katib v0.19 runs, from the same space.

Katib's Experiment CRD has no structural schema (``x-kubernetes-preserve-unknown-fields``), so
the pinned CRD checks only the envelope; what Katib refuses is decided by its admission webhook.
:func:`katib_webhook_problems` is a port of that webhook's rules (Katib v0.19
``pkg/webhook/v1beta1/experiment/validator/validator.go``: names, counts, objective, algorithms
known to the default katib-config, parameters, the trial template and its substitutions, the
metrics collector). The trial's Job, with the parameters substituted as Katib does it, is checked
strictly against the Kubernetes 1.33 schema, and its command line as Katib's metrics wrapper joins
it into ``sh -c``.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests.crd_schema import pinned_crds

from garbage.core.config import CategoricalParam, Config, FloatParam, IntParam, load_config
from garbage.training.tune import TRIAL_CONFIG_ENV, study_name
from pipelines.katib import (
    JOB_FAILURE,
    JOB_SUCCESS,
    TRIAL_SERVICE_ACCOUNT,
    KatibError,
    build_experiment,
    katib_parameters,
    write_experiment,
)
from pipelines.submit import CLUSTER_TRACKING_URI
from pipelines.training import (
    CPU_CLUSTER,
    DATASETS_LOGIN,
    DATASETS_SECRET,
    GPU_CLUSTER,
    MLFLOW_LOGIN,
    MLFLOW_SECRET,
)

REPO = Path(__file__).resolve().parents[2]
#: Algorithms and early stopping rules of Katib v0.19's default katib-config.
KATIB_ALGORITHMS = {
    "random",
    "tpe",
    "multivariate-tpe",
    "grid",
    "hyperband",
    "bayesianoptimization",
    "cmaes",
    "sobol",
    "enas",
    "darts",
    "pbt",
}
KATIB_EARLY_STOPPING = {"medianstop"}
_PARAM_REF = re.compile(r"\$\{trialParameters\..+?\}")
_META_REF = re.compile(r"\$\{trialSpec\.(.+?)\}")
_META_KEYS = {"Name", "Namespace", "Kind", "APIVersion"}


def katib_webhook_problems(experiment: dict[str, Any]) -> list[str]:
    """What Katib v0.19's Experiment validating webhook refuses in ``experiment``."""
    problems = []
    spec = experiment.get("spec") or {}
    name = experiment["metadata"]["name"]
    if not re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?", name):
        problems.append(f"metadata.name {name!r}")
    max_trials, parallel = spec.get("maxTrialCount"), spec.get("parallelTrialCount")
    failed = spec.get("maxFailedTrialCount")
    if max_trials is not None and max_trials <= 0:
        problems.append("spec.maxTrialCount must be greater than 0")
    if parallel is not None and parallel <= 0:
        problems.append("spec.parallelTrialCount must be greater than 0")
    if failed is not None and failed < 0:
        problems.append("spec.maxFailedTrialCount should not be less than 0")
    if failed is not None and max_trials is not None and failed > max_trials:
        problems.append("spec.maxFailedTrialCount should be <= spec.maxTrialCount")
    if parallel is not None and max_trials is not None and parallel > max_trials:
        problems.append("spec.parallelTrialCount should be <= spec.maxTrialCount")
    objective = spec.get("objective")
    if not objective:
        return [*problems, "spec.objective must be specified"]
    if objective.get("type") not in ("minimize", "maximize"):
        problems.append("spec.objective.type must be minimize or maximize")
    if not objective.get("objectiveMetricName"):
        problems.append("spec.objective.objectiveMetricName must be specified")
    if objective.get("objectiveMetricName") in (objective.get("additionalMetricNames") or []):
        problems.append("spec.objective.additionalMetricNames contains the objective")
    if (spec.get("algorithm") or {}).get("algorithmName") not in KATIB_ALGORITHMS:
        problems.append("spec.algorithm.algorithmName is not in katib-config")
    early = spec.get("earlyStopping")
    if early is not None and early.get("algorithmName") not in KATIB_EARLY_STOPPING:
        problems.append("spec.earlyStopping.algorithmName is not in katib-config")
    if spec.get("resumePolicy", "") not in ("", "Never", "LongRunning", "FromVolume"):
        problems.append("spec.resumePolicy is invalid")
    problems += _trial_template_problems(spec)
    parameters = spec.get("parameters") or []
    if not parameters:
        problems.append("spec.parameters must be specified")
    for i, p in enumerate(parameters):
        kind, space = p.get("parameterType"), p.get("feasibleSpace") or {}
        if kind not in ("double", "int", "categorical", "discrete", "unknown"):
            problems.append(f"spec.parameters[{i}].parameterType {kind} is not supported")
        if space.get("distribution", "") not in (
            "",
            "uniform",
            "logUniform",
            "normal",
            "logNormal",
        ):
            problems.append(f"spec.parameters[{i}].feasibleSpace.distribution is not supported")
        if not space:
            problems.append(f"spec.parameters[{i}].feasibleSpace must be specified")
        elif kind in ("double", "int"):
            if space.get("list"):
                problems.append(f"spec.parameters[{i}].feasibleSpace.list is not supported")
            if not space.get("max") and not space.get("min"):
                problems.append(f"spec.parameters[{i}].feasibleSpace.max or min is required")
        elif kind in ("categorical", "discrete") and {"max", "min", "step"} & set(space):
            problems.append(f"spec.parameters[{i}].feasibleSpace max/min/step not supported")
        for field in ("min", "max", "step"):  # Go strings: a number would not decode
            if field in space and not isinstance(space[field], str):
                problems.append(f"spec.parameters[{i}].feasibleSpace.{field} is not a string")
    collector = ((spec.get("metricsCollectorSpec") or {}).get("collector") or {}).get("kind")
    if collector not in ("StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "None"):
        problems.append(f"spec.metricsCollectorSpec.collector.kind {collector} is invalid")
    return problems


def _trial_template_problems(spec: dict[str, Any]) -> list[str]:
    template = spec.get("trialTemplate")
    if not template:
        return ["spec.trialTemplate must be specified"]
    problems = []
    if not template.get("primaryContainerName"):
        problems.append("spec.trialTemplate.primaryContainerName must be specified")
    if not template.get("successCondition") or not template.get("failureCondition"):
        problems.append("successCondition and failureCondition must be specified")
    if template.get("trialParameters") is None:
        return [*problems, "spec.trialTemplate.trialParameters must be specified"]
    text = json.dumps(template.get("trialSpec"))
    names: set[str] = set()
    refs: set[str] = set()
    space = {p["name"] for p in spec.get("parameters") or []}
    for i, p in enumerate(template["trialParameters"]):
        name, ref = p.get("name", ""), p.get("reference", "")
        if not name or not ref or "{" in name or "}" in name:
            problems.append(f"trialParameters[{i}]: name and reference must be specified")
            continue
        if name in names or ref in refs:
            problems.append(f"trialParameters[{i}] duplicates a name or reference")
            continue
        names.add(name)
        refs.add(ref)
        if ref not in space:
            problems.append(f"trialParameters[{i}].reference {ref} is not in spec.parameters")
        placeholder = f"${{trialParameters.{name}}}"
        if placeholder not in text:
            return [*problems, f"trialParameters[{i}].name {name} is not in the trial template"]
        text = text.replace(placeholder, "test-value")
    if _PARAM_REF.findall(text):
        problems.append(f"{_PARAM_REF.findall(text)} in the template are not trialParameters")
    job = json.loads(text)
    if (job.get("metadata") or {}).get("name") or (job.get("metadata") or {}).get("namespace"):
        problems.append("metadata.name and metadata.namespace in the trial template")
    if not job.get("apiVersion") or not job.get("kind"):
        problems.append("apiVersion and kind of the trial template must be specified")
    return problems


def substituted(experiment: dict[str, Any], values: dict[str, str], trial: str) -> dict[str, Any]:
    """The trial's Job as Katib creates it: parameters and metadata references filled in."""
    template = experiment["spec"]["trialTemplate"]
    text = json.dumps(template["trialSpec"])
    for p in template["trialParameters"]:
        text = text.replace(f"${{trialParameters.{p['name']}}}", values[p["reference"]])
    text = _META_REF.sub(lambda m: trial if m.group(1) == "Name" else m.group(0), text)
    job = json.loads(text)
    job["metadata"] = {"name": trial, "namespace": experiment["metadata"]["namespace"]}
    return job


@pytest.fixture
def config() -> Config:
    return load_config(profile="gpu", overrides=["tune.trials=12"], environ={})


@pytest.fixture
def experiment(config: Config) -> dict[str, Any]:
    return build_experiment(config)


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    [container] = doc["spec"]["template"]["spec"]["containers"]
    return container


def test_the_experiment_is_valid_against_the_pinned_katib_crd(experiment) -> None:
    crds = pinned_crds()
    assert crds.origin(experiment["apiVersion"], experiment["kind"]) == "katib v0.19.0"
    assert crds.problems(experiment) == []


def test_the_experiment_passes_katibs_admission_rules(experiment) -> None:
    assert katib_webhook_problems(experiment) == []


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda s: s.update(parallelTrialCount=99), "parallelTrialCount should be <="),
        (lambda s: s["algorithm"].update(algorithmName="optuna"), "algorithmName is not in"),
        (lambda s: s["parameters"][0].update(parameterType="float"), "float is not supported"),
        (lambda s: s["parameters"][0]["feasibleSpace"].update(min=0.1), "min is not a string"),
        (lambda s: s["trialTemplate"]["trialParameters"].pop(), "are not trialParameters"),
        (lambda s: s["trialTemplate"].pop("primaryContainerName"), "primaryContainerName"),
    ],
)
def test_the_admission_check_sees_a_mistake(experiment, mutate, problem) -> None:
    mutate(experiment["spec"])
    assert any(problem in p for p in katib_webhook_problems(experiment)), problem


def test_the_parameters_are_the_search_space(config: Config, experiment) -> None:
    parameters = experiment["spec"]["parameters"]
    assert [p["name"] for p in parameters] == list(config.tune.space)
    for p in parameters:
        spec, space = config.tune.space[p["name"]], p["feasibleSpace"]
        if isinstance(spec, FloatParam):
            assert p["parameterType"] == "double"
            assert (float(space["min"]), float(space["max"])) == (spec.low, spec.high)
            assert space["distribution"] == ("logUniform" if spec.log else "uniform")
        else:
            assert isinstance(spec, IntParam)
            assert p["parameterType"] == "int"
            assert (int(space["min"]), int(space["max"]), int(space["step"])) == (
                spec.low,
                spec.high,
                spec.step,
            )
    references = [t["reference"] for t in experiment["spec"]["trialTemplate"]["trialParameters"]]
    assert references == list(config.tune.space)


def test_the_search_settings_follow_the_tune_section(config: Config, experiment) -> None:
    spec = experiment["spec"]
    assert experiment["metadata"] == {
        "name": study_name(config),
        "namespace": "kubeflow",
        "labels": {
            "app.kubernetes.io/name": "garbage-tune",
            "app.kubernetes.io/part-of": "garbage-classifier",
        },
    }
    assert spec["objective"]["type"] == "maximize"
    assert spec["objective"]["objectiveMetricName"] == "val_macro_f1"
    assert {"name": "val_macro_f1", "value": "max"} in spec["objective"]["metricStrategies"]
    assert spec["algorithm"] == {
        "algorithmName": "tpe",
        "algorithmSettings": [{"name": "random_state", "value": "42"}],
    }
    assert spec["earlyStopping"]["algorithmName"] == "medianstop"
    settings = {s["name"]: s["value"] for s in spec["earlyStopping"]["algorithmSettings"]}
    assert settings == {
        "min_trials_required": str(config.tune.pruner.n_startup_trials),
        "start_step": str(config.tune.pruner.n_warmup_steps),
    }
    assert (spec["maxTrialCount"], spec["parallelTrialCount"]) == (12, 2)
    assert spec["metricsCollectorSpec"] == {"collector": {"kind": "StdOut"}}
    template = spec["trialTemplate"]
    assert (template["successCondition"], template["failureCondition"]) == (
        JOB_SUCCESS,
        JOB_FAILURE,
    )


def _values(config: Config) -> dict[str, str]:
    """A value per parameter as Katib's suggestion hands it over (strings)."""
    values = {}
    for key, spec in config.tune.space.items():
        if isinstance(spec, FloatParam):
            values[key] = repr((spec.low + spec.high) / 2)
        elif isinstance(spec, IntParam):
            values[key] = str(spec.high)
        else:
            assert isinstance(spec, CategoricalParam)
            values[key] = str(spec.choices[-1])
    return values


def test_the_trial_job_is_a_strictly_valid_kubernetes_job(config: Config, experiment) -> None:
    import kubernetes_validate

    job = substituted(experiment, _values(config), "tune-x-abcd1234")
    kubernetes_validate.validate(job, "1.33.0", strict=True)
    assert job["spec"]["backoffLimit"] == 0


def test_the_trial_trains_the_cluster_config_with_the_trial_values(
    config: Config, experiment, tmp_path: Path
) -> None:
    values = _values(config)
    container = _container(substituted(experiment, values, "tune-x-abcd1234"))
    command = [*container["command"], *container["args"]]
    # Katib's metrics wrapper joins the command into `sh -c "<words> 1>metrics.log 2>&1 ..."`.
    assert shlex.split(" ".join(command)) == command
    assert command[:4] == ["garbage", "train", "--run-name", "tune-x-abcd1234"]
    overrides = [value for flag, value in zip(command[4::2], command[5::2], strict=True)]
    assert all(flag == "--set" for flag in command[4::2])
    env = {e["name"]: e for e in container["env"]}
    base = tmp_path / "config.json"
    base.write_text(env[TRIAL_CONFIG_ENV]["value"])
    trial = load_config(base, overrides, environ={})  # what `garbage train` does with them
    assert trial.mlflow_tracking_uri == CLUSTER_TRACKING_URI
    assert trial.work_dir == Path("work")  # relative to the image's home, a volume there
    assert trial.train.device == "cuda" and trial.model.image_height == 240  # the gpu profile
    assert trial.train.learning_rate == float(values["train.learning_rate"])
    assert trial.train.freeze_stages == int(values["train.freeze_stages"])
    assert trial.train.augment.scale_min == float(values["train.augment.scale_min"])
    for key in MLFLOW_LOGIN:
        assert env[key]["valueFrom"] == {"secretKeyRef": {"name": MLFLOW_SECRET, "key": key}}


def test_only_a_trial_on_a_dataset_version_gets_the_read_only_datasets_key(config: Config) -> None:
    def secrets(experiment: dict[str, Any]) -> dict[str, str]:
        container = _container(substituted(experiment, _values(config), "tune-x-abcd1234"))
        return {
            e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
            for e in container["env"]
            if "valueFrom" in e
        }

    assert secrets(build_experiment(config)) == dict.fromkeys(MLFLOW_LOGIN, MLFLOW_SECRET)
    on_version = config.model_copy(
        update={"data": config.data.model_copy(update={"version": "ds-0123456789ab"})}
    )
    assert secrets(build_experiment(on_version)) == {
        **dict.fromkeys(MLFLOW_LOGIN, MLFLOW_SECRET),
        **dict.fromkeys(DATASETS_LOGIN, DATASETS_SECRET),
    }


def test_a_resumed_experiment_changes_only_what_katib_lets_change(config: Config) -> None:
    more = config.model_copy(update={"tune": config.tune.model_copy(update={"trials": 40})})
    first, second = build_experiment(config), build_experiment(more)
    assert first["metadata"]["name"] == second["metadata"]["name"]
    for spec in (first["spec"], second["spec"]):
        for key in ("maxTrialCount", "parallelTrialCount", "maxFailedTrialCount"):
            spec.pop(key)
    assert first["spec"] == second["spec"]


def test_the_trial_pod_is_locked_down_and_sized_like_the_train_step(experiment) -> None:
    job = experiment["spec"]["trialTemplate"]["trialSpec"]
    pod = job["spec"]["template"]["spec"]
    container = _container(job)
    assert pod["serviceAccountName"] == TRIAL_SERVICE_ACCOUNT
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/home/app/work", "/tmp", "/dev/shm"} <= mounts  # writable places, root is not
    resources = container["resources"]
    assert resources["requests"] == {
        "cpu": GPU_CLUSTER.cpu_request,
        "memory": GPU_CLUSTER.memory_request,
    }
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == (
        "garbage-tune-trial"
    )


def test_a_cpu_cluster_gets_no_gpu(config: Config) -> None:
    job = build_experiment(config, resources=CPU_CLUSTER)["spec"]["trialTemplate"]["trialSpec"]
    pod = job["spec"]["template"]["spec"]
    limits = _container(job)["resources"]["limits"]
    assert limits == {"cpu": CPU_CLUSTER.cpu_limit, "memory": CPU_CLUSTER.memory_limit}
    assert "nodeSelector" not in pod and "tolerations" not in pod


def test_the_trials_service_account_is_in_the_manifests_without_a_token() -> None:
    docs = list(
        yaml.safe_load_all(
            (REPO / "manifests/base/rbac").joinpath("tune-trial-service-account.yaml").read_text()
        )
    )
    [account] = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert account["metadata"] == {
        "name": TRIAL_SERVICE_ACCOUNT,
        "namespace": "kubeflow",
        "labels": {"app.kubernetes.io/name": "garbage-tune-trial"},
    }
    assert account["automountServiceAccountToken"] is False
    kustomization = yaml.safe_load((REPO / "manifests/base/rbac/kustomization.yaml").read_text())
    assert "tune-trial-service-account.yaml" in kustomization["resources"]


def test_the_yaml_keeps_katibs_string_fields_strings(config: Config, tmp_path: Path) -> None:
    small = config.model_copy(
        update={
            "tune": config.tune.model_copy(
                update={
                    "space": {
                        "train.weight_decay": FloatParam(
                            type="float", low=1e-5, high=1e-2, log=True
                        )
                    }
                }
            )
        }
    )
    path = write_experiment(tmp_path / "e" / "experiment.yaml", build_experiment(small))
    [parameter] = yaml.safe_load(path.read_text())["spec"]["parameters"]  # YAML 1.1, as kubectl
    assert parameter["feasibleSpace"] == {
        "min": "0.00001",
        "max": "0.01",
        "distribution": "logUniform",
    }


def test_categorical_choices_travel_as_yaml_words(config: Config, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "tune:\n  space:\n"
        "    model.backbone: {type: categorical, choices: [efficientnet_lite0, resnet18]}\n"
        "    train.ema_decay: {type: categorical, choices: [null, 0.999]}\n"
        "    train.augment.vflip: {type: categorical, choices: [true, false]}\n"
    )
    space = {p["name"]: p for p in katib_parameters(load_config(path, environ={}))}
    assert space["model.backbone"]["feasibleSpace"] == {"list": ["efficientnet_lite0", "resnet18"]}
    assert space["train.ema_decay"]["feasibleSpace"] == {"list": ["null", "0.999"]}
    assert [yaml.safe_load(v) for v in space["train.augment.vflip"]["feasibleSpace"]["list"]] == [
        True,
        False,
    ]


def test_what_katib_cannot_take_is_refused_with_the_reason(config: Config, tmp_path: Path) -> None:
    with pytest.raises(KatibError, match="experiment name 'Tune_1' must be lower-case"):
        build_experiment(config, name="Tune_1")
    empty = config.model_copy(update={"tune": config.tune.model_copy(update={"space": {}})})
    with pytest.raises(KatibError, match=r"tune\.space is empty"):
        build_experiment(empty)
    spaced = config.model_copy(
        update={
            "tune": config.tune.model_copy(
                update={
                    "space": {
                        "model.backbone": CategoricalParam(
                            type="categorical", choices=["resnet18", "a b"]
                        )
                    }
                }
            )
        }
    )
    with pytest.raises(KatibError, match=r"the choice 'a b' cannot be passed to a trial"):
        build_experiment(spaced)
