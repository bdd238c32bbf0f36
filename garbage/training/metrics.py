"""Classification metrics (scikit-learn's), used by training, evaluation and the promotion gate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Scored:
    """One scoring pass of a classifier over a set of images, kept for every report of it.

    Attributes:
        classes: Class names, in the model's output order.
        y_true: True class index per image.
        y_pred: Predicted class index per image.
        confidence: The predicted class's probability per image.
        groups: The data slice of each image (e.g. its source).
    """

    classes: list[str]
    y_true: list[int]
    y_pred: list[int]
    confidence: list[float]
    groups: list[str]

    def __post_init__(self) -> None:
        sizes = {len(self.y_true), len(self.y_pred), len(self.confidence), len(self.groups)}
        if len(sizes) != 1:
            raise ValueError(
                "y_true, y_pred, confidence and groups must have one entry per image, got "
                f"lengths {len(self.y_true)}, {len(self.y_pred)}, {len(self.confidence)} and "
                f"{len(self.groups)}"
            )

    def __len__(self) -> int:
        return len(self.y_true)

    def metrics(self) -> dict[str, Any]:
        """:func:`classification_metrics` of all images."""
        return classification_metrics(self.y_true, self.y_pred, self.classes)

    def low_confidence_share(self, threshold: float) -> float:
        """The share of images whose top probability is below ``threshold`` (0 for none)."""
        if not self.confidence:
            return 0.0
        return float(np.mean(np.asarray(self.confidence) < threshold))

    def slices(self) -> dict[str, dict[str, Any]]:
        """:func:`classification_metrics` per slice (``groups``), in slice-name order."""
        result = {}
        groups = np.asarray(self.groups, dtype=object)
        y_true, y_pred = np.asarray(self.y_true), np.asarray(self.y_pred)
        for name in sorted(set(self.groups)):
            mask = groups == name
            result[name] = classification_metrics(y_true[mask], y_pred[mask], self.classes)
        return result
