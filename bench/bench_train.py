"""Training benchmark: the real pipeline (`garbage pipeline run`) on the full development archive.

    .venv/bin/python bench/bench_train.py [--profile default|gpu] [--set key=value ...]
                                          [--baseline GIT_REF | --no-baseline]

Runs the pipeline as a user would, in a fresh work dir (so the promotion gate starts empty),
while sampling the memory of the whole process tree. Reports test accuracy, macro-F1 and
per-class recall (from MLflow), wall time per stage (from the steps' kfp.local logs), training
images/s, peak memory and the machine.

Side by side, in the same run: the same pipeline at ``--baseline`` (default: the commit before
the current recipe, :data:`BASELINE_REF`), checked out in a temporary git worktree and run with
the same virtual environment, so the ratio of the two wall times holds on a slow day as on a
fast one. Writes ``bench/results/train[-PROFILE].json`` and ``.md``.
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
#: The last commit with the previous training recipe (PIL augmentation in a loader process, every
#: epoch at full resolution, no weight averaging): what the current recipe is measured against.
BASELINE_REF = "8df53de"
TARGETS: dict[str, dict[str, float]] = {
    "default": {"time_ratio": 0.60, "test_accuracy": 0.93, "test_macro_f1": 0.92},
    "gpu": {"test_accuracy": 0.965, "train_seconds": 60},
}


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
    from mlflow import MlflowClient

    from garbage.core.config import load_config

    config = load_config(profile=profile, overrides=[*overrides, f"work_dir={work_dir}"])
    # Both URIs explicitly: MLflow keeps the first registry URI of a process otherwise.
    uri = config.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
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


def recipe_rows(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows comparing the runs side by side (one column per recipe)."""
    names = list(runs)

    def row(label: str, cell: Any) -> str:
        return f"| {label} | " + " | ".join(cell(runs[n]) for n in names) + " |"

    classes = list(next(iter(runs.values()))["metrics"]["test_recall"])
    return [
        "| | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
        row("pipeline wall time", lambda r: f"{r['wall_seconds'] / 60:.1f} min"),
        row("train step", lambda r: f"{r['stage_seconds'].get('train-model', 0):.0f} s"),
        row("test accuracy", lambda r: f"{r['metrics']['test_accuracy']:.4f}"),
        row("test macro-F1", lambda r: f"{r['metrics']['test_macro_f1']:.4f}"),
        row("training images/s", lambda r: f"{r['metrics']['train_images_per_second']:.1f}"),
        row("peak memory, process tree", lambda r: f"{r['peak_rss_tree_mib']:.0f} MiB"),
        *[
            row(f"recall {c}", lambda r, c=c: f"{r['metrics']['test_recall'][c]:.3f}")
            for c in classes
        ],
    ]


def to_markdown(report: dict[str, Any]) -> str:
    """A readable table of the report."""
    r = report
    runs = r["runs"]
    lines = [
        f"# Training benchmark ({r['profile']} profile), {r['date']}",
        "",
        f"Machine: {r['machine']['cpu']}, {r['machine']['cpus_available']} CPUs, "
        f"{r['machine']['memory_gib']} GiB, GPU: {r['machine']['gpu'] or 'none'}; load average "
        f"at start {r['machine']['load_average_at_start'][0]:.1f}. Command: `{r['command']}`. "
        + (
            f"`baseline` is the pipeline at commit {r['baseline_ref']}, run right before `current` "
            "in the same benchmark run."
            if "baseline" in runs
            else ""
        ),
        "",
        *recipe_rows(runs),
    ]
    if "time_ratio" in r:
        lines += ["", f"Wall time ratio current / baseline: **{r['time_ratio']:.2f}**."]
    for name, run in runs.items():
        lines += [
            "",
            f"Stages of `{name}` (seconds): "
            + ", ".join(f"{k} {v}" for k, v in run["stage_seconds"].items()),
        ]
    lines += [
        "",
        "| target | met |",
        "| --- | --- |",
        *[f"| {k} | {'yes' if v else 'NO'} |" for k, v in r["targets_met"].items()],
    ]
    return "\n".join(lines) + "\n"


