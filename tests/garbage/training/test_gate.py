"""The promotion gate per data slice: the pure decision on synthetic scores, and register_step on
a manifest with two sources (a champion better on one of them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from support import constant_onnx_model, jpeg_bytes, register_champion

from garbage.core.config import Config, ConfigError, load_config
from garbage.training.data.split import write_manifest
from garbage.training.metrics import Scored
from garbage.training.registry import (
    GateDecision,
    SliceScore,
    configure_tracking,
    decide_promotion,
    gate_table,
    slice_key,
    slice_scores,
    slice_tags,
)
from garbage.training.steps import register_step


def _decide(
    candidate: float,
    champion: float | None,
    slices: list[SliceScore],
    min_metric: float = 0.0,
) -> GateDecision:
    return decide_promotion(
        "macro_f1",
        candidate,
        champion,
        0.0,
        min_metric,
        "3",
        slices=slices,
        slice_tolerance=0.01,
        min_slice_images=20,
    )


def test_a_slice_worse_beyond_the_tolerance_stops_a_candidate_that_is_better_overall() -> None:
    decision = _decide(
        0.90,
        0.85,
        [SliceScore("site-a", 200, 0.95, 0.80), SliceScore("trashnet", 150, 0.85, 0.88)],
    )
    assert decision.promote is False
    assert "beats champion v3" in decision.reason
    assert "but slice 'trashnet' gets worse: macro_f1 0.8500 vs 0.8800 (-0.0300" in decision.reason
    assert "'site-a'" not in decision.reason
    assert decision.reason.endswith("the champion stays")
    rows = {r.slice: r for r in decision.slices}
    assert rows["trashnet"].blocks and rows["trashnet"].within_tolerance is False
    assert rows["trashnet"].change == pytest.approx(-0.03)
    assert rows["site-a"].gating and not rows["site-a"].blocks


def test_a_slice_worse_within_the_tolerance_lets_the_candidate_through() -> None:
    decision = _decide(
        0.90,
        0.85,
        [SliceScore("site-a", 200, 0.95, 0.80), SliceScore("trashnet", 150, 0.875, 0.88)],
    )
    assert decision.promote is True
    assert "no slice gets worse by more than 0.0100 (2 of 2 slices gating)" in decision.reason
    assert all(r.within_tolerance for r in decision.slices)


def test_a_change_of_exactly_the_tolerance_is_within_it() -> None:
    decision = _decide(
        0.90, 0.85, [SliceScore("a", 50, 0.95, 0.80), SliceScore("b", 50, 0.90, 0.91)]
    )
    assert decision.promote is True


def test_a_slice_under_min_slice_images_is_reported_but_does_not_gate() -> None:
    decision = _decide(
        0.90,
        0.85,
        [SliceScore("site-a", 200, 0.95, 0.80), SliceScore("site-b", 12, 0.40, 0.90)],
    )
    assert decision.promote is True
    assert "1 of 2 slices gating; under 20 test images: site-b" in decision.reason
    small = {r.slice: r for r in decision.slices}["site-b"]
    assert not small.gating and small.within_tolerance is False and not small.blocks
    assert small.note == "not gating: 12 images < 20"
    assert "| site-b | 12 | 0.4000 | 0.9000 | -0.5000 | not gating: 12 images < 20 |" in (
        gate_table(decision)
    )


def test_without_a_champion_the_candidate_passes_and_every_row_says_so() -> None:
    decision = _decide(
        0.70, None, [SliceScore("site-a", 200, 0.6), SliceScore("trashnet", 90, 0.8)]
    )
    assert decision.promote is True
    assert decision.reason == "no champion yet; candidate macro_f1 0.7000 becomes champion"
    assert decision.champion_version is None
    assert [(r.champion, r.change, r.gating, r.note) for r in decision.slices] == [
        (None, None, False, "no champion")
    ] * 2
    assert slice_tags(decision) == {
        "gate.slice.site-a": "0.6000 (no champion)",
        "gate.slice.trashnet": "0.8000 (no champion)",
    }


def test_the_floor_still_applies_with_slices() -> None:
    decision = _decide(
        0.50, 0.40, [SliceScore("a", 50, 0.6, 0.4), SliceScore("b", 50, 0.4, 0.4)], min_metric=0.6
    )
    assert decision.promote is False and "below the floor 0.6000" in decision.reason


def test_a_candidate_that_does_not_beat_the_champion_also_names_the_slices_it_loses() -> None:
    decision = _decide(
        0.84, 0.85, [SliceScore("a", 50, 0.90, 0.80), SliceScore("b", 50, 0.78, 0.90)]
    )
    assert decision.promote is False
    assert "does not beat champion v3 (0.8500)" in decision.reason
    assert "; also slice 'b' gets worse: macro_f1 0.7800 vs 0.9000 (-0.1200" in decision.reason


@pytest.mark.parametrize(
    ("candidate", "champion", "margin", "floor"),
    [
        (0.80, None, 0.0, 0.0),
        (0.85, 0.80, 0.01, 0.0),
        (0.80, 0.80, 0.0, 0.0),
        (0.805, 0.80, 0.01, 0.0),
        (0.70, 0.60, 0.0, 0.75),
        (0.70, 0.90, 0.0, 0.0),  # far worse: the one slice is the whole split, no "also"
    ],
)
def test_one_slice_decides_as_the_overall_rule_alone(
    candidate: float, champion: float | None, margin: float, floor: float
) -> None:
    alone = decide_promotion("macro_f1", candidate, champion, margin, floor, "3")
    sliced = decide_promotion(
        "macro_f1",
        candidate,
        champion,
        margin,
        floor,
        "3",
        slices=[SliceScore("trashnet-112-dev", 400, candidate, champion)],
        slice_tolerance=0.0,
        min_slice_images=1,
    )
    assert (sliced.promote, sliced.reason) == (alone.promote, alone.reason)
    assert len(sliced.slices) == 1 and not sliced.slices[0].gating


def _mean_rule(slices: list[SliceScore], pooled: tuple[float, float | None]) -> GateDecision:
    return decide_promotion(
        "macro_f1",
        *pooled,
        0.0,
        0.0,
        "1",
        slices=slices,
        slice_tolerance=0.01,
        min_slice_images=20,
        overall="slice_mean",
    )


#: The bench-adapt k = 25 loop: the site slice much better, TrashNet a little worse, and the
#: pooled score (321 TrashNet images, 22 site ones) no better.
SMALL_SITE_BIG_BASE = [SliceScore("site", 22, 0.70, 0.40), SliceScore("trashnet", 321, 0.865, 0.87)]


def test_the_slice_mean_lets_a_much_better_site_through_where_the_pooled_score_does_not() -> None:
    pooled = decide_promotion(
        "macro_f1",
        0.8419,
        0.8422,
        0.0,
        0.0,
        "1",
        slices=SMALL_SITE_BIG_BASE,
        slice_tolerance=0.01,
        min_slice_images=20,
    )
    mean = _mean_rule(SMALL_SITE_BIG_BASE, (0.8419, 0.8422))
    assert pooled.promote is False and pooled.overall == "pooled"
    assert mean.promote is True and mean.overall == "slice_mean"
    assert (mean.candidate, mean.champion) == pytest.approx(((0.70 + 0.865) / 2, (0.40 + 0.87) / 2))
    assert mean.reason.startswith("candidate macro_f1 (mean of 2 slices) 0.7825 beats champion v1")
    assert gate_table(mean).splitlines()[2].startswith("| **mean of slices** | 343 | 0.7825 |")


def test_the_slice_mean_still_stops_a_slice_worse_beyond_the_tolerance() -> None:
    slices = [SliceScore("site", 40, 0.90, 0.40), SliceScore("trashnet", 321, 0.83, 0.87)]
    decision = _mean_rule(slices, (0.84, 0.85))
    assert decision.promote is False
    assert "beats champion v1" in decision.reason
    assert "but slice 'trashnet' gets worse" in decision.reason


def test_the_slice_mean_leaves_out_small_slices_and_needs_two() -> None:
    three = [
        SliceScore("site", 30, 0.80, 0.60),
        SliceScore("tiny", 5, 0.0, 1.0),
        SliceScore("trashnet", 300, 0.90, 0.90),
    ]
    decision = _mean_rule(three, (0.88, 0.88))
    assert decision.candidate == pytest.approx(0.85) and decision.champion == pytest.approx(0.75)
    assert "(mean of 2 slices)" in decision.reason
    one_counts = [SliceScore("site", 10, 0.80, 0.60), SliceScore("trashnet", 300, 0.90, 0.90)]
    fallback = _mean_rule(one_counts, (0.88, 0.88))
    assert fallback.overall == "pooled" and fallback.candidate == 0.88
    assert fallback.reason.startswith("candidate macro_f1 0.8800 does not beat")
    first = _mean_rule([SMALL_SITE_BIG_BASE[0], SliceScore("trashnet", 321, 0.865)], (0.84, None))
    assert first.promote and first.candidate == pytest.approx((0.70 + 0.865) / 2)
    assert first.reason.startswith("no champion yet; candidate macro_f1 (mean of 2 slices)")


def test_an_unknown_overall_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="overall must be one of"):
        decide_promotion("macro_f1", 0.5, None, 0.0, overall="median")


def test_slice_scores_take_both_passes_per_slice_metrics() -> None:
    classes = ["glass", "paper"]
    candidate = Scored(
        classes, [0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0.9] * 5, ["a", "a", "b", "b", "b"]
    )
    champion = Scored(
        classes, [0, 0, 1, 1, 1], [1, 0, 1, 1, 1], [0.9] * 5, ["a", "a", "b", "b", "b"]
    )
    scores = slice_scores("accuracy", candidate.slices(), champion.slices())
    assert [(s.name, s.images) for s in scores] == [("a", 2), ("b", 3)]
    assert [s.candidate for s in scores] == pytest.approx([1.0, 2 / 3])
    assert [s.champion for s in scores] == pytest.approx([0.5, 1.0])
    assert [s.champion for s in slice_scores("accuracy", candidate.slices())] == [None, None]
    with pytest.raises(KeyError, match="slice 'a': its metrics have no 'f1_weighted'"):
        slice_scores("f1_weighted", candidate.slices())


def test_the_decision_as_json_table_and_tags() -> None:
    decision = _decide(
        0.90,
        0.85,
        [SliceScore("site a|b", 200, 0.95, 0.80), SliceScore("trashnet", 150, 0.85, 0.88)],
    )
    row = json.loads(json.dumps(decision.to_dict()))["slices"][1]
    assert row == {
        "slice": "trashnet",
        "images": 150,
        "candidate": 0.85,
        "champion": 0.88,
        "change": pytest.approx(-0.03),
        "gating": True,
        "within_tolerance": False,
        "note": "worse by 0.0300 > tolerance 0.0100: blocks",
    }
    lines = gate_table(decision).splitlines()
    assert lines[2] == "| **all** | 350 | 0.9000 | 0.8500 | +0.0500 | does not pass |"
    assert lines[3].startswith("| site a\\|b | 200 | 0.9500 | 0.8000 | +0.1500 | within")
    assert slice_key("site a|b") == "site_a_b"
    assert slice_tags(decision) == {
        "gate.slice.site_a_b": "0.9500 vs 0.8000 (+0.1500)",
        "gate.slice.trashnet": "0.8500 vs 0.8800 (-0.0300); worse by 0.0300 > tolerance "
        "0.0100: blocks",
    }


def test_the_slice_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="slice_tolerance"):
        load_config(profile="smoke", overrides=["registry.slice_tolerance=-0.1"], environ={})
    with pytest.raises(ConfigError, match="min_slice_images"):
        load_config(profile="smoke", overrides=["registry.min_slice_images=0"], environ={})
    with pytest.raises(ConfigError, match="overall"):
        load_config(profile="smoke", overrides=["registry.overall=median"], environ={})
    assert load_config(profile="smoke", environ={}).registry.overall == "slice_mean"


# -- register_step on two sources ------------------------------------------------------------


def _two_source_manifest(images: Path, counts: dict[tuple[str, str], int]) -> pd.DataFrame:
    """Test images ``images/<source>/<label>/<i>.jpg``, ``counts[(source, label)]`` of each."""
    rows: list[dict[str, str]] = []
    for (source, label), count in counts.items():
        folder = images / source / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            name = f"{source}/{label}/{i}.jpg"
            (images / name).write_bytes(jpeg_bytes((30 * i % 255, 90, 160), seed=len(rows)))
            rows.append(
                {"path": name, "label": label, "sha256": f"{len(rows):064x}", "split": "test"}
                | {"source": source}
            )
    return pd.DataFrame(rows)


def _constant_models_on_two_sources(
    smoke_config: Config, tmp_path: Path, **registry: Any
) -> tuple[Config, str, dict[str, Any]]:
    """A champion that always answers c1 and a candidate that always answers c0, gated on 8
    site-a images (all c0) and 6 trashnet ones (all c1) with ``registry`` settings.

    Returns:
        The config, the champion's version and register_step's result.
    """
    settings = smoke_config.registry.model_copy(
        update={"gate_metric": "accuracy", "min_slice_images": 5, **registry}
    )
    data = smoke_config.data.model_copy(update={"classes": ["c0", "c1"]})
    config = smoke_config.model_copy(update={"registry": settings, "data": data})
    images = tmp_path / "images"
    manifest_csv = write_manifest(
        _two_source_manifest(images, {("site-a", "c0"): 8, ("trashnet", "c1"): 6}),
        tmp_path / "manifest.csv",
    )
    champion = register_champion(config, constant_onnx_model(tmp_path / "champion", [0.0, 1.0]))
    candidate = constant_onnx_model(tmp_path / "candidate", [1.0, 0.0])
    with mlflow.start_run(experiment_id=configure_tracking(config)) as run:
        run_id = run.info.run_id
    result = register_step(config, candidate, images, manifest_csv, tmp_path / "gate", run_id)
    return config, champion, result | {"run_id": run_id}


def test_register_step_keeps_the_champion_when_the_candidate_loses_one_source(
    smoke_config: Config, tmp_path: Path
) -> None:
    """The champion always answers c1, the candidate c0: the candidate wins on the pooled split
    (site-a is all c0 and larger) but loses all of trashnet, so it is not promoted; every record
    of the decision has a row per source."""
    config, champion, result = _constant_models_on_two_sources(
        smoke_config, tmp_path, overall="pooled"
    )
    run_id = result["run_id"]

    assert result["promote"] is False and result["version"] == "2"
    assert "beats champion v1 (0.4286) by +0.1429" in result["reason"]
    assert (
        "but slice 'trashnet' gets worse: accuracy 0.0000 vs 1.0000 (-1.0000" in (result["reason"])
    )
    decision_md = (tmp_path / "gate" / "decision.md").read_text()
    assert decision_md.startswith("# Promotion gate: version 2 not promoted\n")
    assert "| **all** | 14 | 0.5714 | 0.4286 | +0.1429 | does not pass |" in decision_md
    assert "| site-a | 8 | 1.0000 | 0.0000 | +1.0000 | within tolerance" in decision_md
    assert (
        "| trashnet | 6 | 0.0000 | 1.0000 | -1.0000 | worse by 1.0000 > tolerance 0.0100: "
        "blocks |" in decision_md
    )

    uri = config.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/gate/decision.json")
    assert [
        (r["slice"], r["images"], r["gating"], r["within_tolerance"]) for r in logged["slices"]
    ] == [
        ("site-a", 8, True, True),
        ("trashnet", 6, True, False),
    ]
    assert (
        json.loads((tmp_path / "gate" / "decision.json").read_text())["slices"] == logged["slices"]
    )
    metrics = client.get_run(run_id).data.metrics
    assert metrics["gate_slice_site-a_accuracy"] == 1.0
    assert metrics["gate_slice_trashnet_accuracy"] == 0.0

    version = client.get_model_version(config.registry.model_name, result["version"])
    assert version.tags["gate.slice.site-a"] == "1.0000 vs 0.0000 (+1.0000)"
    assert version.tags["gate.slice.trashnet"] == (
        "0.0000 vs 1.0000 (-1.0000); worse by 1.0000 > tolerance 0.0100: blocks"
    )
    assert "slice 'trashnet' gets worse" in version.tags["gate_decision"]
    assert "## Promotion gate\n\n| slice | images |" in version.description
    assert "| trashnet | 6 | 0.0000 | 1.0000 | -1.0000 |" in version.description
    champion_now = client.get_model_version_by_alias(
        config.registry.model_name, config.registry.champion_alias
    )
    assert str(champion_now.version) == champion == "1"


def test_register_step_gates_on_the_mean_of_the_slices_by_default(
    smoke_config: Config, tmp_path: Path
) -> None:
    """The same two models as above: pooled the candidate wins, but on the mean of the two
    slices (1.0 and 0.0 against 0.0 and 1.0) it does not."""
    assert smoke_config.registry.overall == "slice_mean"
    _, _, result = _constant_models_on_two_sources(smoke_config, tmp_path, slice_tolerance=1.0)

    assert result["promote"] is False
    assert result["reason"].startswith(
        "candidate accuracy (mean of 2 slices) 0.5000 does not beat champion v1 (0.5000)"
    )
    decision_md = (tmp_path / "gate" / "decision.md").read_text()
    assert "| **mean of slices** | 14 | 0.5000 | 0.5000 | +0.0000 | does not pass |" in decision_md
