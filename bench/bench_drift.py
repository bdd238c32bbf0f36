"""Drift benchmark: detection and false-alarm rates per corruption, and the drift job's time.

    .venv/bin/python bench/bench_drift.py          # make bench-drift; a few minutes on 2 cores

1. Data as the pipeline gets it: ``load_config()`` with ``GARBAGE_DATA_SOURCE``/``GARBAGE_DATA_SHA256``
   (default: the dev archive ``../shared/data/trashnet-112-dev.tar.gz``), then ``fetch_dataset``,
   ``validate_dataset`` and ``split_dataset``.
2. Reference: ``build_reference`` on the train split. Windows are drawn, with replacement, from the
   validation and test splits (never seen by the reference): clean, or corrupted at a moderate and a
   severe level (brighter, darker, blur, noise, JPEG artefacts, colour cast), or with a shifted
   class mix (50 % / 80 % of the window from one class, the class rotating over windows).
3. The class mix is judged from predicted classes: the registry's champion (left by
   ``make run``) by default, or ``--model DIR``. Without either, predictions come from a stand-in
   classifier: a multinomial logistic regression on the monitoring features, trained on the
   train split (its out-of-fold predictions on the train split are the reference's
   ``prediction`` column). It is far weaker than the real model, which
   makes the class-mix figures conservative.
4. Each window goes through :func:`monitoring.drift.compute_drift`, the drift job's decision.
5. The drift job end to end (``run_drift_job``: read the window from SQLite, decide, render the
   Evidently HTML/JSON reports, write metrics) on 10k and 100k logged rows; it reads the model's
   class names, so it is timed only with a model (the champion or ``--model``).

Writes ``bench/results/drift.json`` and ``bench/results/drift.md``. Targets: >= 95 % detection at
moderate severity, <= 5 % false alarms on clean windows, 100k rows in <= 10 s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEV_ARCHIVE = REPO.parent / "shared" / "data" / "trashnet-112-dev.tar.gz"
DEV_SHA256 = "cb0934a9c4e8c36e8cf510364a57c55f006eabc831a9c5a78194c8059155cb08"
RESULTS = REPO / "bench" / "results"
TARGET_DETECTION = 0.95
TARGET_FALSE_ALARMS = 0.05
TARGET_100K_SECONDS = 10.0

# (moderate, severe) parameters, fixed before any measurement.
SEVERITIES = ("moderate", "severe")
CORRUPTIONS = {
    "brighter": (1.3, 1.6),  # PIL brightness factor
    "darker": (0.7, 0.45),
    "blur": (1.0, 2.0),  # Gaussian radius, pixels
    "noise": (10.0, 25.0),  # Gaussian sigma, grey levels
    "jpeg": (20, 8),  # re-encoding quality
    "colour_cast": ((1.12, 1.0, 0.88), (1.25, 1.0, 0.75)),  # RGB gains (warm cast)
}
CLASS_MIX = (0.5, 0.8)  # share of the window from a single class


def corrupt(image: Image.Image, kind: str, level: object, rng: np.random.Generator) -> Image.Image:
    """Apply one corruption at one level to an RGB image."""
    if kind == "brighter" or kind == "darker":
        return ImageEnhance.Brightness(image).enhance(float(level))
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(float(level)))
    if kind == "noise":
        pixels = np.asarray(image).astype(np.float32) + rng.normal(
            0, float(level), (image.height, image.width, 3)
        )
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(level))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "colour_cast":
        pixels = np.asarray(image).astype(np.float32) * np.asarray(level, dtype=np.float32)
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    raise ValueError(f"unknown corruption {kind}")


def machine() -> dict[str, object]:
    """What the figures were measured on (bench/machine.py), with the load average now."""
    from bench.machine import describe_machine

    described = describe_machine(
        ("evidently", "pandas", "numpy", "scipy", "scikit-learn", "SQLAlchemy")
    )
    described["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return described


def load_data() -> tuple[Path, pd.DataFrame]:
    """Fetch, validate and split the dataset as the pipeline does."""
    from garbage.core.config import load_config
    from garbage.training.data.fetch import fetch_dataset
    from garbage.training.data.split import split_dataset
    from garbage.training.data.validate import raise_for_errors, validate_dataset

    os.environ.setdefault("GARBAGE_DATA_SOURCE", str(DEV_ARCHIVE))
    os.environ.setdefault("GARBAGE_DATA_SHA256", DEV_SHA256)
    config = load_config()
    root = fetch_dataset(config.data.source, config.data.sha256, config.data_cache_dir)
    report, kept = validate_dataset(root, config.data)
    raise_for_errors(report)
    return root, split_dataset(kept, config.split)


class StandIn:
    """Logistic regression on the monitoring features: the benchmark's stand-in classifier."""

    def __init__(self, reference: pd.DataFrame) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import cross_val_predict
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from monitoring.features import FEATURE_COLUMNS

        self.columns = [c for c in FEATURE_COLUMNS if c not in ("width", "height")]
        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        self.reference_predictions = cross_val_predict(
            self.model, reference[self.columns], reference["label"], cv=5
        )
        self.model.fit(reference[self.columns], reference["label"])

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return self.model.predict(features[self.columns])


