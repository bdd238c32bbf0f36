"""The model card of a registered version, rendered as Markdown.

What the model is, what it was trained and tested on, how it does, what it expects, what it is
for, and where it fails (measured).

:func:`build_model_card` renders Markdown from plain inputs (one scoring pass on the test split,
the split manifest, the export's metadata, the lineage); :func:`measure_external` scores the
exported model on an evaluation set unlike its training data (``card.external``, e.g. photos
from a real waste facility) for the card's measured limits. The register step
(:func:`garbage.training.steps.register_step`) sets the card as the registered version's
description and keeps it as the run's ``model_card.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from garbage.core.classifier import (
    INPUT_NAME,
    OUTPUT_LOGITS,
    OUTPUT_PROBABILITIES,
    ModelMetadata,
    OnnxClassifier,
    predict_in_batches,
)
from garbage.core.config import ExternalSet
from garbage.core.preprocessing import (
    DEFAULT_ALLOWED_FORMATS,
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    InvalidImageError,
)
from garbage.training.data.fetch import fetch_dataset
from garbage.training.data.split import SPLITS, split_summary
from garbage.training.lineage import CodeVersion, DataVersion
from garbage.training.metrics import Scored

CARD_FILENAME = "model_card.md"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ExternalResult:
    """An external evaluation set scored by the model.

    Attributes:
        name: The set's configured name.
        source: Where its archive came from.
        sha256: The archive's sha256.
        max_per_class: The cap on images scored per class.
        scored: The predictions on the sampled images that decoded.
        unreadable: Sampled files that are not acceptable images (not scored).
        left_out: Class folders of the archive that the model does not know (not scored).
    """

    name: str
    source: str
    sha256: str
    max_per_class: int
    scored: Scored
    unreadable: int = 0
    left_out: list[str] = field(default_factory=list)


def _sample(folder: Path, limit: int) -> list[Path]:
    """Up to ``limit`` images of a class folder: a fixed pseudo-random sample by name hash."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    key = {p: hashlib.sha256(p.relative_to(folder).as_posix().encode()).hexdigest() for p in files}
    return sorted(files, key=lambda p: key[p])[:limit]


