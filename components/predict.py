"""Batch prediction over files and folders with an exported model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from components.inference import OnnxClassifier
from components.preprocessing import InvalidImageError


def expand_paths(paths: Iterable[Path], suffixes: set[str]) -> tuple[list[Path], list[Path]]:
    """Files as given plus image files found under folders (sorted); and the paths that do not exist."""
    files: list[Path] = []
    missing: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and p.suffix.lower() in suffixes))
        elif path.is_file():
            files.append(path)
        else:
            missing.append(path)
    return files, missing


def predict_files(classifier: OnnxClassifier, files: list[Path], batch_size: int = 32
                  ) -> Iterator[dict[str, object]]:
    """Yield ``{"path", "label", "score"}`` per file, or ``{"path", "error"}`` for a bad one."""
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        pixels, good = [], []
        for path in chunk:
            try:
                pixels.append(classifier.preprocess(path.read_bytes()))
                good.append(path)
            except (InvalidImageError, OSError) as e:
                yield {"path": str(path), "error": str(e)}
        if not good:
            continue
        for path, prediction in zip(good, classifier.to_predictions(
                classifier.predict_pixels(np.stack(pixels))), strict=True):
            yield {"path": str(path), "label": prediction.label, "score": round(prediction.score, 6)}
