"""Drift between a window of logged traffic and the reference profile, with Evidently 0.7.

Two steps share one configuration (:class:`DriftSettings`):

* :func:`compute_drift` decides. Every monitored column is tested with Evidently's own stat-test
  implementations (the ones ``DataDriftPreset`` calls), by name and threshold, without rendering
  anything, so a decision over 100k rows costs well under a second.
* :func:`write_reports` renders the Evidently ``Report`` for people (``DataDriftPreset`` on the
  image features and the class mix, ``DriftedColumnsCount`` over the embedding components,
  ``ValueDrift`` on the image size, and a classification report for labelled traffic), saves it
  as HTML and JSON, and records whether Evidently's per-column verdicts match the decision.

The decision. Image features use the Wasserstein distance normalised by the reference standard
deviation (Evidently's ``wasserstein``), drifted at 0.3: an effect-size test, so a window of 100k
rows does not turn trivial differences into alarms the way p-values do. The class mix (predicted
classes of the traffic against the reference's predictions, or its true labels when it has none)
uses the Jensen-Shannon distance, drifted at 0.15. The embedding is drifted when at least 25 % of
its components are (Wasserstein at 0.3; Evidently's "ratio" embedding-drift method). The window
has drifted when the share of drifted monitored columns (features, class mix, embedding) reaches
``drift_share`` = 0.1, i.e. any one of them; windows under ``min_window`` rows get no verdict.
These thresholds were chosen on windows of 200 images drawn from the validation split against the
training split (the largest normalised distance over the eight features stayed under 0.28 in
1000 clean windows; see bench/results/drift.md for the measured false-alarm and detection rates).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from monitoring.accuracy import live_accuracy
from monitoring.features import EMBEDDING_COLUMNS, FEATURE_COLUMNS, SCALAR_FEATURES

if TYPE_CHECKING:
    from evidently import Report

log = logging.getLogger(__name__)

#: Image size is reported but does not vote: photos legitimately come in many sizes.
INFO_FEATURES: tuple[str, ...] = ("width", "height")
MONITORED_FEATURES: tuple[str, ...] = tuple(f for f in SCALAR_FEATURES if f not in INFO_FEATURES)
CLASS_COLUMN = "predicted_class"
REPORT_ROWS = 10_000
EMBEDDING = "embedding"

#: Window columns beside the features that live accuracy reads (passed through as ``_<name>``).
LABEL_COLUMNS = ("prediction", "true_label", "label_selection")


class DriftInputError(ValueError):
    """The reference or the window cannot be compared; the message says what is missing."""


@dataclass(frozen=True)
class DriftSettings:
    """Which columns are tested, how, and when the window counts as drifted."""

    features: tuple[str, ...] = MONITORED_FEATURES
    info_features: tuple[str, ...] = INFO_FEATURES
    feature_method: str = "wasserstein"
    feature_threshold: float = 0.3
    class_method: str = "jensenshannon"
    class_threshold: float = 0.15
    use_class_mix: bool = True
    use_embedding: bool = True
    embedding_method: str = "wasserstein"
    embedding_component_threshold: float = 0.3
    embedding_share: float = 0.25
    drift_share: float = 0.1
    min_window: int = 100


@dataclass
class ColumnDrift:
    """The test of one column."""

    column: str
    role: str  # feature, class, embedding, info
    method: str
    threshold: float
    score: float
    drifted: bool


@dataclass
class DriftResult:
    """The decision and everything that led to it."""

    status: str  # "drift", "no_drift" or "insufficient_data"
    drift_detected: bool
    drift_share: float
    window_size: int
    reference_size: int
    columns: dict[str, ColumnDrift]
    info: dict[str, ColumnDrift]
    embedding_components: dict[str, ColumnDrift]
    embedding_drift_share: float | None
    class_reference: str | None  # "prediction" or "label" or None (class mix not tested)
    dropped_rows: int
    settings: DriftSettings
    live_accuracy: dict[str, object] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def drifted_columns(self) -> list[str]:
        """Names of the monitored columns that drifted."""
        return [name for name, c in self.columns.items() if c.drifted]

    def verdict(self) -> str:
        """One sentence for people."""
        if self.status == "insufficient_data":
            return (
                f"not enough traffic: {self.window_size} usable rows in the window, "
                f"{self.settings.min_window} needed for a verdict"
            )
        if not self.drift_detected:
            return (
                f"no drift: {len(self.drifted_columns)} of {len(self.columns)} monitored columns "
                f"drifted over {self.window_size} rows"
            )
        return (
            f"DRIFT: {', '.join(self.drifted_columns)} drifted "
            f"({self.drift_share:.0%} of monitored columns, {self.window_size} rows)"
        )

    def summary(self) -> dict[str, object]:
        """JSON-ready summary (the CLI prints it; metrics are derived from it)."""
        return {
            "drift_detected": self.drift_detected,
            "drift_share": round(self.drift_share, 4),
            "window_size": self.window_size,
            "status": self.status,
            "verdict": self.verdict(),
            "drifted_columns": self.drifted_columns,
            "reference_size": self.reference_size,
            "dropped_rows": self.dropped_rows,
            "class_reference": self.class_reference,
            "embedding_drift_share": None
            if self.embedding_drift_share is None
            else round(self.embedding_drift_share, 4),
            "columns": {
                n: {
                    "score": round(c.score, 5),
                    "drifted": c.drifted,
                    "method": c.method,
                    "threshold": c.threshold,
                    "role": c.role,
                }
                for n, c in self.columns.items()
            },
            "info_columns": {
                n: {"score": round(c.score, 5), "drifted": c.drifted, "method": c.method}
                for n, c in self.info.items()
            },
            "live_accuracy": self.live_accuracy,
            "settings": asdict(self.settings),
            **self.extra,
        }


def _stat_test(
    reference: pd.Series, current: pd.Series, method: str, threshold: float, categorical: bool
) -> tuple[float, bool]:
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    kind = ColumnType.Categorical if categorical else ColumnType.Numerical
    test = get_stattest(reference, current, kind, method)
    result = test(reference, current, kind, threshold)
    return float(result.drift_score), bool(result.drifted)


def prepare(
    reference: pd.DataFrame, current: pd.DataFrame, settings: DriftSettings
) -> tuple[pd.DataFrame, pd.DataFrame, str | None, int]:
    """Align the two tables for testing.

    Returns:
        The reference and current tables (rows with every feature), where the class mix is
        tested a ``predicted_class`` column in both, the source of the reference's class column
        (``"prediction"``, ``"label"`` or None), and how many current rows were dropped.

    Raises:
        DriftInputError: A feature column is missing from either table.
    """
    needed = list(
        dict.fromkeys(
            [
                *settings.features,
                *settings.info_features,
                *(EMBEDDING_COLUMNS if settings.use_embedding else ()),
            ]
        )
    )
    for name, table in (("reference", reference), ("current window", current)):
        lacking = [c for c in needed if c not in table.columns]
        if lacking:
            raise DriftInputError(f"the {name} lacks feature columns {lacking[:5]}")
    complete = current.dropna(subset=needed)
    if "feature_error" in complete:
        complete = complete[complete["feature_error"].isna()]
    dropped = len(current) - len(complete)
    ref = reference.dropna(subset=needed)
    class_source = None
    ref_out = ref[needed].reset_index(drop=True)
    cur_out = complete[needed].reset_index(drop=True)
    if settings.use_class_mix and "prediction" in complete and complete["prediction"].notna().any():
        if "prediction" in ref and ref["prediction"].notna().all():
            class_source = "prediction"
        elif "label" in ref:
            class_source = "label"
        if class_source:
            ref_out[CLASS_COLUMN] = ref[class_source].astype(str).to_numpy()
            cur_out[CLASS_COLUMN] = complete["prediction"].astype("string").to_numpy()
    for column in LABEL_COLUMNS:
        if column in complete:
            cur_out["_" + column] = complete[column].to_numpy()
    return ref_out, cur_out, class_source, dropped


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    settings: DriftSettings | None = None,
    classes: list[str] | None = None,
) -> DriftResult:
    """Test the window against the reference and decide.

    Args:
        reference: The reference profile (:func:`monitoring.reference.load_reference`).
        current: The window: feature columns, optionally ``prediction`` and ``true_label``.
        settings: Tests and thresholds (the defaults are the tuned ones).
        classes: Class names for live accuracy (default: those seen in the data).

    Raises:
        DriftInputError: Missing columns or an empty reference.
    """
    settings = settings or DriftSettings()
    ref, cur, class_source, dropped = prepare(reference, current, settings)
    if ref.empty:
        raise DriftInputError("the reference profile has no complete row")
    window = len(cur)
    columns: dict[str, ColumnDrift] = {}
    info: dict[str, ColumnDrift] = {}
    components: dict[str, ColumnDrift] = {}
    embedding_share = None

    def feature_drift(name: str, kind: str) -> ColumnDrift:
        method, threshold = settings.feature_method, settings.feature_threshold
        score, drifted = _stat_test(ref[name], cur[name], method, threshold, categorical=False)
        return ColumnDrift(name, kind, method, threshold, score, drifted)

    if window:
        for name in settings.features:
            columns[name] = feature_drift(name, "feature")
        if class_source is not None:
            predicted = cur[CLASS_COLUMN].dropna().astype(str)
            if len(predicted):
                score, drifted = _stat_test(
                    ref[CLASS_COLUMN],
                    predicted,
                    settings.class_method,
                    settings.class_threshold,
                    categorical=True,
                )
                columns[CLASS_COLUMN] = ColumnDrift(
                    CLASS_COLUMN,
                    "class",
                    settings.class_method,
                    settings.class_threshold,
                    score,
                    drifted,
                )
        if settings.use_embedding:
            for name in EMBEDDING_COLUMNS:
                score, drifted = _stat_test(
                    ref[name],
                    cur[name],
                    settings.embedding_method,
                    settings.embedding_component_threshold,
                    categorical=False,
                )
                components[name] = ColumnDrift(
                    name,
                    "embedding",
                    settings.embedding_method,
                    settings.embedding_component_threshold,
                    score,
                    drifted,
                )
            embedding_share = sum(c.drifted for c in components.values()) / len(components)
            columns[EMBEDDING] = ColumnDrift(
                EMBEDDING,
                "embedding",
                "share of drifted components",
                settings.embedding_share,
                embedding_share,
                embedding_share >= settings.embedding_share,
            )
        for name in settings.info_features:
            info[name] = feature_drift(name, "info")
    share = sum(c.drifted for c in columns.values()) / len(columns) if columns else 0.0
    enough = window >= settings.min_window
    detected = enough and share >= settings.drift_share
    status = "insufficient_data" if not enough else ("drift" if detected else "no_drift")
    accuracy = None
    if {"_true_label", "_prediction"} <= set(cur.columns) and cur["_true_label"].notna().any():
        names = classes or sorted(
            set(ref.get(CLASS_COLUMN, pd.Series(dtype=str)).dropna().astype(str))
            | set(cur["_true_label"].dropna().astype(str))
        )
        accuracy = live_accuracy(
            cur.rename(columns={f"_{column}": column for column in LABEL_COLUMNS}), names
        )
    return DriftResult(
        status=status,
        drift_detected=detected,
        drift_share=share,
        window_size=window,
        reference_size=len(ref),
        columns=columns,
        info=info,
        embedding_components=components,
        embedding_drift_share=embedding_share,
        class_reference=class_source,
        dropped_rows=dropped,
        settings=settings,
        live_accuracy=accuracy,
    )


def _evidently_report(settings: DriftSettings, monitored: list[str], has_class: bool) -> Report:
    from evidently import Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift
    from evidently.presets import DataDriftPreset

    methods = {c: settings.feature_method for c in monitored}
    thresholds = {c: settings.feature_threshold for c in monitored}
    columns = list(monitored)
    if has_class:
        columns.append(CLASS_COLUMN)
        methods[CLASS_COLUMN] = settings.class_method
        thresholds[CLASS_COLUMN] = settings.class_threshold
    items = [
        DataDriftPreset(
            columns=columns,
            per_column_method=methods,
            per_column_threshold=thresholds,
            drift_share=settings.drift_share,
        )
    ]
    if settings.use_embedding:
        # One count over the components (Evidently's "ratio" view of the embedding), not a
        # per-component table: 16 more distribution plots would double the rendering time.
        items.append(
            DriftedColumnsCount(
                columns=list(EMBEDDING_COLUMNS),
                num_method=settings.embedding_method,
                num_threshold=settings.embedding_component_threshold,
                drift_share=settings.embedding_share,
            )
        )
    items += [
        ValueDrift(column=c, method=settings.feature_method, threshold=settings.feature_threshold)
        for c in settings.info_features
    ]
    return Report(items, include_tests=True)


def _evidently_flags(snapshot_dict: dict) -> dict[str, object]:
    """Per-column drift flags from the report's tests, and the embedding components' drift count."""
    flags: dict[str, object] = {}
    prefix = "Value Drift for column "
    for test in snapshot_dict.get("tests", []):
        name = str(test.get("name", ""))
        if name.startswith(prefix):
            flags[name[len(prefix) :]] = test.get("status") == "FAIL"
    for metric in snapshot_dict.get("metrics", []):
        config = metric.get("config") or {}
        if config.get("type", "").endswith("DriftedColumnsCount") and list(
            config.get("columns") or []
        ) == list(EMBEDDING_COLUMNS):
            flags[EMBEDDING] = int((metric.get("value") or {}).get("count", -1))
    return flags


def write_reports(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    result: DriftResult,
    out_dir: Path,
    *,
    html: bool = True,
    max_report_rows: int = REPORT_ROWS,
    seed: int = 0,
) -> dict[str, Path]:
    """Render the Evidently reports for ``result`` and write the summary.

    Files in ``out_dir``: ``drift_report.html`` and ``drift_report.json`` (Evidently),
    ``live_accuracy.html``/``.json`` when the window has labelled predictions, and
    ``drift_summary.json`` (:meth:`DriftResult.summary`, with ``evidently_agrees``).

    Rendering costs far more than deciding (plotly figures for every column), so a window larger
    than ``max_report_rows`` is drawn for the report as a uniform random sample of that many rows;
    the decision and the summary always use every row. ``evidently_agrees`` (Evidently's
    per-column verdicts equal the decision's) is only meaningful on an unsampled window and is
    recorded as None otherwise.

    Args:
        reference: The reference profile.
        current: The window.
        result: What :func:`compute_drift` decided on the same tables.
        out_dir: Output folder (created).
        html: Also write the HTML files (the JSON is always written).
        max_report_rows: Largest number of window rows rendered.
        seed: Seed of the sample.

    Returns:
        The written files by kind.
    """
    from evidently import DataDefinition, Dataset

    settings = result.settings
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ref, cur, _, _ = prepare(reference, current, settings)
    sampled = len(cur) > max_report_rows
    if sampled:
        cur = cur.sample(max_report_rows, random_state=seed).reset_index(drop=True)
    result.extra["report_rows"] = len(cur)
    written: dict[str, Path] = {}
    if len(cur):
        has_class = CLASS_COLUMN in result.columns
        numeric = [c for c in FEATURE_COLUMNS if c in ref.columns]
        keep = numeric + ([CLASS_COLUMN] if has_class else [])
        definition = DataDefinition(
            numerical_columns=numeric, categorical_columns=[CLASS_COLUMN] if has_class else []
        )
        cur_rows = cur[keep].dropna(subset=[CLASS_COLUMN]) if has_class else cur[keep]
        report = _evidently_report(settings, list(settings.features), has_class)
        snapshot = report.run(
            Dataset.from_pandas(cur_rows, data_definition=definition),
            Dataset.from_pandas(ref[keep], data_definition=definition),
            metadata={"verdict": result.verdict(), "window_size": result.window_size},
        )
        snapshot_dict = snapshot.dict()
        flags = _evidently_flags(snapshot_dict)
        expected: dict[str, object] = {
            **{n: c.drifted for n, c in result.columns.items() if n != EMBEDDING},
            **{n: c.drifted for n, c in result.info.items()},
        }
        if settings.use_embedding:
            expected[EMBEDDING] = sum(c.drifted for c in result.embedding_components.values())
        disagreements = sorted(n for n, d in expected.items() if n in flags and flags[n] != d)
        agrees = not disagreements and set(expected) <= set(flags)
        result.extra["evidently_agrees"] = None if sampled else agrees
        if disagreements and not sampled:
            log.warning("Evidently's report disagrees with the decision on %s", disagreements)
        json_path = out_dir / "drift_report.json"
        json_path.write_text(json.dumps(snapshot_dict, default=str))
        written["report_json"] = json_path
        if html:
            snapshot.save_html(str(out_dir / "drift_report.html"))
            written["report_html"] = out_dir / "drift_report.html"
        labelled = (
            cur[cur["_true_label"].notna() & cur["_prediction"].notna()]
            if {"_true_label", "_prediction"} <= set(cur.columns)
            else cur.iloc[0:0]
        )
        if len(labelled):
            written.update(_write_classification(labelled, out_dir, html))
    summary_path = out_dir / "drift_summary.json"
    summary_path.write_text(json.dumps(result.summary(), indent=2, default=str))
    written["summary"] = summary_path
    return written


def _write_classification(labelled: pd.DataFrame, out_dir: Path, html: bool) -> dict[str, Path]:
    from evidently import DataDefinition, Dataset, MulticlassClassification, Report
    from evidently.metrics import Accuracy, RecallByLabel

    frame = pd.DataFrame(
        {
            "target": labelled["_true_label"].astype(str).to_numpy(),
            "prediction": labelled["_prediction"].astype(str).to_numpy(),
        }
    )
    definition = DataDefinition(
        categorical_columns=["target", "prediction"],
        classification=[MulticlassClassification(target="target", prediction_labels="prediction")],
    )
    with warnings.catch_warnings():
        # A window rarely holds every class: recall of an absent one is 0 by design, not news.
        warnings.filterwarnings("ignore", message=".*is ill-defined and being set to 0.0.*")
        snapshot = Report([Accuracy(), RecallByLabel()]).run(
            Dataset.from_pandas(frame, data_definition=definition)
        )
    path = out_dir / "live_accuracy.json"
    path.write_text(json.dumps(snapshot.dict(), default=str))
    written = {"accuracy_json": path}
    if html:
        snapshot.save_html(str(out_dir / "live_accuracy.html"))
        written["accuracy_html"] = out_dir / "live_accuracy.html"
    return written