def measure_external(
    classifier: OnnxClassifier, external: ExternalSet, cache_dir: Path, batch_size: int = 32
) -> ExternalResult:
    """Score ``classifier`` on an external evaluation set (fetched, checksummed and cached).

    At most ``external.max_per_class`` images of each class the model knows are scored, a fixed
    sample (by a hash of the file names, so the same archive always gives the same images).

    Args:
        classifier: The exported model.
        external: The set: name, archive source, sha256 and cap.
        cache_dir: The data cache (``config.data_cache_dir``): nothing is fetched twice.
        batch_size: Images per model call.

    Raises:
        garbage.training.data.fetch.DataFetchError: The archive is missing, unreachable or
            its checksum does not match.
        ValueError: The archive holds no class folder the model knows.
    """
    root = fetch_dataset(external.source, external.sha256, cache_dir)
    folders = {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    known = [c for c in classifier.classes if c in folders]
    if not known:
        raise ValueError(
            f"external set {external.name!r} ({external.source}) has class folders "
            f"{sorted(folders)}, none of the model's classes {classifier.classes}; check "
            "card.external's source, or leave the set out"
        )
    index = {c: i for i, c in enumerate(classifier.classes)}
    pixels, y_true, unreadable = [], [], 0
    for name in known:
        for path in _sample(folders[name], external.max_per_class):
            try:
                pixels.append(classifier.preprocess(path.read_bytes()))
            except InvalidImageError:
                unreadable += 1
                continue
            y_true.append(index[name])
    probabilities = predict_in_batches(classifier.predict_pixels, pixels, batch_size)
    scored = Scored(
        classes=list(classifier.classes),
        y_true=y_true,
        y_pred=[int(i) for i in probabilities.argmax(1)] if len(pixels) else [],
        confidence=[float(p) for p in probabilities.max(1)] if len(pixels) else [],
        groups=[external.name] * len(y_true),
    )
    return ExternalResult(
        name=external.name,
        source=external.source,
        sha256=external.sha256,
        max_per_class=external.max_per_class,
        scored=scored,
        unreadable=unreadable,
        left_out=sorted(set(folders) - set(known)),
    )


# -- rendering ---------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A Markdown table; ``align`` holds ``l`` or ``r`` per column (default: first left)."""
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _f(value: float) -> str:
    return f"{value:.3f}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def confusion_table(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """The confusion matrix as a Markdown table: a row per true class, a column per prediction."""
    header = ["true \\ predicted", *classes, "support"]
    rows = [[name, *row, sum(row)] for name, row in zip(classes, matrix, strict=True)]
    return _table(header, rows)


def _balance(manifest: pd.DataFrame, classes: Sequence[str]) -> str:
    counts = split_summary(manifest)
    splits = [s for s in SPLITS if s in counts]
    rows = []
    for name in classes:
        row = [counts[s].get(name, 0) for s in splits]
        rows.append([name, *row, sum(row)])
    totals = [sum(counts[s].values()) for s in splits]
    rows.append(["**all**", *totals, sum(totals)])
    return _table(["class", *splits, "all"], rows)


def _per_class(metrics: dict[str, Any]) -> str:
    rows = [
        [name, _f(m["precision"]), _f(m["recall"]), _f(m["f1"]), m["support"]]
        for name, m in metrics["per_class"].items()
    ]
    return _table(["class", "precision", "recall", "F1", "support"], rows)


def _inputs(metadata: ModelMetadata) -> str:
    h, w = metadata.image_height, metadata.image_width
    formats = ", ".join(DEFAULT_ALLOWED_FORMATS)
    return "\n".join(
        [
            f"- **Photos**: one item per photo, {formats}; at most {DEFAULT_MAX_PIXELS:,} pixels, "
            f"a longest side of at most {DEFAULT_MAX_SIDE:,} pixels and an aspect ratio of at "
            f"most {DEFAULT_MAX_ASPECT_RATIO:g}:1 (checked from the header before decoding); "
            "EXIF orientation applied, converted to RGB (`garbage.core.preprocessing`).",
            f"- **Model input** `{INPUT_NAME}`: `uint8 [batch, {h}, {w}, 3]`, RGB, resized to "
            f"{w}x{h} (width x height) with the shared preprocessing; normalisation is inside the "
            "graph.",
            f"- **Outputs**: `{OUTPUT_LOGITS}` and `{OUTPUT_PROBABILITIES}`, "
            f"`float32 [batch, {len(metadata.classes)}]`, in this class order: "
            + ", ".join(f"`{c}`" for c in metadata.classes)
            + ".",
        ]
    )


def _external_section(
    results: Sequence[ExternalResult], test: dict[str, Any], threshold: float
) -> str:
    if not results:
        return (
            "No external evaluation set is configured (`card.external`): how the model does on "
            "photos unlike its training data is not measured for this version."
        )
    parts = []
    summary = []
    for r in results:
        m = r.scored.metrics()
        summary.append(
            [
                _escape(r.name),
                len(r.scored),
                _pct(m["accuracy"]),
                _f(m["macro_f1"]),
                _pct(r.scored.low_confidence_share(threshold)),
                f"{100 * (m['accuracy'] - test['accuracy']):+.1f} points",
            ]
        )
    parts.append(
        _table(
            [
                "set",
                "images",
                "accuracy",
                "macro-F1",
                f"unsure (top probability < {threshold:g})",
                "accuracy vs test",
            ],
            summary,
        )
    )
    for r in results:
        m = r.scored.metrics()
        notes = [
            f"Source `{_escape(r.source)}` (sha256 `{r.sha256[:12]}`), at most {r.max_per_class} "
            "images per class (a fixed sample)."
        ]
        if r.unreadable:
            notes.append(f"{r.unreadable} sampled files were not acceptable images (not scored).")
        if r.left_out:
            notes.append(
                "Classes the model does not know, left out: "
                + ", ".join(f"`{c}`" for c in r.left_out)
                + "."
            )
        rows = [
            [
                name,
                _f(c["recall"]),
                _f(test["per_class"][name]["recall"]) if name in test["per_class"] else "-",
                c["support"],
            ]
            for name, c in m["per_class"].items()
        ]
        parts.append(
            f"### {_escape(r.name)}\n\n"
            + " ".join(notes)
            + "\n\n"
            + _table(["class", "recall here", "recall on test", "images"], rows)
        )
    return "\n\n".join(parts)


def _standing_limits(
    manifest: pd.DataFrame, test: dict[str, Any], classes: Sequence[str]
) -> list[str]:
    counts = split_summary(manifest).get("train", {})
    limits = [
        "It always answers one of its classes ("
        + ", ".join(f"`{c}`" for c in classes)
        + "): an item of none of them, or a photo of no item, still gets one of them.",
        "One item per photo: with several items it names one of them or none.",
    ]
    if counts:
        total = sum(counts.values())
        smallest = min(classes, key=lambda c: counts.get(c, 0))
        limits.append(
            f"The smallest training class is `{smallest}` with {counts.get(smallest, 0)} of "
            f"{total} training images ({_pct(counts.get(smallest, 0) / total if total else 0)})."
        )
    per_class = test["per_class"]
    if per_class:
        weakest = min(per_class, key=lambda c: per_class[c]["recall"])
        limits.append(
            f"Its weakest class on the test split is `{weakest}` (recall "
            f"{_f(per_class[weakest]['recall'])} on {per_class[weakest]['support']} images)."
        )
    return limits


def build_model_card(
    *,
    model_name: str,
    version: str,
    run_id: str,
    code: CodeVersion,
    data: DataVersion,
    manifest: pd.DataFrame,
    test: Scored,
    metadata: ModelMetadata,
    intended_use: str,
    low_confidence: float,
    external: Sequence[ExternalResult] = (),
    gate: str | None = None,
    gate_table: str | None = None,
    run_url: str | None = None,
) -> str:
    """The model card of a registered version, as Markdown.

    Args:
        model_name: The registered model's name.
        version: The registered version.
        run_id: The MLflow run the version was trained in.
        code: The code version of the run.
        data: The data version of the run.
        manifest: The split manifest (class balance per split).
        test: One scoring pass of the exported model on the test split (metrics overall, per
            class, per slice, the confusion matrix, the unsure share).
        metadata: The export's ``metadata.json`` (input size, classes, backbone).
        intended_use: What the model is for (``card.intended_use``).
        low_confidence: Top probability below which a prediction counts as unsure.
        external: External evaluation sets, scored (:func:`measure_external`).
        gate: The promotion gate's decision, in words.
        gate_table: The gate's Markdown table (the whole test split and a row per data slice,
            :func:`garbage.training.registry.gate_table`): the card's "Promotion gate" section.
        run_url: A link to the run in the MLflow UI, when there is one.

    Returns:
        The card: a title, lineage, the promotion gate (with ``gate_table``), intended use,
        inputs, data, test metrics, confusion matrix and known limits.
    """
    metrics = test.metrics()
    classes = test.classes
    run = f"[`{run_id}`]({run_url})" if run_url else f"`{run_id}`"
    facts = [
        ["model", f"`{model_name}` version {version} (`models:/{model_name}/{version}`)"],
        ["run", f"{run} (`runs:/{run_id}`)"],
        ["code", f"git `{code.commit}`, dirty: {code.dirty_text}"],
        ["data version", f"`{data.version}`"],
        ["data", f"`{_escape(data.source)}`, sha256 `{data.archive_sha256}`"],
    ]
    if data.version == data.manifest_digest:
        facts[3][1] += " (the split manifest's digest)"
    else:
        facts.append(["split manifest", f"digest `{data.manifest_digest}`"])
    if "backbone" in metadata.extra:
        facts.append(["backbone", f"`{metadata.extra['backbone']}`"])
    if gate:
        facts.append(["promotion gate", _escape(gate)])
    slices = test.slices()
    slice_rows = [
        [
            _escape(name),
            sum(c["support"] for c in m["per_class"].values()),
            _pct(m["accuracy"]),
            _f(m["macro_f1"]),
        ]
        for name, m in slices.items()
    ]
    sections = [
        f"# Model card: {model_name} v{version}",
        _table(["", ""], facts, "ll"),
        *([f"## Promotion gate\n\n{gate_table.strip()}"] if gate_table else []),
        "## Intended use\n\n" + intended_use.strip(),
        "## Inputs\n\n" + _inputs(metadata),
        "## Data\n\nImages per class and split (the split manifest):\n\n"
        + _balance(manifest, classes),
        "## Test metrics\n\n"
        + _table(
            ["", "value"],
            [
                ["images", len(test)],
                ["accuracy", _pct(metrics["accuracy"])],
                ["macro-F1", _f(metrics["macro_f1"])],
                [
                    f"unsure (top probability < {low_confidence:g})",
                    _pct(test.low_confidence_share(low_confidence)),
                ],
            ],
            "lr",
        )
        + "\n\n### Per class\n\n"
        + _per_class(metrics)
        + "\n\n### Per data slice\n\n"
        + _table(["slice", "images", "accuracy", "macro-F1"], slice_rows)
        + "\n\n### Confusion matrix\n\n"
        + confusion_table(metrics["confusion_matrix"], classes),
        "## Known limits\n\n"
        + "\n".join(f"- {line}" for line in _standing_limits(manifest, metrics, classes))
        + "\n\n### Measured on photos unlike the training data\n\n"
        + _external_section(external, metrics, low_confidence),
    ]
    return "\n\n".join(sections) + "\n"


def fit_description(card: str, limit: int, full_card_uri: str) -> str:
    """The card when it fits in ``limit`` characters; else its first sections that fit.

    A shortened card ends with a line that names where the full card is.

    Args:
        card: The Markdown card (:func:`build_model_card`).
        limit: The most characters the description may hold.
        full_card_uri: Where the whole card is kept (e.g. ``runs:/<run id>/model_card.md``).
    """
    if len(card) <= limit:
        return card
    note = f"\n\n*Shortened: the full card is `{full_card_uri}`.*\n"
    kept = ""
    for section in card.split("\n\n## "):
        candidate = section if not kept else f"{kept}\n\n## {section}"
        if len(candidate) + len(note) > limit:
            break
        kept = candidate
    if not kept:
        kept = card[: max(0, limit - len(note))]
    return kept.rstrip() + note
