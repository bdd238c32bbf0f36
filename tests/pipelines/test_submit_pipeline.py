"""``garbage pipeline submit``: compile for the cluster, create the run through a KFP client.

``FakeKFPClient`` is a FAKE of ``kfp.Client``: a Kubeflow Pipelines API server needs Kubernetes,
which cannot run on the development and CI machines. It records what ``submit`` sends (the
compiled package is read while the call happens) and answers like the client does.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import typer
import yaml
from kubernetes.utils import parse_quantity
from typer.testing import CliRunner

from garbage.core.config import Config, load_config
from pipelines.submit import (
    CLUSTER_TRACKING_URI,
    SubmitError,
    cluster_config,
    submit_pipeline,
    wait_for_run,
)


class FakeKFPClient:
    """A fake ``kfp.Client`` (see the module docstring)."""

    instances: ClassVar[list[FakeKFPClient]] = []

    def __init__(self, host: str | None = None, **kwargs: Any) -> None:
        self.host, self.kwargs = host, kwargs
        self.runs: list[dict[str, Any]] = []
        self.states = ["RUNNING", "SUCCEEDED"]
        self.refuse: Exception | None = None
        FakeKFPClient.instances.append(self)

    def create_run_from_pipeline_package(self, pipeline_file: str, **kwargs: Any) -> Any:
        if self.refuse:
            raise self.refuse
        docs = [d for d in yaml.safe_load_all(Path(pipeline_file).read_text()) if d]
        self.runs.append({"documents": docs, **kwargs})
        return SimpleNamespace(run_id=f"run-{len(self.runs)}")

    def get_run(self, run_id: str) -> Any:
        return SimpleNamespace(run_id=run_id, state=self.states.pop(0))


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(profile="smoke", overrides=[f"work_dir={tmp_path / 'work'}"], environ={})


def _train_executor(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    name = next(n for n in docs[0]["deploymentSpec"]["executors"] if "train" in n)
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].get(name, {})
    return docs[0]["deploymentSpec"]["executors"][name]["container"]["resources"], platform


def test_cluster_config_uses_a_shared_tracking_server_and_a_relative_work_dir(config):
    cfg = cluster_config(config)
    assert cfg.registry.tracking_uri == CLUSTER_TRACKING_URI
    assert cfg.mlflow_tracking_uri == CLUSTER_TRACKING_URI
    assert cfg.work_dir == Path("work")
    explicit = cluster_config(config, "http://mlflow.example:5000")
    assert explicit.mlflow_tracking_uri == "http://mlflow.example:5000"


def test_submit_sends_the_compiled_pipeline_with_the_config(config):
    client = FakeKFPClient("http://kfp.example")
    cfg = cluster_config(config)
    result = submit_pipeline(
        "http://kfp.example/", cfg, experiment="exp", run_name="r1", client=client
    )

    assert result.run_id == "run-1"
    assert result.run_url == "http://kfp.example/#/runs/details/run-1"
    (run,) = client.runs
    assert run["experiment_name"] == "exp" and run["run_name"] == "r1"
    assert run["service_account"] == "garbage-pipeline"
    assert Config.model_validate_json(run["arguments"]["config_json"]) == cfg
    resources, platform = _train_executor(run["documents"])
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert platform["nodeSelector"]


def test_cpu_only_drops_gpu_requests_and_caps_resources(config):
    client = FakeKFPClient()
    submit_pipeline("http://kfp", cluster_config(config), cpu_only=True, client=client)
    docs = client.runs[0]["documents"]
    resources, platform = _train_executor(docs)
    assert "accelerator" not in resources
    assert (
        resources["resourceCpuRequest"] in ("2", "500m")
        and resources["resourceMemoryLimit"] == "6G"
    )
    assert "nodeSelector" not in platform and "tolerations" not in platform
    for executor in docs[0]["deploymentSpec"]["executors"].values():
        resources = executor["container"].get("resources", {})
        assert "accelerator" not in resources
        # every step fits a small node: at most 2 CPUs and 6 GB
        assert parse_quantity(resources["resourceCpuLimit"]) <= 2
        assert parse_quantity(resources["resourceMemoryLimit"]) <= parse_quantity("6G")


def test_a_precompiled_package_cannot_be_refitted_for_a_cpu_cluster(config, tmp_path):
    package = tmp_path / "pipeline.yaml"
    package.write_text("{}")
    with pytest.raises(SubmitError, match="compile the package with `garbage pipeline compile"):
        submit_pipeline(
            "http://kfp", config, package=package, cpu_only=True, client=FakeKFPClient()
        )


def test_wait_reports_a_failed_run(config):
    client = FakeKFPClient()
    client.states = ["FAILED"]  # final at once: no real sleep in this test
    with pytest.raises(SubmitError, match="run run-1 ended FAILED"):
        submit_pipeline("http://kfp", cluster_config(config), wait=True, client=client)
    ok = FakeKFPClient()
    ok.states = ["PENDING", "RUNNING", "SUCCEEDED"]
    sleeps: list[float] = []
    assert wait_for_run(ok, "r", timeout_s=100, poll_s=1, sleep=sleeps.append) == "SUCCEEDED"
    assert sleeps == [1, 1]


def test_wait_times_out():
    client = FakeKFPClient()
    client.states = ["RUNNING"] * 10
    now = [0.0]
    with pytest.raises(SubmitError, match="still RUNNING after 5 s"):
        wait_for_run(
            client,
            "r",
            timeout_s=5,
            poll_s=3,
            clock=lambda: now[0],
            sleep=lambda s: now.__setitem__(0, now[0] + s),
        )


def test_a_refused_run_names_the_host(config):
    client = FakeKFPClient()
    client.refuse = RuntimeError("HTTP 401 Unauthorized")
    with pytest.raises(SubmitError, match="at http://kfp refused the run: HTTP 401"):
        submit_pipeline("http://kfp", cluster_config(config), client=client)


def test_submit_command(monkeypatch, tmp_path):
    import kfp

    from cli.pipeline import submit

    monkeypatch.setattr(kfp, "Client", FakeKFPClient)
    FakeKFPClient.instances.clear()
    app = typer.Typer()
    app.command()(submit)
    result = CliRunner().invoke(
        app,
        [
            "--host",
            "http://kfp.example",
            "--profile",
            "smoke",
            "--set",
            "train.epochs=1",
            "--cpu-only",
            "--experiment",
            "e2e",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["run_id"] == "run-1"
    (client,) = FakeKFPClient.instances
    assert client.host == "http://kfp.example"
    sent = Config.model_validate_json(client.runs[0]["arguments"]["config_json"])
    assert sent.train.epochs == 1 and sent.mlflow_tracking_uri == CLUSTER_TRACKING_URI

    bad = CliRunner().invoke(app, ["--host", "http://kfp", "--set", "train.epochs=-3"])
    assert bad.exit_code == 2


def test_deploy_parameter_is_set_when_the_pipeline_declares_it(config, tmp_path):
    """The pipeline's deploy step is off by default (kfp.local); a cluster run turns it on."""
    package = tmp_path / "pipeline.yaml"
    package.write_text(
        yaml.safe_dump_all(
            [
                {
                    "root": {
                        "inputDefinitions": {
                            "parameters": {
                                "config_json": {"parameterType": "STRING"},
                                "deploy_to_kserve": {
                                    "parameterType": "BOOLEAN",
                                    "defaultValue": False,
                                },
                            }
                        }
                    },
                    "deploymentSpec": {"executors": {}},
                },
                {"platforms": {"kubernetes": {"deploymentSpec": {"executors": {}}}}},
            ]
        )
    )
    client = FakeKFPClient()
    submit_pipeline("http://kfp", cluster_config(config), package=package, client=client)
    submit_pipeline(
        "http://kfp", cluster_config(config), package=package, deploy=False, client=client
    )
    assert [r["arguments"]["deploy_to_kserve"] for r in client.runs] == [True, False]

    plain = tmp_path / "plain.yaml"
    plain.write_text(
        yaml.safe_dump_all(
            [
                {
                    "root": {
                        "inputDefinitions": {
                            "parameters": {"config_json": {"parameterType": "STRING"}}
                        }
                    }
                }
            ]
        )
    )
    submit_pipeline("http://kfp", cluster_config(config), package=plain, client=client)
    assert set(client.runs[-1]["arguments"]) == {"config_json"}
