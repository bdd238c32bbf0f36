"""``register_model`` under kfp.local, into a store of its own (so version 1 is its first).

No ``from __future__ import annotations``: KFP reads a pipeline's annotations as types.
"""

from pathlib import Path
from typing import NamedTuple

import pytest
from kfp import dsl
from mlflow import MlflowClient

from components.register_model import register_model


@pytest.mark.integration
def test_register_model_runs_under_kfp_local(
    kfp_local,
    config_for,
    fetched: dsl.Dataset,
    manifest: dsl.Dataset,
    exported: dsl.Model,
    reference: dsl.Dataset,
    tmp_path: Path,
) -> None:
    config = config_for(tmp_path / "work")
    uri = config.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment(
        config.registry.experiment, artifact_location=config.mlflow_artifact_location
    )
    run_id = client.create_run(experiment).info.run_id  # the training step's run

    class Outputs(NamedTuple):
        decision: dsl.Markdown
        promoted: bool
        version: str
        model_uri: str

    @dsl.pipeline
    def register_pipeline(config_json: str, run_id: str) -> Outputs:
        task = register_model(
            config_json=config_json,
            run_id=run_id,
            images=kfp_local.importer(fetched),
            manifest=kfp_local.importer(manifest),
            onnx_model=kfp_local.importer(exported),
            reference=kfp_local.importer(reference),
        )
        return Outputs(
            decision=task.outputs["decision"],
            promoted=task.outputs["promoted"],
            version=task.outputs["version"],
            model_uri=task.outputs["model_uri"],
        )

    run = register_pipeline(config_json=config.model_dump_json(), run_id=run_id)

    assert run.outputs["promoted"] is True and run.outputs["version"] == "1"
    decision = run.outputs["decision"]
    assert Path(decision.path).is_relative_to(kfp_local.pipeline_root)
    assert decision.metadata == {"promoted": True, "version": "1"}
    assert Path(decision.path).read_text().startswith("# Promotion gate: version 1 promoted")
    champion = client.get_model_version_by_alias(
        config.registry.model_name, config.registry.champion_alias
    )
    assert str(champion.version) == "1" and champion.run_id == run_id
    assert run.outputs["model_uri"].startswith("models:/")