def pool_features(
    root: Path, pool: pd.DataFrame, model_dir: Path | None, seed: int
) -> pd.DataFrame:
    """Features (and, with a model, predictions) of every pool image, clean and corrupted."""
    from garbage.core.preprocessing import decode_image
    from monitoring.features import pixel_features

    rng = np.random.default_rng(seed)
    model = None
    if model_dir is not None:
        from garbage.core.classifier import OnnxClassifier

        model = OnnxClassifier.load(model_dir, device="cpu")
    rows, pixels = [], []
    conditions = [("clean", "none", None)] + [
        (kind, SEVERITIES[i], level)
        for kind, levels in CORRUPTIONS.items()
        for i, level in enumerate(levels)
    ]
    for item in pool.itertuples():
        image = decode_image((root / item.path).read_bytes())
        for kind, severity, level in conditions:
            changed = image if kind == "clean" else corrupt(image, kind, level, rng)
            array = np.asarray(changed, dtype=np.uint8)
            row = pixel_features(array)
            row.update(path=item.path, label=item.label, condition=kind, severity=severity)
            rows.append(row)
            if model is not None:
                pixels.append(model.fit_pixels(array))
    frame = pd.DataFrame(rows)
    if model is not None:
        predictions = []
        for start in range(0, len(pixels), 64):
            predictions.extend(
                model.to_predictions(model.predict_pixels(np.stack(pixels[start : start + 64])))
            )
        frame["prediction"] = [p.label for p in predictions]
    return frame


def reference_predictions(root: Path, reference: pd.DataFrame, model_dir: Path) -> list[str]:
    """The exported model's predictions on the reference images."""
    from garbage.core.classifier import OnnxClassifier

    model = OnnxClassifier.load(model_dir, device="cpu")
    labels: list[str] = []
    paths = list(reference["path"])
    for start in range(0, len(paths), 64):
        batch = np.stack(
            [model.preprocess((root / p).read_bytes()) for p in paths[start : start + 64]]
        )
        labels.extend(p.label for p in model.to_predictions(model.predict_pixels(batch)))
    return labels


