"""Classification metrics (scikit-learn's), used by training, evaluation and the promotion gate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

# Class indices: a list, or a NumPy array such as ``logits.argmax(1)``.
Labels = Sequence[int] | np.ndarray


def classification_metrics(
    y_true: Labels, y_pred: Labels, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision, recall, F1 and support.

    Returns:
        ``{"accuracy", "macro_f1", "per_class": {name: {...}}, "confusion_matrix": [[...]]}``;
        an undefined ratio (no prediction or no example of a class) counts as 0, and every
        class counts in the macro average, also one without examples.
    """
    labels = list(range(len(class_names)))
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0.0
    )
    total = int(matrix.sum())
    return {
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": matrix.tolist(),
    }
