"""``reference_profile`` under kfp.local: the same profile as in-process.

No ``from __future__ import annotations``: KFP reads a pipeline's annotations as types.
"""

from pathlib import Path

import pandas as pd
import pytest
from kfp import dsl

from components.reference_profile import reference_profile


@pytest.mark.integration
def test_reference_profile_runs_under_kfp_local(
    kfp_local,
    fetched: dsl.Dataset,
    manifest: dsl.Dataset,
    exported: dsl.Model,
    reference: dsl.Dataset,
) -> None:
    @dsl.pipeline
    def reference_pipeline() -> dsl.Dataset:
        return reference_profile(
            images=kfp_local.importer(fetched),
            manifest=kfp_local.importer(manifest),
            onnx_model=kfp_local.importer(exported),
        ).outputs["reference"]

    run = reference_pipeline()

    produced = run.outputs["Output"]
    assert Path(produced.path).is_relative_to(kfp_local.pipeline_root)
    assert produced.metadata == {"file": "reference.parquet"}
    pd.testing.assert_frame_equal(
        pd.read_parquet(Path(produced.path) / "reference.parquet"),
        pd.read_parquet(Path(reference.path) / "reference.parquet"),
        atol=1e-5,
    )
