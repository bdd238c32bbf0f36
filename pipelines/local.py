"""Run the pipeline on this machine through ``kfp.local`` (one subprocess per step)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from components.config import Config


def run_locally(config: Config) -> Path:
    """Execute :func:`pipelines.training.garbage_pipeline` with ``kfp.local.SubprocessRunner``.

    Steps run as subprocesses of this interpreter (no containers, no per-step virtualenv); their
    artifacts land under ``<work_dir>/kfp``. Tracking goes to ``config.mlflow_tracking_uri``.

    Returns:
        The path of the promotion gate's Markdown decision.
    """
    from kfp import local

    from pipelines.training import garbage_pipeline

    pipeline_root = (config.work_dir / "kfp").resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
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
    task = garbage_pipeline(config_json=config.model_dump_json())
    return Path(task.outputs["Output"].path)
