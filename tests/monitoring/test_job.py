"""``drift_flags``: consecutive windows of the store judged against the reference, newest first.

(The drift job itself, ``run_drift_job``, is tested with the drift decision in test_drift.py.)
The reference holds the training split of the dev archive; the windows hold test-split images,
one window strongly shifted (darker and blurred), one as they are, one empty.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import ImageEnhance, ImageFilter

from garbage.core.preprocessing import decode_image
from monitoring.features import pixel_features
from monitoring.job import DriftJobError, DriftWindow, drift_flags
from monitoring.store import InferenceStore

ROWS = 150


def _shifted(data: bytes) -> bytes:
    image = decode_image(data).filter(ImageFilter.GaussianBlur(2))
    image = ImageEnhance.Brightness(image).enhance(0.5)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _rows(
    images: list[tuple[str, bytes]], when: datetime, prefix: str, shift: bool
) -> pd.DataFrame:
    rows = []
    for i, (label, data) in enumerate(images):
        row = pixel_features(np.asarray(decode_image(_shifted(data) if shift else data)))
        row.update(inference_id=f"{prefix}{i}", item=0, ts=when, prediction=label, true_label=label)
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture
def store(test_images: list[tuple[str, bytes]], tmp_path: Path) -> tuple[str, datetime]:
    """A SQLite store: a shifted window (the last hour), a clean one (the hour before)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    rng = np.random.default_rng(7)
    picked = [test_images[i] for i in rng.choice(len(test_images), 2 * ROWS, replace=False)]
    db = InferenceStore(str(tmp_path / "log.db"))
    db.insert_rows(
        pd.concat(
            [
                _rows(picked[:ROWS], now - timedelta(minutes=30), "new-", shift=True),
                _rows(picked[ROWS:], now - timedelta(minutes=90), "old-", shift=False),
            ],
            ignore_index=True,
        )
    )
    db.close()
    return str(tmp_path / "log.db"), now


def test_a_shifted_window_is_flagged_a_clean_and_an_empty_one_are_not(
    store: tuple[str, datetime], tiny_model_dir: Path, reference_profile: Path
) -> None:
    db, now = store
    flags = drift_flags(
        db, tiny_model_dir, window="1h", count=3, reference=reference_profile, now=now
    )
    assert [w.rows for w in flags] == [ROWS, ROWS, 0]
    assert [w.drifted for w in flags] == [True, False, False]
    newest, clean, empty = flags
    assert newest == DriftWindow(now - timedelta(hours=1), now, ROWS, True, newest.reason)
    assert newest.reason.startswith("DRIFT:") and "brightness" in newest.reason
    assert clean.reason.startswith("no drift")
    assert empty.start == now - timedelta(hours=3) and empty.end == now - timedelta(hours=2)
    assert empty.reason.startswith("not enough traffic: 0 usable rows")


def test_bad_windows_say_what_to_fix(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DriftJobError, match="not a duration"):
        drift_flags(str(tmp_path / "log.db"), tiny_model_dir, window="soon", count=3)
    with pytest.raises(DriftJobError, match="at least one window"):
        drift_flags(str(tmp_path / "log.db"), tiny_model_dir, window="1h", count=0)
