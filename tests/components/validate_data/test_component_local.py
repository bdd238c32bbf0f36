"""``validate_data`` under kfp.local: the outputs of a passing run; the report of a failing one.

No ``from __future__ import annotations``: KFP reads a pipeline's annotations as types.
"""

from pathlib import Path
from typing import Any, NamedTuple

import pytest
from kfp import dsl
from support import CLASSES, make_image_tree

from components.validate_data import validate_data


@pytest.mark.integration
def test_validate_data_runs_under_kfp_local(
    kfp_local, config_json: str, fetched: dsl.Dataset, validated: dict[str, Any]
) -> None:
    class Outputs(NamedTuple):
        table: dsl.Dataset
        report: dsl.Markdown
        summary: dsl.Metrics

    @dsl.pipeline
    def validate_pipeline(config_json: str) -> Outputs:
        task = validate_data(config_json=config_json, images=kfp_local.importer(fetched))
        return Outputs(
            table=task.outputs["table"],
            report=task.outputs["report"],
            summary=task.outputs["summary"],
        )

    run = validate_pipeline(config_json=config_json)

    table = Path(run.outputs["table"].path)
    assert table.is_relative_to(kfp_local.pipeline_root)
    unit = Path(validated["table"].path)
    assert (table / "images.csv").read_text() == (unit / "images.csv").read_text()
    assert run.outputs["table"].metadata == validated["table"].metadata
    assert Path(run.outputs["report"].path).read_text().startswith("# Data validation: PASSED")
    assert run.outputs["summary"].metadata == validated["summary"].metadata


@pytest.mark.integration
def test_a_failing_validation_leaves_its_report_under_kfp_local(
    kfp_local, config_json: str, tmp_path: Path
) -> None:
    images = make_image_tree(tmp_path / "images", per_class=4, classes=CLASSES[:-1])
    broken = dsl.Dataset(name="images", uri=str(images), metadata={})

    @dsl.pipeline
    def validate_broken(config_json: str):
        validate_data(config_json=config_json, images=kfp_local.importer(broken))

    with pytest.raises(RuntimeError, match="validate-data"):
        validate_broken(config_json=config_json)
    report = kfp_local.task_output("validate-data", "report").read_text()
    assert report.startswith("# Data validation: FAILED")
    assert "missing class folders ['trash']" in report
