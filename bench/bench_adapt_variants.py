"""Retrain variants side by side on one loop of the site-adaptation benchmark.

    .venv/bin/python bench/bench_adapt_variants.py --k 100 \\
        --variant retrain --variant freeze-1 train.freeze_stages=1

Takes the dataset version that ``make bench-adapt`` built for its loop ``k`` (its work dir,
``work/bench-adapt`` by default, must hold that run), and for each variant, one after another:
the retrain's own config (:func:`garbage.training.retrain.retrain_config` on that version,
warm-started from the benchmark's champion) with the variant's ``--set`` overrides, run by
``garbage pipeline run`` through kfp.local; the registered model is scored as bench-adapt scores
its loops (held-out site photos, the champion's TrashNet test slice), and the champion alias is
put back. The first variant is the reference of the time ratios: name it first and without
overrides to compare against the configured recipe.

Writes ``bench/results/adapt-variants.json`` and ``.md``: per variant, site accuracy and
macro-F1, TrashNet test accuracy, per-class site recall, pipeline wall time and its ratio to the
first variant's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench import bench_adapt as adapt  # noqa: E402
from bench.machine import describe_machine  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="bench-adapt's work dir (default: its own).")
    parser.add_argument("--k", type=int, default=100, help="The loop whose version is retrained.")
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME", "KEY=VALUE"),
        help="A variant: its name, then the --set overrides it applies over the retrain config.",
    )
    parser.add_argument("--out", type=Path, help="Results folder (default: bench/results).")
    args = parser.parse_args(argv)
    names = [variant[0] for variant in args.variant]
    if len(set(names)) != len(names):
        parser.error(f"variant names must differ: {names}")
    return args


def loop_version(settings: adapt.Settings, k: int) -> tuple[str, Path]:
    """The dataset version bench-adapt's loop ``k`` built, and that loop's datasets root.

    Raises:
        adapt.BenchError: The work dir holds no finished loop ``k``.
    """
    record = settings.work / f"k{k}" / "retrain.json"
    try:
        version = json.loads(record.read_text())["version"]["name"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise adapt.BenchError(
            f"no finished loop k={k} in {settings.work} ({record}: {e}); run "
            f"`python bench/bench_adapt.py --k {k}` first"
        ) from e
    return version, settings.work / f"k{k}" / "datasets"


def variant_config(
    settings: adapt.Settings, champion: adapt.Champion, version: str, root: Path, path: Path
) -> Path:
    """Write the retrain's config of ``version`` (warm-started from ``champion``) to ``path``."""
    from garbage.training.retrain import retrain_config

    cfg = adapt.load_cfg(settings, f"data.datasets_root={root}")
    init_from = f"models:/{cfg.registry.model_name}/{champion.version}"
    tree = retrain_config(cfg, version, init_from).model_dump(mode="json")
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def latest_version(cfg: Any) -> int:
    """The newest registered version of the config's model."""
    client = adapt.registry(cfg)
    found = client.search_model_versions(f"name='{cfg.registry.model_name}'")
    return max(int(v.version) for v in found)


def run_variant(
    settings: adapt.Settings,
    champion: adapt.Champion,
    config: Path,
    name: str,
    overrides: list[str],
    folder: Path,
    scoring: tuple[list[adapt.Image], adapt.TestSlice],
) -> dict[str, Any]:
    """Run the pipeline for one variant; its scores and wall time."""
    cfg = adapt.load_cfg(settings)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    adapt.reset_champion(settings, champion)
    adapt.say(f"{name}: garbage pipeline run {' '.join(overrides) or '(the retrain config)'}")
    started = time.monotonic()
    adapt.garbage(
        ["pipeline", "run", "--config", str(config), *adapt.sets(overrides)],
        folder / "pipeline.log",
        echo=True,
    )
    seconds = time.monotonic() - started
    version = latest_version(cfg)
    model_dir = adapt.export_model(cfg, str(version), folder / "model")
    adapt.reset_champion(settings, champion)
    scores = adapt.score_both(model_dir, *scoring)
    adapt.say(
        f"{name}: site {adapt.pct(scores['site']['accuracy'])}, TrashNet "
        f"{adapt.pct(scores['trashnet_test']['accuracy'])}, {seconds:.0f} s"
    )
    return {
        "name": name,
        "overrides": overrides,
        "registered_version": str(version),
        "pipeline_seconds": round(seconds, 1),
        "after": scores,
        "model_dir": str(model_dir.relative_to(adapt.REPO))
        if model_dir.is_relative_to(adapt.REPO)
        else str(model_dir),
    }


