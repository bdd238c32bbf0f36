"""``evaluate_model`` under kfp.local, on the shared checkpoint: the in-process results again.

No ``from __future__ import annotations``: KFP reads a pipeline's annotations as types.
"""

from pathlib import Path
from typing import Any, NamedTuple

import pytest
from kfp import dsl

from components.evaluate_model import evaluate_model


@pytest.mark.integration
def test_evaluate_model_runs_under_kfp_local(
    kfp_local,
    config_json: str,
    fetched: dsl.Dataset,
    manifest: dsl.Dataset,
    trained: dict[str, Any],
    evaluated: dict[str, Any],
) -> None:
    class Outputs(NamedTuple):
        metrics: dsl.Metrics
        confusion: dsl.ClassificationMetrics
        report: dsl.HTML
        evaluation: dsl.Dataset
        macro_f1: float

    @dsl.pipeline
    def evaluate_pipeline(config_json: str, run_id: str) -> Outputs:
        task = evaluate_model(
            config_json=config_json,
            run_id=run_id,
            images=kfp_local.importer(fetched),
            manifest=kfp_local.importer(manifest),
            model=kfp_local.importer(trained["model"]),
        )
        return Outputs(
            metrics=task.outputs["metrics"],
            confusion=task.outputs["confusion"],
            report=task.outputs["report"],
            evaluation=task.outputs["evaluation"],
            macro_f1=task.outputs["Output"],
        )

    run = evaluate_pipeline(config_json=config_json, run_id=trained["run_id"])

    assert Path(run.outputs["report"].path).is_relative_to(kfp_local.pipeline_root)
    # the same checkpoint on the same images: the same numbers as in-process
    assert run.outputs["macro_f1"] == pytest.approx(evaluated["macro_f1"])
    assert run.outputs["metrics"].metadata == pytest.approx(evaluated["metrics"].metadata)
    assert run.outputs["confusion"].metadata == evaluated["confusion"].metadata
    assert Path(run.outputs["report"].path).read_text().startswith("<html>")
    assert (Path(run.outputs["evaluation"].path) / "predictions.csv").is_file()
