"""The drift job as one plain function: load a window, decide, write reports, publish metrics.

:func:`run_drift_job` takes only local paths, strings and numbers and returns a JSON-ready dict,
so it runs unchanged from the CLI (``garbage drift``, which resolves model and reference URIs
with the config first), a Kubernetes CronJob and a KFP component. The model folder supplies the
class names, the predictions of an image folder's class mix and, by default, the reference
profile (a registered model version carries it).

:func:`drift_flags` decides several consecutive windows of the store the same way, without
reports or metrics: ``garbage retrain`` asks it whether the last windows all drifted.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from garbage.core.classifier import OnnxClassifier
from garbage.core.predict import expand_paths
from garbage.core.preprocessing import InvalidImageError, decode_image
from monitoring.accuracy import parse_window
from monitoring.drift import DriftSettings, compute_drift, write_reports
from monitoring.features import FEATURE_COLUMNS, pixel_features
from monitoring.metrics import drift_registry, push, pushgateway_auth, write_textfile
from monitoring.reference import load_reference, model_reference
from monitoring.store import InferenceStore

log = logging.getLogger(__name__)

WINDOW_COLUMNS = (
    "ts",
    *FEATURE_COLUMNS,
    "feature_error",
    "prediction",
    "score",
    "true_label",
    "label_selection",
)
PREDICTION_BATCH = 64


class DriftJobError(ValueError):
    """The job's inputs are inconsistent or missing; the message says which option to fix."""


def check_window_source(db_url: str | None, images: str | Path | None) -> None:
    """Exactly one of the store and an image folder names the window.

    Raises:
        DriftJobError: Neither or both.
    """
    if (db_url is None) == (images is None):
        raise DriftJobError(
            "give exactly one window source: --db URL (with --window) or --images FOLDER"
        )