def markdown(report: dict[str, Any]) -> str:
    """The Markdown table of the variants."""
    machine = report["machine"]
    first = report["variants"][0]["pipeline_seconds"]
    lines = [
        f"# Retrain variants on bench-adapt's k = {report['k']} loop, {report['date']}",
        "",
        f"Machine: {machine['cpu']}, {machine['cpus_available']} CPUs, {machine['memory_gib']} "
        f"GiB, GPU: {machine['gpu'] or 'none'}; load average at start "
        f"{machine['load_average_at_start'][0]:.1f}. Command: `{report['command']}`.",
        "",
        f"Dataset version {report['dataset_version']}; each variant is the retrain config "
        f"(`retrain.train` {report['retrain_train']}, `retrain.model` {report['retrain_model']}) "
        f"warm-started from champion v{report['champion']} plus its overrides, run one after "
        "another in this run. Champion before: site "
        f"{adapt.pct(report['before']['site']['accuracy'])}, TrashNet "
        f"{adapt.pct(report['before']['trashnet_test']['accuracy'])}.",
        "",
        "| variant | overrides | site accuracy | site macro-F1 | TrashNet test | pipeline | time ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["variants"]:
        after = row["after"]
        lines.append(
            f"| {row['name']} | {' '.join(f'`{o}`' for o in row['overrides']) or '-'} "
            f"| {adapt.pct(after['site']['accuracy'])} | {after['site']['macro_f1']:.3f} "
            f"| {adapt.pct(after['trashnet_test']['accuracy'])} "
            f"| {row['pipeline_seconds'] / 60:.1f} min | {row['pipeline_seconds'] / first:.2f} |"
        )
    classes = list(report["variants"][0]["after"]["site"]["recall"])
    lines += [
        "",
        "Site recall per class:",
        "",
        "| variant | " + " | ".join(classes) + " |",
        "| --- | " + " | ".join("---:" for _ in classes) + " |",
    ]
    for row in report["variants"]:
        recall = row["after"]["site"]["recall"]
        lines.append(f"| {row['name']} | " + " | ".join(f"{recall[c]:.2f}" for c in classes) + " |")
    return "\n".join(lines) + "\n"


def write_results(report: dict[str, Any], out: Path) -> None:
    """``adapt-variants.json`` and ``.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapt-variants.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "adapt-variants.md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> int:
    """Run the variants; write their results."""
    args = parse_args(argv)
    forwarded = ["--k", str(args.k), *(["--work", str(args.work)] if args.work else [])]
    settings = adapt.parse_args(forwarded)
    adapt.drop_foreign_env()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    machine = describe_machine(("torch", "timm", "onnxruntime", "mlflow", "kfp"))
    version, root = loop_version(settings, args.k)
    champion = adapt.ensure_champion(settings)
    site = adapt.read_archive(adapt.SITE, adapt.SITE_SHA256)
    _, held_out = adapt.split_site(
        site, settings.traffic_share, settings.seed, settings.site_per_class
    )
    test = adapt.trashnet_test_slice(settings, champion)
    folder = settings.work / "variants" / f"k{args.k}"
    folder.mkdir(parents=True, exist_ok=True)
    config = variant_config(settings, champion, version, root, folder / "retrain-config.yaml")
    adapt.say(f"k={args.k}: dataset version {version}; {len(args.variant)} variants")
    cfg = adapt.load_cfg(settings)
    report: dict[str, Any] = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python bench/bench_adapt_variants.py", *(argv or sys.argv[1:])]),
        "machine": machine,
        "k": args.k,
        "dataset_version": version,
        "champion": champion.version,
        "retrain_train": cfg.retrain.train,
        "retrain_model": cfg.retrain.model,
        "before": adapt.score_both(champion.model_dir, held_out, test),
        "variants": [],
    }
    out = (args.out or adapt.RESULTS).resolve()
    try:
        for name, *overrides in args.variant:
            report["variants"].append(
                run_variant(
                    settings, champion, config, name, overrides, folder / name, (held_out, test)
                )
            )
            write_results(report, out)  # after each variant: a failed one keeps the others
    finally:
        adapt.reset_champion(settings, champion)
    print(markdown(report))
    adapt.say(f"wrote {out / 'adapt-variants.json'} and {out / 'adapt-variants.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
