"""Storage round trips on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from monitoring.features import FEATURE_COLUMNS
from monitoring.store import EventMeta, InferenceStore, StoreError, normalise_url, redact

T0 = datetime(2026, 11, 26, 12, 0, 0)


def _features(value: float) -> dict[str, float]:
    return {name: value for name in FEATURE_COLUMNS}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> InferenceStore:
    if request.param == "sqlite":
        db = InferenceStore(str(tmp_path / "log.db"))
    else:
        db = InferenceStore(request.getfixturevalue("postgres_url"))
        db.metadata.drop_all(db.engine)
        db.metadata.create_all(db.engine)
    yield db
    db.close()


def test_request_then_response_then_feedback(store: InferenceStore) -> None:
    meta = EventMeta(
        "inf-1",
        T0,
        source="http://localhost:9081/",
        inference_service="garbage-classifier",
        namespace="garbage",
        component="predictor",
    )
    assert store.record_request(meta, [_features(1.0), {"feature_error": "not_an_image"}]) == 2
    store.record_response(
        EventMeta("inf-1", T0 + timedelta(milliseconds=30)),
        [("glass", 0.8, {"glass": 0.8, "paper": 0.2}), ("paper", 0.6, None)],
    )
    assert store.record_feedback("inf-1", 0, "glass", T0 + timedelta(hours=1))
    assert not store.record_feedback("nope", 0, "glass", T0)
    rows = store.load_window().sort_values("item").reset_index(drop=True)
    assert len(rows) == 2 and store.count() == 2 and rows["inference_id"].eq("inf-1").sum() == 2
    first = rows.iloc[0]
    assert (
        first["brightness"] == 1.0
        and first["prediction"] == "glass"
        and first["true_label"] == "glass"
    )
    assert json.loads(first["probabilities"]) == {"glass": 0.8, "paper": 0.2}
    assert first["inference_service"] == "garbage-classifier"
    assert pd.Timestamp(first["ts"]) == pd.Timestamp(T0)
    assert rows.iloc[1]["feature_error"] == "not_an_image" and pd.isna(rows.iloc[1]["brightness"])


def test_response_before_request_meets_in_one_row(store: InferenceStore) -> None:
    store.record_response(EventMeta("inf-2", T0), [("metal", 0.7, None)])
    store.record_request(EventMeta("inf-2", T0, inference_service="gc"), [_features(2.0)])
    [row] = store.load_window().to_dict("records")
    assert (
        row["prediction"] == "metal"
        and row["brightness"] == 2.0
        and row["inference_service"] == "gc"
    )


def test_events_in_any_order_and_concurrently_end_in_one_row_per_image(
    store: InferenceStore,
) -> None:
    """Request and response events of 40 inferences of 3 images each, every event delivered
    twice (at-least-once delivery), shuffled and written from 8 threads at once."""
    inferences = [f"c-{i}" for i in range(40)]
    calls = []
    for n, inference in enumerate(inferences):
        meta = EventMeta(inference, T0 + timedelta(seconds=n), inference_service="gc")
        request = [_features(float(n)), _features(float(n)), {"feature_error": "not_an_image"}]
        response = [("glass", 0.9, None), ("paper", 0.5, None), ("trash", 0.4, None)]
        calls += 2 * [(store.record_request, meta, request)]
        calls += 2 * [(store.record_response, meta, response)]
    random.Random(0).shuffle(calls)
    with ThreadPoolExecutor(max_workers=8) as pool:
        for written in pool.map(lambda call: call[0](call[1], call[2]), calls):
            assert written == 3
    rows = store.load_window()
    assert store.count() == len(rows) == 3 * len(inferences)
    assert not rows.duplicated(["inference_id", "item"]).any()
    assert rows["request_time"].notna().all() and rows["response_time"].notna().all()
    assert rows["inference_service"].eq("gc").all()
    by_item = rows.set_index(["inference_id", "item"]).sort_index()
    assert list(by_item.loc["c-7", "prediction"]) == ["glass", "paper", "trash"]
    assert list(by_item.loc["c-7", "brightness"].iloc[:2]) == [7.0, 7.0]
    assert by_item.loc[("c-7", 2), "feature_error"] == "not_an_image"
    assert pd.Timestamp(by_item.loc[("c-7", 0), "ts"]) == pd.Timestamp(T0 + timedelta(seconds=7))


def test_window_bounds_limit_and_labelled_only(store: InferenceStore) -> None:
    for minute in range(10):
        meta = EventMeta(f"w-{minute}", T0 + timedelta(minutes=minute))
        store.record_request(meta, [_features(float(minute))])
        store.record_response(meta, [("paper", 0.5, None)])
    store.record_feedback("w-8", 0, "paper", T0)
    window = store.load_window(since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=9))
    assert sorted(window["brightness"]) == [5.0, 6.0, 7.0, 8.0]
    newest = store.load_window(limit=3, columns=["inference_id", "ts"])
    assert list(newest.columns) == ["inference_id", "ts"]
    assert sorted(newest["inference_id"]) == ["w-7", "w-8", "w-9"]
    assert list(store.load_window(labelled_only=True)["inference_id"]) == ["w-8"]


def test_bulk_insert(store: InferenceStore) -> None:
    rows = pd.DataFrame(
        {
            "inference_id": [f"b{i}" for i in range(50)],
            "item": 0,
            "ts": [T0 + timedelta(seconds=i) for i in range(50)],
            "prediction": "glass",
            **{name: 0.5 for name in FEATURE_COLUMNS},
        }
    )
    assert store.insert_rows(rows) == 50
    assert store.count() == 50
    with pytest.raises(ValueError, match="unknown columns"):
        store.insert_rows(rows.assign(bogus=1))


def test_urls_and_errors(tmp_path: Path) -> None:
    assert normalise_url("work/x.db") == "sqlite:///work/x.db"
    assert normalise_url("postgres://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert (
        redact("postgresql+psycopg://u:secret@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    )
    with pytest.raises(StoreError, match="cannot open"):
        InferenceStore("notadialect://x")
    with pytest.raises(StoreError, match=r"u:\*\*\*@127.0.0.1"):
        InferenceStore("postgresql://u:secret@127.0.0.1:1/db")