def run_pipeline(
    code_dir: Path, profile: str, overrides: list[str], env: dict[str, str], log_name: str
) -> dict[str, Any]:
    """Run ``garbage pipeline run`` from the code in ``code_dir`` in a fresh work dir.

    Raises:
        RuntimeError: The pipeline failed (its log is in ``bench/results``).
    """
    work_dir = Path(tempfile.mkdtemp(prefix=f"bench-train-{log_name}-"))
    command = [
        sys.executable,
        "-m",
        "cli",
        "pipeline",
        "run",
        "--profile",
        profile,
        "--set",
        f"work_dir={work_dir}",
        *[a for o in overrides for a in ("--set", o)],
    ]
    print(f"[{log_name}] running from {code_dir}:", " ".join(command[2:]), flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        env={**env, "PYTHONPATH": str(code_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=code_dir,
    )
    sampler = MemorySampler(process.pid)
    sampler.start()
    log_lines = []
    assert process.stdout is not None
    for line in process.stdout:  # a line per step, its progress and outcome
        log_lines.append(line)
        print(f"[{log_name}] {line.rstrip()[:150]}", flush=True)
    code = process.wait()
    wall = time.perf_counter() - started
    sampler.stop.set()
    # Each step's full log, in the order the steps ran (their first line is kfp.local's).
    step_logs = sorted((work_dir / "kfp" / "logs").glob("*/*.log"), key=lambda p: p.stat().st_mtime)
    log = "".join(log_lines) + "".join(p.read_text() for p in step_logs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if profile == "default" else f"-{profile}"
    (RESULTS / f"train{suffix}-{log_name}.log").write_text(log)
    if code != 0:
        print(log[-5000:], file=sys.stderr)
        raise RuntimeError(f"the {log_name} pipeline failed with exit code {code}")
    return {
        "wall_seconds": round(wall, 1),
        "stage_seconds": stage_times(log),
        "peak_rss_tree_mib": round(sampler.peak_tree / 2**20, 1),
        "peak_rss_single_mib": round(sampler.peak_single / 2**20, 1),
        "metrics": run_metrics(work_dir, profile, overrides),
    }


@contextlib.contextmanager
def worktree(ref: str) -> Any:
    """The repository at ``ref``, checked out in a temporary folder for the duration."""
    folder = Path(tempfile.mkdtemp(prefix="bench-train-baseline-")) / "repo"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), ref],
        check=True,
        capture_output=True,
    )
    try:
        yield folder
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(folder)], check=False
        )


def main() -> int:
    """Run the benchmark and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--baseline", default=BASELINE_REF, help="git ref of the recipe to beat")
    parser.add_argument("--no-baseline", action="store_true", help="run the current code only")
    args = parser.parse_args()

    env = dict(os.environ)
    if "GARBAGE_DATA_SOURCE" not in env and DEV_ARCHIVE.is_file():
        env.update(GARBAGE_DATA_SOURCE=str(DEV_ARCHIVE), GARBAGE_DATA_SHA256=DEV_ARCHIVE_SHA256)
    machine = describe_machine(("torch", "torchvision", "timm", "kfp", "mlflow", "onnxruntime"))
    runs: dict[str, dict[str, Any]] = {}
    try:
        if not args.no_baseline:
            with worktree(args.baseline) as baseline_dir:
                runs["baseline"] = run_pipeline(
                    baseline_dir, args.profile, args.overrides, env, "baseline"
                )
        runs["current"] = run_pipeline(REPO, args.profile, args.overrides, env, "current")
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1

    current = runs["current"]
    targets = TARGETS.get(args.profile, {})
    report: dict[str, Any] = {
        "profile": args.profile,
        "date": datetime.now().isoformat(timespec="seconds"),
        "command": "python bench/bench_train.py "
        + " ".join([f"--profile {args.profile}", *[f"--set {o}" for o in args.overrides]]),
        "machine": machine,
        "baseline_ref": None if args.no_baseline else args.baseline,
        "runs": runs,
    }
    met: dict[str, bool] = {}
    if "baseline" in runs:
        report["time_ratio"] = round(current["wall_seconds"] / runs["baseline"]["wall_seconds"], 3)
        if "time_ratio" in targets:
            met[f"wall time <= {targets['time_ratio']:.0%} of the baseline's"] = (
                report["time_ratio"] <= targets["time_ratio"]
            )
    for key in ("test_accuracy", "test_macro_f1"):
        if key in targets:
            met[f"{key.replace('_', ' ')} >= {targets[key]:.3g}"] = (
                current["metrics"][key] >= targets[key]
            )
    if "train_seconds" in targets:
        met[f"train step <= {targets['train_seconds']:.0f} s"] = (
            current["stage_seconds"].get("train-model", float("inf")) <= targets["train_seconds"]
        )
    report["targets_met"] = met
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.profile == "default" else f"-{args.profile}"
    (RESULTS / f"train{suffix}.json").write_text(json.dumps(report, indent=2))
    markdown = to_markdown(report)
    (RESULTS / f"train{suffix}.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
