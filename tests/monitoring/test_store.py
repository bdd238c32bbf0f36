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
from monitoring.store import (
    EventMeta,
    InferenceStore,
    InvalidRecordError,
    StoreError,
    normalise_url,
    redact,
)

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
    # A reader of a store that does not exist is told so, and creates nothing.
    missing = tmp_path / "no" / "such.db"
    with pytest.raises(StoreError, match=r"no inference store at .*such\.db: the collector"):
        InferenceStore(str(missing), create=False)
    assert not missing.parent.exists()


def test_relabels_keep_their_history_and_the_latest_label_counts(store: InferenceStore) -> None:
    store.record_request(EventMeta("h-1", T0), [_features(1.0), _features(2.0)])
    store.record_response(EventMeta("h-1", T0), [("glass", 0.9, None), ("paper", 0.8, None)])
    assert store.record_feedback("h-1", 0, "metal", T0 + timedelta(minutes=1), "alice")
    assert store.record_feedback("h-1", 0, "glass", T0 + timedelta(minutes=3), "bob")
    # A label given earlier but written later joins the history without replacing the newer one.
    assert store.record_feedback("h-1", 0, "trash", T0 + timedelta(minutes=2), "carol")
    assert not store.record_feedback("h-1", 2, "glass", T0, "alice")  # no third image
    history = store.label_history("h-1", 0)
    assert [(h["label"], h["labeller"]) for h in history] == [
        ("metal", "alice"),
        ("trash", "carol"),
        ("glass", "bob"),
    ]
    assert pd.Timestamp(history[-1]["label_time"]) == pd.Timestamp(T0 + timedelta(minutes=3))
    assert store.label_history("h-1", 1) == [] and store.label_history("h-1", 2) == []
    [row] = store.load_window(labelled_only=True).to_dict("records")
    assert (row["item"], row["true_label"]) == (0, "glass")
    assert store.items_logged("h-1") == 2 and store.items_logged("nope") == 0


def test_a_label_keeps_how_the_review_picked_its_image(store: InferenceStore) -> None:
    store.record_request(EventMeta("s-1", T0), [_features(1.0), _features(2.0)])
    assert store.record_feedback("s-1", 0, "glass", T0, "alice", selection="random")
    assert store.record_feedback("s-1", 1, "paper", T0, "alice", selection="uncertain")
    # A correction given without a review (no selection) keeps how the image was picked, and so
    # does one from a later review: a random pick stays a random pick.
    assert store.record_feedback("s-1", 0, "metal", T0 + timedelta(minutes=1), "bob")
    assert store.record_feedback(
        "s-1", 0, "trash", T0 + timedelta(minutes=2), "carol", selection="uncertain"
    )
    rows = store.load_window(columns=["item", "true_label", "label_selection"]).sort_values("item")
    assert rows.to_dict("records") == [
        {"item": 0, "true_label": "trash", "label_selection": "random"},
        {"item": 1, "true_label": "paper", "label_selection": "uncertain"},
    ]
    history = store.label_history("s-1", 0)
    assert [(h["label"], h["labeller"], h["selection"]) for h in history] == [
        ("glass", "alice", "random"),
        ("metal", "bob", None),
        ("trash", "carol", "uncertain"),
    ]


@pytest.mark.parametrize(
    ("call", "field", "problem"),
    [
        (lambda s: s.record_request(EventMeta("i" * 201, T0), [{}]), "inference_id", "201 char"),
        (lambda s: s.record_request(EventMeta("", T0), [{}]), "inference_id", "empty"),
        (lambda s: s.record_request(EventMeta("a", T0, source="s" * 501), [{}]), "source", "501"),
        (
            lambda s: s.record_request(EventMeta("a", T0, component="c\x00"), [{}]),
            "component",
            "NUL",
        ),
        (lambda s: s.record_request(EventMeta("a\ud800", T0), [{}]), "inference_id", "Unicode"),
        (lambda s: s.record_request(EventMeta("a", "2026"), [{}]), "time", "datetime"),
        (
            lambda s: s.record_response(EventMeta("a", T0), [("l" * 101, 0.5, None)]),
            "prediction",
            "101",
        ),
        (lambda s: s.record_feedback("a", 2**31, "glass", T0), "item", "out of range"),
        (lambda s: s.record_feedback("a", -1, "glass", T0), "item", "out of range"),
        (lambda s: s.record_feedback("a", True, "glass", T0), "item", "integer"),
        (lambda s: s.record_feedback("a", 0, "g" * 101, T0), "true_label", "101"),
        (lambda s: s.record_feedback("a", 0, "glass", T0, "n" * 101), "labeller", "101"),
        (
            lambda s: s.record_feedback("a", 0, "glass", T0, selection="hard"),
            "label_selection",
            "one of",
        ),
    ],
)
def test_values_that_do_not_fit_are_refused_before_any_sql(
    store: InferenceStore, call, field: str, problem: str
) -> None:
    """PostgreSQL would refuse these with an error quoting the statement; SQLite stores them."""
    store.record_request(EventMeta("a", T0), [_features(1.0)])
    with pytest.raises(InvalidRecordError, match=problem) as caught:
        call(store)
    assert caught.value.field == field
    assert store.count() == 1 and store.label_history("a") == []


