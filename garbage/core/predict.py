"""Batch prediction over image files and folders with an exported model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from garbage.core.classifier import OnnxClassifier, batched
from garbage.core.preprocessing import InvalidImageError

#: File name suffixes taken as images when a folder is searched.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


def expand_paths(paths: Iterable[Path], suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Paths as given, each folder replaced by the image files under it (sorted, recursive).

    A path that does not exist stays in the list, so that its error is reported in order.
    """
    wanted = set(suffixes)
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in wanted)
            )
        else:
            files.append(path)
    return files


def predict_files(
    classifier: OnnxClassifier, files: Iterable[Path], batch_size: int = 32
) -> Iterator[dict[str, object]]:
    """Yield ``{"path", "label", "score"}`` per file, in order; ``{"path", "error"}`` if bad.

    Files are read ``batch_size`` at a time, so results stream and memory stays bounded.
    """
    for chunk in batched(files, batch_size):
        records: list[dict[str, object]] = [{"path": str(path)} for path in chunk]
        decoded = {}
        for index, path in enumerate(chunk):
            try:
                decoded[index] = classifier.preprocess(path.read_bytes())
            except FileNotFoundError:
                records[index]["error"] = "no such file or folder"
            except (InvalidImageError, OSError) as e:
                records[index]["error"] = str(e)
        predictions = classifier.predict_images(decoded.values(), batch_size)
        for index, prediction in zip(decoded, predictions, strict=True):
            records[index].update(label=prediction.label, score=round(prediction.score, 6))
        yield from records
