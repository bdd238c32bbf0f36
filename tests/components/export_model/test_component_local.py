"""``export_model`` under kfp.local, on the shared checkpoint: the same model as in-process.

No ``from __future__ import annotations``: KFP reads a pipeline's annotations as types.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kfp import dsl
from support import jpeg_bytes

from components.export_model import export_model
from garbage.core.classifier import OnnxClassifier


@pytest.mark.integration
def test_export_model_runs_under_kfp_local(
    kfp_local,
    config_json: str,
    fetched: dsl.Dataset,
    manifest: dsl.Dataset,
    trained: dict[str, Any],
    exported: dsl.Model,
) -> None:
    @dsl.pipeline
    def export_pipeline(config_json: str, run_id: str) -> dsl.Model:
        return export_model(
            config_json=config_json,
            run_id=run_id,
            images=kfp_local.importer(fetched),
            manifest=kfp_local.importer(manifest),
            model=kfp_local.importer(trained["model"]),
        ).outputs["onnx_model"]

    run = export_pipeline(config_json=config_json, run_id=trained["run_id"])

    onnx_model = run.outputs["Output"]
    folder = Path(onnx_model.path)
    assert folder.is_relative_to(kfp_local.pipeline_root)
    assert onnx_model.metadata["file"] == "model.onnx"
    assert onnx_model.metadata["parity_max_abs_diff"] <= 1e-4
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["mlflow_run_id"] == trained["run_id"]
    # exported from the same checkpoint in another process: the same logits
    here = OnnxClassifier.load(folder, device="cpu")
    there = OnnxClassifier.load(Path(exported.path), device="cpu")
    pixels = np.stack([here.preprocess(jpeg_bytes((40 * i, 90, 200), seed=i)) for i in range(4)])
    np.testing.assert_allclose(here.logits(pixels), there.logits(pixels), atol=1e-5)