def run_windows(
    reference: pd.DataFrame,
    pool: pd.DataFrame,
    *,
    window: int,
    clean_windows: int,
    shifted_windows: int,
    seed: int,
) -> tuple[list[dict[str, object]], dict[str, object]]:
    """Draw windows per condition, decide each with compute_drift, count detections."""
    from monitoring.drift import compute_drift

    rng = np.random.default_rng(seed + 1)
    classes = sorted(reference["label"].unique())
    results: list[dict[str, object]] = []
    clean_pool = pool[pool["condition"] == "clean"].reset_index(drop=True)
    clean_scores: list[dict[str, float]] = []

    def decide(rows: pd.DataFrame) -> tuple[bool, list[str], dict[str, float]]:
        outcome = compute_drift(reference, rows)
        return (
            outcome.drift_detected,
            outcome.drifted_columns,
            {n: c.score for n, c in outcome.columns.items()},
        )

    def record(
        condition: str, severity: str, flags: list[bool], fired: list[list[str]], elapsed: float
    ) -> None:
        counts: dict[str, int] = {}
        for names in fired:
            for name in names:
                counts[name] = counts.get(name, 0) + 1
        results.append(
            {
                "condition": condition,
                "severity": severity,
                "windows": len(flags),
                "flagged": int(sum(flags)),
                "rate": sum(flags) / len(flags),
                "columns_fired": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
                "seconds_per_window": elapsed / len(flags),
            }
        )

    started = time.perf_counter()
    flags, fired = [], []
    for _ in range(clean_windows):
        detected, names, scores = decide(clean_pool.iloc[rng.integers(0, len(clean_pool), window)])
        flags.append(detected)
        fired.append(names)
        clean_scores.append(scores)
    record("clean", "none", flags, fired, time.perf_counter() - started)

    for kind in CORRUPTIONS:
        for severity in SEVERITIES:
            rows = pool[(pool["condition"] == kind) & (pool["severity"] == severity)].reset_index(
                drop=True
            )
            started = time.perf_counter()
            flags, fired = [], []
            for _ in range(shifted_windows):
                detected, names, _ = decide(rows.iloc[rng.integers(0, len(rows), window)])
                flags.append(detected)
                fired.append(names)
            record(kind, severity, flags, fired, time.perf_counter() - started)

    by_class = {c: clean_pool[clean_pool["label"] == c] for c in classes}
    for share, severity in zip(CLASS_MIX, SEVERITIES, strict=True):
        started = time.perf_counter()
        flags, fired = [], []
        for i in range(shifted_windows):
            dominant = classes[i % len(classes)]
            k = round(share * window)
            mine, rest = by_class[dominant], clean_pool[clean_pool["label"] != dominant]
            rows = pd.concat(
                [
                    mine.iloc[rng.integers(0, len(mine), k)],
                    rest.iloc[rng.integers(0, len(rest), window - k)],
                ],
                ignore_index=True,
            )
            detected, names, _ = decide(rows)
            flags.append(detected)
            fired.append(names)
        record("class_mix", severity, flags, fired, time.perf_counter() - started)

    scores = pd.DataFrame(clean_scores)
    feature_cols = [c for c in scores.columns if c not in ("predicted_class", "embedding")]
    noise = {
        "max_feature_wasserstein_p95": float(scores[feature_cols].max(axis=1).quantile(0.95)),
        "max_feature_wasserstein_p99": float(scores[feature_cols].max(axis=1).quantile(0.99)),
    }
    if "predicted_class" in scores:
        noise["class_jensenshannon_p95"] = float(scores["predicted_class"].quantile(0.95))
        noise["class_jensenshannon_p99"] = float(scores["predicted_class"].quantile(0.99))
    if "embedding" in scores:
        noise["embedding_share_p99"] = float(scores["embedding"].quantile(0.99))
    return results, noise


def time_job(
    model_dir: Path,
    reference_path: Path,
    pool: pd.DataFrame,
    rows: int,
    workdir: Path,
    seed: int,
) -> dict[str, object]:
    """Log ``rows`` rows into SQLite (bootstrapped clean traffic of the last hour) and run the job.

    The job reads the model's class names, so it needs the exported model.
    """
    from monitoring.features import FEATURE_COLUMNS
    from monitoring.job import run_drift_job
    from monitoring.store import InferenceStore

    rng = np.random.default_rng(seed + rows)
    clean = pool[pool["condition"] == "clean"].reset_index(drop=True)
    sample = clean.iloc[rng.integers(0, len(clean), rows)].reset_index(drop=True)
    now = datetime.now(UTC).replace(tzinfo=None)
    frame = sample[list(FEATURE_COLUMNS)].copy()
    frame["inference_id"] = [f"bench-{i}" for i in range(rows)]
    frame["item"] = 0
    frame["ts"] = [now - timedelta(seconds=float(s)) for s in rng.uniform(1, 3500, rows)]
    frame["prediction"] = sample["prediction"].to_numpy()
    frame["score"] = rng.uniform(0.3, 1.0, rows)
    labelled = rng.random(rows) < 0.05  # a trickle of label feedback
    frame["true_label"] = np.where(labelled, sample["label"].to_numpy(), None)
    db = workdir / f"log-{rows}.db"
    store = InferenceStore(str(db))
    started = time.perf_counter()
    store.insert_rows(frame)
    insert_seconds = time.perf_counter() - started
    store.close()
    summary = run_drift_job(
        model_dir,
        workdir / f"out-{rows}",
        reference=reference_path,
        db_url=str(db),
        window="1h",
        html=True,
        now=now + timedelta(seconds=1),
    )
    return {
        "rows": rows,
        "window_size": summary["window_size"],
        "drift_detected": summary["drift_detected"],
        "insert_seconds": round(insert_seconds, 2),
        "timings": summary["timings"],
        "report_rows": summary.get("report_rows"),
    }


