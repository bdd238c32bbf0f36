"""Training benchmark: the real pipeline (`garbage pipeline run`) on the full development archive.

    .venv/bin/python bench/bench_train.py [--profile default|gpu] [--set key=value ...]

Runs the pipeline as a user would, in a fresh work dir (so the promotion gate starts empty),
while sampling the memory of the whole process tree. Reports test accuracy, macro-F1 and
per-class recall (from MLflow), wall time per stage (from the steps' kfp.local logs), training
images/s, peak memory and the machine. Writes ``bench/results/train[-PROFILE].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.machine import describe_machine  # noqa: E402

RESULTS = REPO / "bench" / "results"
DEV_ARCHIVE = REPO.parent / "shared" / "data" / "trashnet-112-dev.tar.gz"
DEV_ARCHIVE_SHA256 = "cb0934a9c4e8c36e8cf510364a57c55f006eabc831a9c5a78194c8059155cb08"
TASK_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) - INFO - (Executing task|Task) .*?'([\w-]+)'")
TARGETS = {"default": {"minutes": 15, "test_accuracy": 0.90}, "gpu": {"test_accuracy": 0.95}}


class MemorySampler(threading.Thread):
    """Peak resident memory of a process and its children, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak_tree = 0
        self.peak_single = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
                sizes = []
                for p in processes:
                    with contextlib.suppress(psutil.Error):
                        sizes.append(p.memory_info().rss)
                self.peak_tree = max(self.peak_tree, sum(sizes))
                self.peak_single = max(self.peak_single, max(sizes, default=0))
            except psutil.Error:
                pass
            self.stop.wait(0.2)


def stage_times(log: str) -> dict[str, float]:
    """Seconds per pipeline task, from kfp.local's 'Executing task' / 'Task ... finished' lines."""
    started: dict[str, datetime] = {}
    durations: dict[str, float] = {}
    for line in log.splitlines():
        match = TASK_LINE.match(re.sub(r"\x1b\[[0-9;]*m", "", line))
        if not match:
            continue
        stamp = datetime.strptime(match.group(1), "%H:%M:%S.%f")
        name = match.group(3)
        if match.group(2) == "Executing task":
            started[name] = stamp
        elif name in started and "finished" in line:
            durations[name] = round((stamp - started[name]).total_seconds() % 86400, 1)
    return durations


def run_metrics(work_dir: Path, profile: str, overrides: list[str]) -> dict[str, Any]:
    """Metrics of the champion's training run, read back from MLflow."""
    import mlflow
    from mlflow import MlflowClient

    from garbage.core.config import load_config

    config = load_config(profile=profile, overrides=[*overrides, f"work_dir={work_dir}"])
    mlflow.set_tracking_uri(config.mlflow_tracking_uri)
    client = MlflowClient()
    version = client.get_model_version_by_alias(config.registry.model_name, "champion")
    run = client.get_run(version.run_id)
    m = run.data.metrics
    epochs = client.get_metric_history(run.info.run_id, "train_images_per_second")
    return {
        "config": {
            k: v
            for k, v in run.data.params.items()
            if k.startswith(("model.", "train.epochs", "train.batch", "train.freeze"))
        },
        "test_accuracy": m["test_accuracy"],
        "test_macro_f1": m["test_macro_f1"],
        "test_recall": {
            k.removeprefix("test_recall_"): v for k, v in m.items() if k.startswith("test_recall_")
        },
        "best_val_macro_f1": m["best_val_macro_f1"],
        "train_images_per_second": m["train_images_per_second_avg"],
        "train_images_per_second_per_epoch": [round(e.value, 1) for e in epochs],
        "device": run.data.tags.get("device"),
        "mlflow_run_id": run.info.run_id,
    }