def test_a_store_created_before_the_label_history_gets_it_on_open(tmp_path: Path) -> None:
    """The migration-free path: the new table is created, the old rows and columns stay."""
    from sqlalchemy import MetaData, create_engine, inspect

    from monitoring.store import HISTORY_TABLE_NAME, IMAGES_TABLE_NAME, TABLE_NAME, _table

    path = tmp_path / "old.db"
    engine = create_engine(normalise_url(str(path)))
    _table(MetaData()).create(engine)  # what an older collector created
    engine.dispose()
    old = InferenceStore(str(path), create=False)
    old.record_request(EventMeta("old-1", T0), [_features(3.0)])
    old.close()
    assert inspect(InferenceStore(str(path), create=False).engine).get_table_names() == [TABLE_NAME]

    store = InferenceStore(str(path))
    assert set(inspect(store.engine).get_table_names()) == {
        TABLE_NAME,
        HISTORY_TABLE_NAME,
        IMAGES_TABLE_NAME,
    }
    assert store.record_feedback("old-1", 0, "paper", T0, "alice")
    assert store.label_history("old-1") == [
        {"label": "paper", "labeller": "alice", "label_time": T0, "selection": None}
    ]
    assert store.load_window()["brightness"].tolist() == [3.0]
    store.close()


def _old_label_history(metadata):
    """``label_history`` as collectors before ``selection`` created it."""
    from sqlalchemy import Index, MetaData, Table

    from monitoring.store import KEY, _history_table

    current = _history_table(MetaData())
    return Table(
        current.name,
        metadata,
        *[c._copy() for c in current.columns if c.name != "selection"],
        Index("ix_label_history_key", *KEY),
    )


def _old_inference_log(metadata):
    """``inference_log`` as collectors before the image store created it: no image columns (and
    no ``label_selection``, which came later)."""
    from sqlalchemy import Index, MetaData, Table, UniqueConstraint

    from monitoring.store import TABLE_NAME, _table

    current = _table(MetaData())
    return Table(
        TABLE_NAME,
        metadata,
        *[
            c._copy()
            for c in current.columns
            if not c.name.startswith("image_") and c.name != "label_selection"
        ],
        UniqueConstraint("inference_id", "item", name="uq_inference_item"),
        Index("ix_inference_log_ts", "ts"),
    )


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def test_an_old_store_without_the_image_columns_gets_them_on_open(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from sqlalchemy import MetaData, create_engine, inspect, text

    from monitoring.store import TABLE_NAME

    url = (
        str(tmp_path / "old.db") if backend == "sqlite" else request.getfixturevalue("postgres_url")
    )
    engine = create_engine(normalise_url(url))
    with engine.begin() as conn:
        for table in ("images", "label_history", TABLE_NAME):
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    old_tables = MetaData()
    _old_inference_log(old_tables)
    _old_label_history(old_tables)
    old_tables.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO {TABLE_NAME} (inference_id, item, ts, brightness) "
                "VALUES (:i, 0, :t, 3)"
            ),
            {"i": "old-1", "t": T0},
        )
        conn.execute(
            text(
                "INSERT INTO label_history (inference_id, item, label, labeller, label_time) "
                "VALUES (:i, 0, 'paper', 'alice', :t)"
            ),
            {"i": "old-1", "t": T0},
        )
    engine.dispose()

    # Before the collector migrates it, a reader (create=False) gets the new columns as None.
    reader = InferenceStore(url, create=False)
    wanted = ["inference_id", "true_label", "label_selection", "image_sha256"]
    assert reader.load_window(columns=wanted).to_dict("records") == [
        {"inference_id": "old-1", "true_label": None, "label_selection": None, "image_sha256": None}
    ]
    assert reader.label_history("old-1") == [
        {"label": "paper", "labeller": "alice", "label_time": T0, "selection": None}
    ]
    reader.close()

    stores = [InferenceStore(url), InferenceStore(url)]  # the second finds nothing to add
    store = stores[0]
    columns = {c["name"] for c in inspect(store.engine).get_columns(TABLE_NAME)}
    assert {"image_sha256", "image_dhash", "label_selection"} <= columns
    indexes = {i["name"] for i in inspect(store.engine).get_indexes(TABLE_NAME)}
    assert "ix_inference_log_image_sha256" in indexes
    [old] = store.load_window().to_dict("records")
    assert old["brightness"] == 3.0 and old["image_sha256"] is None
    sha = "ab" * 32
    store.record_images({sha: 10}, T0)
    store.record_request(
        EventMeta("new-1", T0), [{**_features(1.0), "image_sha256": sha, "image_dhash": "0" * 16}]
    )
    new = store.load_window().set_index("inference_id").loc["new-1"]
    assert new["image_sha256"] == sha and new["image_dhash"] == "0" * 16
    assert store.image_record(sha)["size_bytes"] == 10
    assert "selection" in {c["name"] for c in inspect(store.engine).get_columns("label_history")}
    later = T0 + timedelta(minutes=1)
    assert store.record_feedback("old-1", 0, "glass", later, "alice", selection="random")
    labelled = store.load_window(columns=["label_selection"], labelled_only=True)
    assert labelled["label_selection"].tolist() == ["random"]
    assert store.label_history("old-1") == [
        {"label": "paper", "labeller": "alice", "label_time": T0, "selection": None},
        {"label": "glass", "labeller": "alice", "label_time": later, "selection": "random"},
    ]
    for s in stores:
        s.close()


def test_image_columns_are_checked_before_any_sql(tmp_path: Path) -> None:
    store = InferenceStore(str(tmp_path / "log.db"))
    with pytest.raises(InvalidRecordError, match="image_sha256 is 65 characters"):
        store.record_request(EventMeta("a", T0), [{"image_sha256": "a" * 65}])
    with pytest.raises(InvalidRecordError, match="image_dhash is 17"):
        store.record_request(EventMeta("a", T0), [{"image_dhash": "a" * 17}])
    with pytest.raises(InvalidRecordError, match="size_bytes"):
        store.record_images({"ab" * 32: -1}, T0)
    assert store.count() == 0 and store.image_usage() == (0, 0)
    store.close()
