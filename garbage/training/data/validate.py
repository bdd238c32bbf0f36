"""Validate an image-folder dataset: decodable images, expected classes, sizes, duplicates, balance.

The checks on the image metadata table are a pandera schema; duplicate handling and the class
census are plain pandas. The result is a JSON-serialisable report, a Markdown rendering of it, and
the table of images that go on to the split.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
from PIL import Image
from tqdm import tqdm

from garbage.core.config import DataConfig
from garbage.core.preprocessing import InvalidImageError, decode_image

_MAX_LISTED = 20


class DataValidationError(RuntimeError):
    """The dataset failed a hard check; the message names the offending files or folders."""


@dataclass
class ValidationReport:
    """What validation found; ``errors`` non-empty means the dataset must not be used."""

    root: str
    num_files: int
    num_kept: int
    class_counts: dict[str, int]
    imbalance_ratio: float
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duplicates_within_class: list[list[str]] = field(default_factory=list)
    label_conflicts: list[list[str]] = field(default_factory=list)
    invalid_files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no hard check failed."""
        return not self.errors

    def to_json(self) -> str:
        """Serialise the report as indented JSON."""
        return json.dumps({**asdict(self), "ok": self.ok}, indent=2)

    def to_markdown(self) -> str:
        """Render the report for people (shown in the KFP UI as a Markdown artifact)."""
        status = "PASSED" if self.ok else "FAILED"
        lines = [
            f"# Data validation: {status}",
            "",
            f"Root: `{self.root}`; {self.num_files} files, {self.num_kept} kept for training.",
            "",
            "| class | images kept | share |",
            "| --- | ---: | ---: |",
        ]
        total = max(sum(self.class_counts.values()), 1)
        for name, count in self.class_counts.items():
            lines.append(f"| {name} | {count} | {count / total:.1%} |")
        lines += ["", f"Imbalance ratio (largest / smallest class): {self.imbalance_ratio:.2f}", ""]
        for title, items in (("Errors", self.errors), ("Warnings", self.warnings)):
            if items:
                lines += [f"## {title}", ""] + [f"- {item}" for item in items] + [""]
        if self.label_conflicts:
            lines += ["## Identical images under different classes (excluded)", ""]
            lines += [f"- {', '.join(group)}" for group in self.label_conflicts[:_MAX_LISTED]] + [
                ""
            ]
        if self.duplicates_within_class:
            lines += ["## Identical images within a class (kept once)", ""]
            lines += [
                f"- {', '.join(group)}" for group in self.duplicates_within_class[:_MAX_LISTED]
            ]
        return "\n".join(lines) + "\n"


def _describe(path: Path, root: Path, config: DataConfig) -> dict[str, object]:
    data = path.read_bytes()
    row: dict[str, object] = {
        "path": path.relative_to(root).as_posix(),
        "label": path.parent.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "format": None,
        "width": 0,
        "height": 0,
        "error": None,
    }
    try:
        with Image.open(io.BytesIO(data)) as header:
            row["format"] = header.format
        image = decode_image(
            data, allowed_formats=config.allowed_formats, max_pixels=config.max_pixels
        )
        row["width"], row["height"] = image.size
    except (InvalidImageError, OSError) as e:
        row["error"] = str(e)
    return row


def scan_images(root: Path, config: DataConfig) -> pd.DataFrame:
    """Decode every file under the class folders of ``root`` into a metadata table."""
    files = sorted(
        p
        for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(".")
        for p in d.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )
    rows = [_describe(p, root, config) for p in tqdm(files, desc="validate images", unit="img")]
    columns = ["path", "label", "sha256", "bytes", "format", "width", "height", "error"]
    return pd.DataFrame(rows, columns=columns)


def image_table_schema(config: DataConfig) -> pa.DataFrameSchema:
    """Pandera schema of one valid image row under ``config``."""
    return pa.DataFrameSchema(
        {
            "path": pa.Column(str, unique=True),
            "label": pa.Column(str, pa.Check.isin(config.classes), description="class folder"),
            "sha256": pa.Column(str, pa.Check.str_length(64, 64)),
            "format": pa.Column(str, pa.Check.isin(config.allowed_formats), nullable=False),
            "width": pa.Column(int, pa.Check.ge(config.min_side)),
            "height": pa.Column(int, pa.Check.ge(config.min_side)),
            "pixels": pa.Column(int, pa.Check.le(config.max_pixels)),
            "error": pa.Column(
                object, pa.Check(lambda s: s.isna(), element_wise=False), nullable=True
            ),
        },
        coerce=False,
        strict=False,
    )


