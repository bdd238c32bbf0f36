"""``split_data`` under kfp.local, on the validated table: the same manifest as in-process.

No ``from __future__ import annotations``: KFP reads a pipeline's annotations as types.
"""

from pathlib import Path
from typing import Any

import pytest
from kfp import dsl

from components.split_data import split_data


@pytest.mark.integration
def test_split_data_runs_under_kfp_local(
    kfp_local, config_json: str, validated: dict[str, Any], manifest: dsl.Dataset
) -> None:
    @dsl.pipeline
    def split_pipeline(config_json: str) -> dsl.Dataset:
        table = kfp_local.importer(validated["table"])
        return split_data(config_json=config_json, table=table).outputs["manifest"]

    run = split_pipeline(config_json=config_json)

    produced = run.outputs["Output"]
    assert Path(produced.path).is_relative_to(kfp_local.pipeline_root)
    # seeded and content-addressed: another process gives the same bytes
    assert Path(produced.path).read_bytes() == Path(manifest.path).read_bytes()
    assert produced.metadata == manifest.metadata