def features_from_folder(folder: Path, classifier: OnnxClassifier) -> pd.DataFrame:
    """Features and predictions of every JPEG/PNG under ``folder`` (recursively), as a window.

    Every image gets the model's ``prediction`` and ``score``; a file inside a folder named
    after one of the model's classes gets that class as ``true_label``.

    Raises:
        DriftJobError: The folder does not exist or holds no readable image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DriftJobError(f"--images {folder} is not a folder")
    classes = set(classifier.classes)
    rows, pixels, unreadable = [], [], 0
    for path in expand_paths([folder]):
        try:
            image = decode_image(path.read_bytes())
        except (OSError, InvalidImageError):
            unreadable += 1
            continue
        array = np.asarray(image, dtype=np.uint8)
        row: dict[str, object] = dict(pixel_features(array))
        row["path"] = str(path.relative_to(folder))
        row["true_label"] = path.parent.name if path.parent.name in classes else None
        rows.append(row)
        pixels.append(array)
    if not rows:
        raise DriftJobError(
            f"no readable JPEG or PNG under {folder} ({unreadable} unreadable files)"
        )
    frame = pd.DataFrame(rows)
    predictions = classifier.predict_images(pixels, PREDICTION_BATCH)
    frame["prediction"] = [p.label for p in predictions]
    frame["score"] = [p.score for p in predictions]
    frame.attrs["unreadable"] = unreadable
    return frame


def load_db_window(
    db_url: str, window: str, now: datetime | None = None, limit: int | None = None
) -> pd.DataFrame:
    """Logged rows of the last ``window`` (e.g. ``1h``) from the store at ``db_url``."""
    span = parse_window(window)
    end = now or datetime.now(UTC).replace(tzinfo=None)
    store = InferenceStore(db_url, create=False)
    try:
        return store.load_window(since=end - span, until=end, limit=limit, columns=WINDOW_COLUMNS)
    finally:
        store.close()


def run_drift_job(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    reference: str | Path | None = None,
    db_url: str | None = None,
    window: str = "1h",
    images: str | Path | None = None,
    pushgateway: str | None = None,
    html: bool = True,
    limit: int | None = None,
    settings: DriftSettings | None = None,
    now: datetime | None = None,
) -> dict[str, object]:
    """Compare the current window with the reference; write reports and metrics; return the summary.

    Exactly one of ``db_url`` and ``images`` names the window.

    Args:
        model_dir: The model's folder (``model.onnx``; a registered version's artifacts): its
            classes name the live-accuracy classes, it predicts the class mix of ``images``,
            and its reference profile is the default ``reference``.
        out_dir: Where ``drift_report.html/json``, ``drift_summary.json`` and ``metrics.prom`` go.
        reference: A reference profile file (parquet or CSV from ``build_reference``) instead of
            the model's own (:func:`monitoring.reference.resolve_reference` fetches one by URI).
        db_url: The collector's store (SQLAlchemy URL or SQLite path); with ``window``.
        window: How far back from ``now`` the window reaches (``30m``, ``1h``, ``24h``, ``7d``).
        images: A folder of images to use as the window instead of the store.
        pushgateway: Prometheus Pushgateway URL to push the drift metrics to.
        html: Write the HTML reports too.
        limit: At most this many newest rows of the window.
        settings: Drift tests and thresholds.
        now: End of the window (default: now, UTC).

    Returns:
        :meth:`DriftResult.summary` plus ``timings`` (seconds), ``outputs`` and ``pushed``.

    Raises:
        DriftJobError: Neither or both window sources, or unusable inputs.
        garbage.core.classifier.ModelLoadError: No usable model in ``model_dir``.
        monitoring.reference.ReferenceProfileError: The reference cannot be found or read.
        monitoring.drift.DriftInputError: The reference and the window cannot be compared.
        monitoring.store.StoreError: The store cannot be read.
        monitoring.metrics.PushError: The Pushgateway refused the metrics, or its login is
            half set.
    """
    check_window_source(db_url, images)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    auth = pushgateway_auth() if pushgateway else None  # a half-set login fails first
    out = Path(out_dir)
    classifier = OnnxClassifier.load(Path(model_dir), device="cpu")
    ref = load_reference(Path(reference) if reference else model_reference(Path(model_dir)))
    timings["load_reference"] = time.perf_counter() - started
    mark = time.perf_counter()
    if images is not None:
        current = features_from_folder(Path(images), classifier)
        source = f"images:{images}"
    else:
        try:
            current = load_db_window(str(db_url), window, now=now, limit=limit)
        except ValueError as e:
            raise DriftJobError(str(e)) from e
        source = f"db:{window}"
    timings["load_window"] = time.perf_counter() - mark
    mark = time.perf_counter()
    result = compute_drift(ref, current, settings, classes=classifier.classes)
    timings["decide"] = time.perf_counter() - mark
    result.extra["source"] = source
    mark = time.perf_counter()
    written = write_reports(ref, current, result, out, html=html)
    timings["report"] = time.perf_counter() - mark
    summary = result.summary()
    registry = drift_registry(summary)
    metrics_path = write_textfile(registry, out / "metrics.prom")
    pushed = False
    if pushgateway:
        push(registry, pushgateway, auth=auth)
        pushed = True
    timings["total"] = time.perf_counter() - started
    summary["timings"] = {k: round(v, 3) for k, v in timings.items()}
    summary["outputs"] = {k: str(v) for k, v in {**written, "metrics": metrics_path}.items()}
    summary["pushed"] = pushed
    (out / "drift_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


@dataclass(frozen=True)
class DriftWindow:
    """The drift verdict of one window of the store.

    Attributes:
        start: Where the window starts (inclusive; naive UTC).
        end: Where it ends (exclusive; naive UTC).
        rows: Rows the store logged in it.
        drifted: Whether it drifted; False when it had too few usable rows to judge.
        reason: The verdict in words (:meth:`monitoring.drift.DriftResult.verdict`): which
            columns drifted, or that there was not enough traffic for a verdict.
    """

    start: datetime
    end: datetime
    rows: int
    drifted: bool
    reason: str


def drift_flags(
    db_url: str,
    model_dir: str | Path,
    *,
    window: str,
    count: int,
    reference: str | Path | None = None,
    now: datetime | None = None,
    settings: DriftSettings | None = None,
) -> list[DriftWindow]:
    """Judge ``count`` consecutive windows of the store against the reference; newest first.

    The windows are ``[now - window, now)``, ``[now - 2 window, now - window)`` and so on, each
    decided as :func:`run_drift_job` decides one (no reports, no metrics). A window with fewer
    usable rows than ``settings.min_window`` counts as not drifted, and its reason says so.

    Args:
        db_url: The collector's store (SQLAlchemy URL or SQLite path).
        model_dir: The model's folder: its classes and, by default, its reference profile.
        window: The length of one window (``30m``, ``24h``, ``7d``).
        count: How many windows, at least 1.
        reference: A reference profile file instead of the model's own.
        now: The end of the newest window (naive UTC; default: now).
        settings: Drift tests and thresholds.

    Returns:
        One :class:`DriftWindow` per window, the newest first.

    Raises:
        DriftJobError: ``window`` is not a duration, or ``count`` is below 1.
        garbage.core.classifier.ModelLoadError: No usable model in ``model_dir``.
        monitoring.reference.ReferenceProfileError: The reference cannot be found or read.
        monitoring.drift.DriftInputError: The reference and the windows cannot be compared.
        monitoring.store.StoreError: The store cannot be read.
    """
    if count < 1:
        raise DriftJobError(f"count {count}: judge at least one window")
    try:
        span = parse_window(window)
    except ValueError as e:
        raise DriftJobError(str(e)) from e
    classifier = OnnxClassifier.load(Path(model_dir), device="cpu")
    ref = load_reference(Path(reference) if reference else model_reference(Path(model_dir)))
    end = now or datetime.now(UTC).replace(tzinfo=None)
    store = InferenceStore(db_url, create=False)
    try:
        rows = store.load_window(since=end - count * span, until=end, columns=WINDOW_COLUMNS)
    finally:
        store.close()
    times = pd.to_datetime(rows["ts"])
    flags = []
    for index in range(count):
        stop = end - index * span
        start = stop - span
        current = rows[(times >= start) & (times < stop)].reset_index(drop=True)
        result = compute_drift(ref, current, settings, classes=classifier.classes)
        flags.append(
            DriftWindow(start, stop, len(current), result.drift_detected, result.verdict())
        )
    return flags