def _schema_failures(table: pd.DataFrame, config: DataConfig) -> dict[str, str]:
    """Map each failing file to why it failed the schema."""
    checked = table.assign(
        pixels=table["width"].astype(int) * table["height"].astype(int),
        format=table["format"].fillna(""),
    )
    try:
        image_table_schema(config).validate(checked, lazy=True)
    except pa.errors.SchemaErrors as e:
        failures: dict[str, str] = {}
        for case in e.failure_cases.itertuples():
            if case.index is None or pd.isna(case.index):
                continue
            row = checked.loc[case.index]
            if case.column == "label":
                continue  # reported per folder, not per file
            if isinstance(row["error"], str):
                reason = row["error"]  # the decoder's own words are the clearest
            else:
                value = getattr(row, str(case.column), case.failure_case)
                reason = f"{case.column}={value} fails {case.check}"
            failures.setdefault(str(row["path"]), reason)
        return failures
    return {}


def validate_dataset(root: Path, config: DataConfig) -> tuple[ValidationReport, pd.DataFrame]:
    """Run every check on the image folders under ``root``.

    Returns:
        The report and the table of kept images (``path``, ``label``, ``sha256``, ``width``,
        ``height``): valid files only, one copy of each within-class duplicate, no image that
        appears under two classes.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataValidationError(f"dataset root {root} does not exist or is not a folder")
    table = scan_images(root, config)
    errors: list[str] = []
    warnings: list[str] = []

    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = sorted(set(folders) - set(config.classes))
    missing = [c for c in config.classes if c not in folders]
    if unknown:
        errors.append(
            f"unknown class folders {unknown} under {root}; expected exactly {config.classes} "
            "(remove the folders or add the classes to data.classes)"
        )
    if missing:
        errors.append(f"missing class folders {missing} under {root}")
    stray = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if stray:
        warnings.append(f"files outside any class folder ignored: {stray[:_MAX_LISTED]}")

    invalid = _schema_failures(table, config) if len(table) else {}
    if invalid:
        listed = "; ".join(f"{p}: {why}" for p, why in list(invalid.items())[:_MAX_LISTED])
        more = f" (and {len(invalid) - _MAX_LISTED} more)" if len(invalid) > _MAX_LISTED else ""
        errors.append(f"{len(invalid)} invalid image files: {listed}{more}")

    valid = table[~table["path"].isin(invalid) & table["label"].isin(config.classes)]
    labels_per_hash = valid.groupby("sha256")["label"].nunique()
    conflict_hashes = set(labels_per_hash[labels_per_hash > 1].index)
    label_conflicts = [
        sorted(group["path"])
        for _, group in valid[valid["sha256"].isin(conflict_hashes)].groupby("sha256")
    ]
    if label_conflicts:
        warnings.append(
            f"{len(label_conflicts)} images appear byte-identical under different classes; "
            f"all {sum(map(len, label_conflicts))} copies are excluded"
        )
    consistent = valid[~valid["sha256"].isin(conflict_hashes)]
    dup_groups = [sorted(g["path"]) for _, g in consistent.groupby("sha256") if len(g) > 1]
    if dup_groups:
        warnings.append(
            f"{len(dup_groups)} images are duplicated within their class; each is kept once "
            f"({sum(len(g) - 1 for g in dup_groups)} copies dropped)"
        )
    kept = consistent.sort_values("path").drop_duplicates("sha256", keep="first")
    kept = kept[["path", "label", "sha256", "width", "height"]].reset_index(drop=True)

    counts = {c: int((kept["label"] == c).sum()) for c in config.classes}
    too_small = {
        c: n for c, n in counts.items() if n < config.min_images_per_class and c not in missing
    }
    if too_small:
        errors.append(
            f"classes below the minimum of {config.min_images_per_class} usable images: {too_small}"
        )
    nonzero = [n for n in counts.values() if n > 0]
    imbalance = max(nonzero) / min(nonzero) if nonzero else float("inf")
    if imbalance > 3:
        warnings.append(
            f"class imbalance: largest/smallest = {imbalance:.1f}; judge models by macro-F1 and "
            "per-class recall, not accuracy alone"
        )

    report = ValidationReport(
        root=str(root),
        num_files=len(table),
        num_kept=len(kept),
        class_counts=counts,
        imbalance_ratio=round(imbalance, 3),
        errors=errors,
        warnings=warnings,
        duplicates_within_class=dup_groups,
        label_conflicts=label_conflicts,
        invalid_files=invalid,
    )
    return report, kept


def write_report(report: ValidationReport, out_dir: Path) -> tuple[Path, Path]:
    """Write ``validation.json`` and ``validation.md`` into ``out_dir``; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "validation.json", out_dir / "validation.md"
    json_path.write_text(report.to_json())
    md_path.write_text(report.to_markdown())
    return json_path, md_path


def raise_for_errors(report: ValidationReport) -> None:
    """Raise :class:`DataValidationError` naming every failed check, if any failed."""
    if report.errors:
        raise DataValidationError(
            f"data validation failed for {report.root}:\n- " + "\n- ".join(report.errors)
        )