def markdown(result: dict[str, object]) -> str:
    """The results as a Markdown report."""
    m = result["machine"]
    lines = [
        "# Drift benchmark",
        "",
        (
            f"Measured {result['measured_at']} on {m['cpu']} ({m['cpus_available']} CPUs available, "
            f"{m['memory_gib']} GiB), Python {m['python']}, Evidently {m['packages']['evidently']}; "
            f"load average {m['load_average']} at the start and "
            f"{result['machine_end']['load_average']} at the end (the machine is shared with other "
            "work, so timings are upper bounds)."
        ),
        "",
        (
            f"Reference: {result['reference_rows']} training images. Windows of {result['window']} "
            f"images drawn with replacement from the {result['pool_images']} validation and test "
            f"images. Class mix judged from predictions of: {result['predictor']}."
        ),
        "",
        "| condition | severity | windows | flagged | rate | target | columns that fired (count) |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in result["windows"]:
        if row["condition"] == "clean":
            target = f"<= {TARGET_FALSE_ALARMS:.0%} (false alarms)"
        elif row["severity"] == "moderate":
            target = f">= {TARGET_DETECTION:.0%}"
        else:
            target = "-"
        fired = ", ".join(f"{k} ({v})" for k, v in list(row["columns_fired"].items())[:4]) or "-"
        lines.append(
            f"| {row['condition']} | {row['severity']} | {row['windows']} | {row['flagged']} | "
            f"{row['rate']:.1%} | {target} | {fired} |"
        )
    noise = result["clean_noise"]
    lines += [
        "",
        "Clean-window noise (what the thresholds must stay above): "
        + ", ".join(f"{k} = {v:.3f}" for k, v in noise.items()),
        "",
    ]
    lines += [
        "## Drift job on logged rows (SQLite, HTML + JSON reports)",
        "",
        "| rows | window | insert s | load s | decide s | report s | total s | target |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for job in result["jobs"]:
        t = job["timings"]
        target = f"<= {TARGET_100K_SECONDS:.0f} s" if job["rows"] == 100_000 else "-"
        lines.append(
            f"| {job['rows']} | {job['window_size']} | {job['insert_seconds']} | {t['load_window']} | "
            f"{t['decide']} | {t['report']} | {t['total']} | {target} |"
        )
    lines += [
        "",
        (
            f"Importing Evidently took {result['evidently_import_seconds']:.1f} s (once per process, "
            "not in the job times). Reports on windows over 10k rows render a uniform 10k-row "
            "sample; the decision always uses every row."
        ),
        "",
        "Verdict: " + "; ".join(result["verdict"]),
        "",
    ]
    return "\n".join(lines)


def champion_model_dir() -> Path | None:
    """The default registry's champion (what `make run` leaves), or None when there is none."""
    from garbage.core.classifier import ModelLoadError
    from garbage.core.config import load_config
    from garbage.core.model_uri import resolve_model_dir

    try:
        return resolve_model_dir(None, load_config())
    except ModelLoadError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--clean-windows", type=int, default=200)
    parser.add_argument("--shifted-windows", type=int, default=40)
    parser.add_argument("--job-rows", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="exported model; default: the registry's champion (after `make run`), else the stand-in",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.model is None:
        args.model = champion_model_dir()

    os.environ.setdefault("TQDM_DISABLE", "1")
    start_machine = machine()
    began = time.perf_counter()
    started = time.perf_counter()
    import evidently  # noqa: F401  (timed once, reported apart from the job times)

    evidently_import = time.perf_counter() - started
    from monitoring.reference import build_reference, load_reference

    root, manifest = load_data()
    print(f"data: {manifest['split'].value_counts().to_dict()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    reference_path = build_reference(root, manifest, work / "reference.parquet", splits=("train",))
    reference = load_reference(reference_path)
    pool_rows = manifest[manifest["split"].isin(["val", "test"])].reset_index(drop=True)
    started = time.perf_counter()
    pool = pool_features(root, pool_rows, args.model, args.seed)
    print(f"pool features: {len(pool)} rows in {time.perf_counter() - started:.1f} s", flush=True)
    if args.model is None:
        stand_in = StandIn(reference)
        reference["prediction"] = stand_in.reference_predictions
        pool["prediction"] = stand_in.predict(pool)
        clean = pool[pool["condition"] == "clean"]
        accuracy = float((clean["prediction"] == clean["label"]).mean())
        predictor = (
            f"stand-in logistic regression on the monitoring features (accuracy {accuracy:.1%} on the "
            "clean validation+test images; reference column = its 5-fold out-of-fold predictions)"
        )
    else:
        reference["prediction"] = reference_predictions(root, reference, args.model)
        clean = pool[pool["condition"] == "clean"]
        accuracy = float((clean["prediction"] == clean["label"]).mean())
        predictor = f"exported model {args.model} (accuracy {accuracy:.1%} on the clean validation+test images)"
    reference.to_parquet(
        reference_path, index=False
    )  # the job reads the reference with predictions

    started = time.perf_counter()
    windows, noise = run_windows(
        reference,
        pool,
        window=args.window,
        clean_windows=args.clean_windows,
        shifted_windows=args.shifted_windows,
        seed=args.seed,
    )
    print(f"windows decided in {time.perf_counter() - started:.1f} s", flush=True)
    jobs = []
    if args.model is None:
        print("drift job not timed: it reads the model's classes; pass --model", flush=True)
    for rows in args.job_rows if args.model is not None else []:
        jobs.append(time_job(args.model, reference_path, pool, rows, work, args.seed))
        print(f"job on {rows} rows: {jobs[-1]['timings']}", flush=True)

    clean_rate = next(w["rate"] for w in windows if w["condition"] == "clean")
    moderate = {w["condition"]: w["rate"] for w in windows if w["severity"] == "moderate"}
    meets = "meets" if clean_rate <= TARGET_FALSE_ALARMS else "misses"
    verdict = [f"false alarms {clean_rate:.1%} ({meets} <= {TARGET_FALSE_ALARMS:.0%})"]
    misses = {k: v for k, v in moderate.items() if v < TARGET_DETECTION}
    verdict.append(
        "moderate detection >= 95 % for every condition"
        if not misses
        else "moderate detection below 95 % for "
        + ", ".join(f"{k} ({v:.0%})" for k, v in misses.items())
    )
    big = next((j for j in jobs if j["rows"] == 100_000), None)
    if big:
        total = big["timings"]["total"]
        verdict.append(
            f"100k rows in {total:.1f} s ({'meets' if total <= TARGET_100K_SECONDS else 'misses'} "
            f"<= {TARGET_100K_SECONDS:.0f} s)"
        )
    result = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": start_machine,
        "machine_end": machine(),
        "command": "bench/bench_drift.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "window": args.window,
        "reference_rows": len(reference),
        "pool_images": len(pool_rows),
        "predictor": predictor,
        "corruptions": {k: {"moderate": v[0], "severe": v[1]} for k, v in CORRUPTIONS.items()}
        | {"class_mix": {"moderate": CLASS_MIX[0], "severe": CLASS_MIX[1]}},
        "windows": windows,
        "clean_noise": noise,
        "jobs": jobs,
        "evidently_import_seconds": evidently_import,
        "total_seconds": time.perf_counter() - began,
        "verdict": verdict,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / "drift.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