def to_markdown(report: dict[str, Any]) -> str:
    """A readable table of the report."""
    r = report
    lines = [
        f"# Training benchmark ({r['profile']} profile), {r['date']}",
        "",
        f"Machine: {r['machine']['cpu']}, {r['machine']['cpus_available']} CPUs, "
        f"{r['machine']['memory_gib']} GiB, GPU: {r['machine']['gpu'] or 'none'}. "
        f"Command: `{r['command']}`",
        "",
        "| metric | value |",
        "| --- | ---: |",
        f"| pipeline wall time | {r['wall_seconds'] / 60:.1f} min |",
        f"| test accuracy | {r['metrics']['test_accuracy']:.4f} |",
        f"| test macro-F1 | {r['metrics']['test_macro_f1']:.4f} |",
        f"| training images/s | {r['metrics']['train_images_per_second']:.1f} |",
        f"| peak memory, one step | {r['peak_rss_single_mib']:.0f} MiB |",
        f"| peak memory, process tree | {r['peak_rss_tree_mib']:.0f} MiB |",
        "",
        "| class | test recall |",
        "| --- | ---: |",
        *[f"| {k} | {v:.3f} |" for k, v in r["metrics"]["test_recall"].items()],
        "",
        "| stage | seconds |",
        "| --- | ---: |",
        *[f"| {k} | {v} |" for k, v in r["stage_seconds"].items()],
        "",
        "| target | met |",
        "| --- | --- |",
        *[f"| {k} | {'yes' if v else 'NO'} |" for k, v in r["targets_met"].items()],
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Run the benchmark and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="default: a fresh temporary folder"
    )
    args = parser.parse_args()

    env = dict(os.environ)
    if "GARBAGE_DATA_SOURCE" not in env and DEV_ARCHIVE.is_file():
        env.update(GARBAGE_DATA_SOURCE=str(DEV_ARCHIVE), GARBAGE_DATA_SHA256=DEV_ARCHIVE_SHA256)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-train-"))
    command = [
        str(REPO / ".venv" / "bin" / "garbage"),
        "pipeline",
        "run",
        "--profile",
        args.profile,
        "--set",
        f"work_dir={work_dir}",
        *[a for o in args.overrides for a in ("--set", o)],
    ]
    machine = describe_machine(("torch", "torchvision", "timm", "kfp", "mlflow", "onnxruntime"))
    print("running:", " ".join(command), flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )
    sampler = MemorySampler(process.pid)
    sampler.start()
    log_lines = []
    assert process.stdout is not None
    for line in process.stdout:  # a line per step, its progress and outcome
        log_lines.append(line)
        print(line.rstrip()[:160], flush=True)
    code = process.wait()
    wall = time.perf_counter() - started
    sampler.stop.set()
    # Each step's full log, in the order the steps ran (their first line is kfp.local's).
    step_logs = sorted((work_dir / "kfp" / "logs").glob("*/*.log"), key=lambda p: p.stat().st_mtime)
    log = "".join(log_lines) + "".join(p.read_text() for p in step_logs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.profile == "default" else f"-{args.profile}"
    (RESULTS / f"train{suffix}.log").write_text(log)
    if code != 0:
        print(log[-5000:], file=sys.stderr)
        print(f"pipeline failed with exit code {code}", file=sys.stderr)
        return code

    metrics = run_metrics(work_dir, args.profile, args.overrides)
    targets = TARGETS.get(args.profile, {})
    met = {}
    if "minutes" in targets:
        met[f"pipeline <= {targets['minutes']} min"] = wall <= targets["minutes"] * 60
    if "test_accuracy" in targets:
        met[f"test accuracy >= {targets['test_accuracy']:.0%}"] = (
            metrics["test_accuracy"] >= targets["test_accuracy"]
        )
    report = {
        "profile": args.profile,
        "date": datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["garbage", *command[1:]]),
        "machine": machine,
        "wall_seconds": round(wall, 1),
        "stage_seconds": stage_times(log),
        "peak_rss_tree_mib": round(sampler.peak_tree / 2**20, 1),
        "peak_rss_single_mib": round(sampler.peak_single / 2**20, 1),
        "metrics": metrics,
        "targets_met": met,
    }
    (RESULTS / f"train{suffix}.json").write_text(json.dumps(report, indent=2))
    markdown = to_markdown(report)
    (RESULTS / f"train{suffix}.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
