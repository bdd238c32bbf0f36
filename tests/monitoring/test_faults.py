"""Faults on the serving and logging path: the real model server (``garbage serve
--logger-url``), the real collector and a load generator, all processes on loopback.

The scenarios are bench/bench_faults.py's (``make bench-faults`` runs them at full scale); here
they run smaller. Each prints what was lost, duplicated or answered 5xx, counted on the
collector's store (events stored by ce-id) against the requests the server answered 200. One
short case (the collector down 3 s) runs in ``make test``; the others are ``slow``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench_faults() -> Any:
    spec = importlib.util.spec_from_file_location(
        "bench_faults", REPO / "bench" / "bench_faults.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_faults", module)
    spec.loader.exec_module(module)
    return module


faults = _bench_faults()


@pytest.fixture
def bench(tmp_path: Path, tiny_model_dir: Path) -> Any:
    return faults.Bench(tmp_path, tiny_model_dir, faults.load_images(16))


def _report(row: dict[str, Any]) -> None:
    shown = {k: v for k, v in row.items() if k != "lost_events"}
    print(json.dumps({**shown, "lost_events": row["lost_events"][:10]}, indent=1))


def _no_loss(row: dict[str, Any]) -> None:
    _report(row)
    assert row["answered_200"] > 0
    assert row["answered_5xx"] == 0 and row["not_answered"] == 0
    assert row["lost"] == 0, row["lost_events"]
    assert row["events_stored"] == row["events_acknowledged"] == 2 * row["answered_200"]


@pytest.mark.integration
def test_a_collector_down_for_3_s_loses_no_acknowledged_event(bench) -> None:
    row = asyncio.run(
        faults.collector_outage(bench, rate=10, outage=3, before=2, after=2, name="outage-3s")
    )
    _no_loss(row)
    counters = row["logger_last_seen"]
    assert counters["retried"] >= 1 and counters["spilled"] >= 1  # the outage was noticed
    assert counters["dropped"] == 0 and counters["rejected"] == 0


@pytest.mark.slow
def test_a_collector_down_for_30_s_loses_no_acknowledged_event(bench) -> None:
    _no_loss(asyncio.run(faults.collector_outage(bench, rate=10, outage=30, after=5)))


@pytest.mark.slow
def test_a_collector_killed_under_load_loses_no_acknowledged_event(bench) -> None:
    row = asyncio.run(faults.collector_kill(bench, rate=10, before=3, after=6))
    _no_loss(row)


@pytest.mark.slow
def test_a_server_killed_under_load_loses_only_what_it_held_in_memory(bench) -> None:
    row = asyncio.run(faults.server_kill(bench, rate=10, before=3, after=6))
    _report(row)
    assert row["answered_5xx"] == 0
    assert row["not_answered"] >= 1  # the requests sent while it was down: refused, never 5xx
    # kill -9 leaves no chance to spill: at most the events of the last moments are gone.
    assert row["lost"] <= 10
    if row["lost"]:
        assert row["lost_answered_within_s_before_kill"] < 1.0


@pytest.mark.slow
def test_a_sink_that_never_answers_holds_bounded_memory_and_loses_nothing(bench) -> None:
    row = asyncio.run(faults.sink_never_answers(bench, rate=10, seconds=10, timeout=1))
    _no_loss(row)
    assert row["events_spilled_at_stop"] >= 1
    assert row["peak_server_rss_mb"] - row["server_rss_at_start_mb"] < 300
