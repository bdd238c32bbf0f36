"""Batch prediction over files and folders with an exported model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from components.inference import OnnxClassifier
from components.preprocessing import InvalidImageError


def expand_paths(paths: Iterable[Path], suffixes: set[str]) -> list[Path]:
    """Paths as given, each folder replaced by the image files under it (sorted, recursive).

    A path that does not exist stays in the list, so that its error is reported in order.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            )
        else:
            files.append(path)
    return files


def predict_files(
    classifier: OnnxClassifier, files: list[Path], batch_size: int = 32
) -> Iterator[dict[str, object]]:
    """Yield ``{"path", "label", "score"}`` per file, in order; ``{"path", "error"}`` if bad."""
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        records: list[dict[str, object]] = [{"path": str(path)} for path in chunk]
        pixels, decoded = [], []
        for record, path in zip(records, chunk, strict=True):
            try:
                pixels.append(classifier.preprocess(path.read_bytes()))
                decoded.append(record)
            except FileNotFoundError:
                record["error"] = "no such file or folder"
            except (InvalidImageError, OSError) as e:
                record["error"] = str(e)
        if decoded:
            predictions = classifier.to_predictions(classifier.predict_pixels(np.stack(pixels)))
            for record, prediction in zip(decoded, predictions, strict=True):
                record.update(label=prediction.label, score=round(prediction.score, 6))
        yield from records
