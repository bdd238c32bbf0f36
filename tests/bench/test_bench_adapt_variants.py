"""The retrain-variants benchmark's own logic, without its pipelines: the command line, the loop
it starts from, and the report (read from the results it committed,
``bench/results/adapt-variants.json``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from bench import bench_adapt_variants as variants


@pytest.fixture
def report() -> dict[str, Any]:
    return json.loads((variants.adapt.RESULTS / "adapt-variants.json").read_text())


def test_parse_args_reads_each_variant_with_its_overrides() -> None:
    args = variants.parse_args(
        ["--variant", "retrain", "--variant", "freeze-1", "train.freeze_stages=1", "--k", "25"]
    )
    assert args.variant == [["retrain"], ["freeze-1", "train.freeze_stages=1"]]
    assert args.k == 25


def test_parse_args_refuses_two_variants_of_one_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        variants.parse_args(["--variant", "a", "--variant", "a", "train.seed=1"])
    assert "variant names must differ: ['a', 'a']" in capsys.readouterr().err


def test_loop_version_reads_the_version_the_loop_built(tmp_path: Path) -> None:
    settings = variants.adapt.parse_args(["--work", str(tmp_path), "--k", "100"])
    (tmp_path / "k100").mkdir()
    (tmp_path / "k100" / "retrain.json").write_text(json.dumps({"version": {"name": "ds-1"}}))
    assert variants.loop_version(settings, 100) == ("ds-1", tmp_path / "k100" / "datasets")


def test_loop_version_without_the_loop_says_which_command_builds_it(tmp_path: Path) -> None:
    settings = variants.adapt.parse_args(["--work", str(tmp_path)])
    with pytest.raises(
        variants.adapt.BenchError, match=r"run `python bench/bench_adapt.py --k 50`"
    ):
        variants.loop_version(settings, 50)


def test_write_results_tables_each_variant_with_its_time_against_the_first(
    report: dict, tmp_path: Path
) -> None:
    report = copy.deepcopy(report)
    first, second = report["variants"][:2]
    second["pipeline_seconds"] = 2 * first["pipeline_seconds"]
    variants.write_results(report, tmp_path)
    assert json.loads((tmp_path / "adapt-variants.json").read_text()) == report
    text = (tmp_path / "adapt-variants.md").read_text()
    assert (
        f"| {first['name']} | - | {variants.adapt.pct(first['after']['site']['accuracy'])} " in text
    )
    overrides = " ".join(f"`{o}`" for o in second["overrides"])
    assert f"| {second['name']} | {overrides} |" in text
    assert f"| {second['pipeline_seconds'] / 60:.1f} min | 2.00 |" in text
    assert "| variant | cardboard | glass | metal | paper | plastic | trash |" in text
