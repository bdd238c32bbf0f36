"""Classification metrics in plain NumPy (used by training, evaluation and the promotion gate)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Class indices: a list, or a NumPy array such as ``logits.argmax(1)``.
Labels = Sequence[int] | np.ndarray


def confusion_matrix(y_true: Labels, y_pred: Labels, num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]`` as an ``int64`` matrix of shape ``[C, C]``."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def classification_metrics(
    y_true: Labels, y_pred: Labels, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision, recall, F1 and support.

    Returns:
        ``{"accuracy", "macro_f1", "per_class": {name: {...}}, "confusion_matrix": [[...]]}``;
        an undefined ratio (no prediction or no example of a class) counts as 0.
    """
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    tp = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    actual = matrix.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    total = matrix.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(actual[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.tolist(),
    }
