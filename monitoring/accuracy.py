"""Live accuracy and per-class recall from predictions that received a true label."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pandas as pd

from garbage.core.names import SELECTION_RANDOM

_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
#: The longest window: ten years of logs is more than any store here keeps.
MAX_WINDOW = timedelta(days=3653)


def parse_window(text: str) -> timedelta:
    """Parse ``30m``, ``1h``, ``7d``, ``2w``, ``90s`` into a positive duration.

    Raises:
        ValueError: Not a number followed by one of s, m, h, d, w (the message shows examples),
            not positive, or longer than :data:`MAX_WINDOW`.
    """
    match = _WINDOW.match(text or "") if len(text or "") <= 32 else None
    if not match:
        shown = repr(text[:32]) + ("..." if len(text) > 32 else "")
        raise ValueError(f"window {shown} is not a duration; use e.g. 30m, 1h, 24h or 7d")
    value = float(match.group(1))
    if value <= 0:
        raise ValueError(f"window {text!r} must be positive")
    try:
        span = timedelta(**{_UNIT[match.group(2).lower()]: value})
    except OverflowError:
        span = MAX_WINDOW * 2
    if span > MAX_WINDOW:
        raise ValueError(f"window {text!r} is longer than {MAX_WINDOW.days} days")
    return span


def live_accuracy(frame: pd.DataFrame, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy and per-class recall over the rows of ``frame`` that carry a true label.

    Labels that ``garbage review`` asked for are mostly of the images the model was least sure
    of, so the accuracy over all labels is biased low; the accuracy over its random picks
    (``label_selection == "random"``) estimates the accuracy on the traffic without bias.

    Args:
        frame: Rows with ``prediction`` and ``true_label`` columns, optionally
            ``label_selection`` (others ignored).
        classes: Every class, so that classes without labelled rows appear with ``None``.

    Returns:
        ``{"labelled": n, "accuracy": float | None, "recall": {class: float | None},
        "support": {class: int}, "random": {"labelled": n, "accuracy": float | None}}``;
        ``None`` where there is nothing to divide by.
    """
    if frame.empty or "true_label" not in frame:
        labelled = frame.iloc[0:0]
    else:
        labelled = frame[frame["true_label"].notna() & frame["prediction"].notna()]
    n = len(labelled)
    correct = labelled["prediction"] == labelled["true_label"] if n else pd.Series(dtype=bool)
    recall: dict[str, float | None] = {}
    support: dict[str, int] = {}
    for name in classes:
        mask = labelled["true_label"] == name if n else pd.Series(dtype=bool)
        support[name] = int(mask.sum()) if n else 0
        recall[name] = float(correct[mask].mean()) if support[name] else None
    if n and "label_selection" in labelled:
        random_picks = correct[labelled["label_selection"] == SELECTION_RANDOM]
    else:
        random_picks = correct.iloc[0:0]
    return {
        "labelled": n,
        "accuracy": float(correct.mean()) if n else None,
        "recall": recall,
        "support": support,
        "random": {
            "labelled": len(random_picks),
            "accuracy": float(random_picks.mean()) if len(random_picks) else None,
        },
    }
