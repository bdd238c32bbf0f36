"""Run the pipeline on this machine through ``kfp.local`` (one subprocess per step)."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from datetime import datetime
from graphlib import TopologicalSorter
from pathlib import Path
from typing import TextIO

from kfp.dsl.graph_component import GraphComponent

from garbage.core.config import Config
from pipelines.console import StepConsole


class PipelineFailed(RuntimeError):
    """A step of the local run failed; the message names it, what it died of and its log."""


def pipeline_steps(pipeline: GraphComponent) -> dict[str, str]:
    """Task name to display name of every step, in the order the steps depend on each other.

    Steps inside condition groups (the cluster-only deploy) are left out: they run only on a
    cluster.
    """
    spec = pipeline.pipeline_spec
    tasks = {
        name: task
        for name, task in spec.root.dag.tasks.items()
        if not spec.components[task.component_ref.name].HasField("dag")
    }
    graph = {name: set(task.dependent_tasks) & set(tasks) for name, task in tasks.items()}
    return {name: tasks[name].task_info.name for name in TopologicalSorter(graph).static_order()}


def gate_record(decision_md: Path) -> Path:
    """The gate's ``decision.json`` of a local run, from the path :func:`run_locally` returns.

    The register step writes its files into ``<decision>.d`` beside the Markdown artifact.
    """
    return Path(f"{decision_md}.d") / "decision.json"


def run_locally(config: Config, out: TextIO | None = None) -> Path:
    """Execute the pipeline with ``kfp.local.SubprocessRunner``.

    Steps run as subprocesses of this interpreter (no containers, no per-step virtualenv); their
    artifacts land under ``<work_dir>/kfp``, their full logs under ``<work_dir>/kfp/logs/<time>``.
    ``out`` (default: standard output) shows one line per step, its progress and its outcome.
    Tracking goes to ``config.mlflow_tracking_uri``.

    Returns:
        The path of the promotion gate's Markdown decision (:func:`gate_record` finds its JSON).

    Raises:
        PipelineFailed: A step failed.
    """
    from kfp import local

    from pipelines.training import CPU_CLUSTER, build_pipeline

    out = out or sys.stdout
    pipeline_root = (config.work_dir / "kfp").resolve()
    log_dir = pipeline_root / "logs" / datetime.now().strftime("%Y%m%d-%H%M%S")
    pipeline = build_pipeline(CPU_CLUSTER)  # kfp.local ignores resources either way
    steps = pipeline_steps(pipeline)
    # Progress bars in step logs: redraw rarely, since the logs are not a terminal.
    os.environ.setdefault("TQDM_MININTERVAL", "15")
    # Cluster-only settings (GPU, resources) and the components image are ignored by design here.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
    )
    out.write(f"pipeline {pipeline.name}: {len(steps)} steps; full logs in {log_dir}\n")
    console = StepConsole(log_dir, steps, out)
    try:
        with contextlib.redirect_stdout(console):
            task = pipeline(config_json=config.model_dump_json())
    except RuntimeError as e:
        failed = console.failed
        if failed is None:  # kfp.local itself, before or between the steps
            raise PipelineFailed(f"pipeline failed: {e}; logs in {log_dir}") from e
        raise PipelineFailed(
            f"pipeline failed in {console.label(failed)}:\n    {console.error()}\n"
            f"full log: {console.log_of(failed)}"
        ) from e
    finally:
        console.close()
    return Path(task.outputs["Output"].path)
