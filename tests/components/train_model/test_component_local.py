"""``train_model`` under kfp.local: one smoke epoch in a subprocess, tracked in the shared store.

No ``from __future__ import annotations``: KFP reads a pipeline's annotations as types.
"""

from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from kfp import dsl
from mlflow import MlflowClient

from components.train_model import train_model
from garbage.core.config import Config


@pytest.mark.integration
def test_train_model_runs_under_kfp_local(
    kfp_local,
    config_json: str,
    pipeline_config: Config,
    fetched: dsl.Dataset,
    manifest: dsl.Dataset,
) -> None:
    class Outputs(NamedTuple):
        model: dsl.Model
        metrics: dsl.Metrics
        run_id: str

    @dsl.pipeline
    def train_pipeline(config_json: str) -> Outputs:
        task = train_model(
            config_json=config_json,
            images=kfp_local.importer(fetched),
            manifest=kfp_local.importer(manifest),
        )
        return Outputs(
            model=task.outputs["model"],
            metrics=task.outputs["metrics"],
            run_id=task.outputs["Output"],
        )

    run = train_pipeline(config_json=config_json)

    model = run.outputs["model"]
    folder = Path(model.path)
    assert folder.is_relative_to(kfp_local.pipeline_root)
    checkpoint = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
    assert checkpoint["classes"] == pipeline_config.data.classes
    run_id = run.outputs["run_id"]
    assert model.metadata["run_id"] == run_id and model.metadata["file"] == "best.pt"
    assert run.outputs["metrics"].metadata["best_epoch"] == 1
    tracked = MlflowClient(tracking_uri=pipeline_config.mlflow_tracking_uri).get_run(run_id)
    assert tracked.info.status == "FINISHED"
    assert (
        tracked.data.metrics["best_val_macro_f1"]
        == run.outputs["metrics"].metadata["best_val_macro_f1"]
    )
