"""Storage of logged inferences: a row per image, SQLite by default, PostgreSQL by URL (SQLAlchemy).

A row is keyed by ``(inference_id, item)``: the CloudEvent id shared by a request and its
response, and the image's position in the batch. The request event fills the features, the
response event the prediction, label feedback the true label; they may arrive in any order and
each only fills its own columns, so the three meet in one row whatever the order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from monitoring.defaults import DEFAULT_DB_URL
from monitoring.features import FEATURE_COLUMNS

TABLE_NAME = "inference_log"
KEY = ("inference_id", "item")
#: ``insert`` of each supported dialect: both have ``INSERT ... ON CONFLICT DO UPDATE``.
UPSERT_DIALECTS: dict[str, Callable[[Table], Any]] = {
    "sqlite": sqlite.insert,
    "postgresql": postgresql.insert,
}


class StoreError(RuntimeError):
    """The database cannot be reached, created or written; the message names the URL."""


@dataclass(frozen=True)
class EventMeta:
    """Where an inference came from (the CloudEvent context)."""

    inference_id: str
    time: datetime
    source: str = ""
    inference_service: str = ""
    namespace: str = ""
    component: str = ""
    endpoint: str = ""
    model_id: str = ""

    def columns(self) -> dict[str, str]:
        """The context columns to store (empty values are not overwritten)."""
        values = {
            "source": self.source,
            "inference_service": self.inference_service,
            "namespace": self.namespace,
            "component": self.component,
            "endpoint": self.endpoint,
            "model_id": self.model_id,
        }
        return {k: v for k, v in values.items() if v}


def _table(metadata: MetaData) -> Table:
    return Table(
        TABLE_NAME,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("inference_id", String(200), nullable=False),
        Column("item", Integer, nullable=False),
        Column("ts", DateTime, nullable=False),
        Column("request_time", DateTime),
        Column("response_time", DateTime),
        Column("source", String(500)),
        Column("inference_service", String(200)),
        Column("namespace", String(200)),
        Column("component", String(50)),
        Column("endpoint", String(50)),
        Column("model_id", String(200)),
        *[Column(name, Float) for name in FEATURE_COLUMNS],
        Column("feature_error", String(200)),
        Column("prediction", String(100)),
        Column("score", Float),
        Column("probabilities", Text),
        Column("true_label", String(100)),
        Column("label_time", DateTime),
        UniqueConstraint(*KEY, name="uq_inference_item"),
        Index("ix_inference_log_ts", "ts"),
    )


def normalise_url(url: str) -> str:
    """Accept plain paths and ``postgresql://`` URLs; return a SQLAlchemy URL.

    A path (``work/monitoring/x.db``) becomes ``sqlite:///work/monitoring/x.db``;
    ``postgresql://`` and ``postgres://`` use the psycopg 3 driver.
    """
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser()}"
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages and logs)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{scheme}://{creds}@{host}"
    return url


class InferenceStore:
    """Read and write the inference log table."""

    def __init__(self, url: str = DEFAULT_DB_URL, *, create: bool = True) -> None:
        """Connect to ``url`` and, when ``create``, create the table if it does not exist.

        Raises:
            StoreError: Bad URL, a database other than SQLite or PostgreSQL, unreachable server
                or a folder that cannot be created.
        """
        self.url = normalise_url(url)
        self.metadata = MetaData()
        self.table = _table(self.metadata)
        try:
            if self.url.startswith("sqlite:///"):
                path = self.url[len("sqlite:///") :]
                if path and path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                self.engine: Engine = create_engine(
                    self.url, connect_args={"check_same_thread": False, "timeout": 30}
                )
                event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = create_engine(self.url, pool_pre_ping=True)
            if self.engine.dialect.name not in UPSERT_DIALECTS:
                raise StoreError(
                    f"the inference store at {redact(self.url)} is {self.engine.dialect.name}; "
                    "use SQLite (a path or sqlite:///...) or PostgreSQL (postgresql://...)"
                )
            if create:
                self.metadata.create_all(self.engine)
        except (ArgumentError, SQLAlchemyError, OSError, ImportError) as e:
            raise StoreError(f"cannot open the inference store at {redact(self.url)}: {e}") from e

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    def _transaction(self, work: Callable[[Connection], int]) -> int:
        """Run ``work(conn)`` in one transaction.

        Raises:
            StoreError: The database refused or failed the transaction.
        """
        try:
            with self.engine.begin() as conn:
                return work(conn)
        except SQLAlchemyError as e:
            raise StoreError(f"cannot write to {redact(self.url)}: {e}") from e

    def _upsert(
        self, conn: Connection, meta: EventMeta, item: int, values: Mapping[str, object]
    ) -> None:
        """Insert the row of ``(inference_id, item)``, or fill ``values`` into the existing one.

        One ``INSERT ... ON CONFLICT DO UPDATE`` (SQLite and PostgreSQL): concurrent events of
        one inference cannot both insert, and each sets only its own columns.
        """
        statement = UPSERT_DIALECTS[conn.dialect.name](self.table).values(
            inference_id=meta.inference_id, item=item, ts=meta.time, **values
        )
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=list(KEY),
                set_={name: statement.excluded[name] for name in values},
            )
        )

    def record_request(self, meta: EventMeta, items: Sequence[Mapping[str, object]]) -> int:
        """Store the features of each image of a request (``feature_error`` where unreadable).

        Args:
            meta: The event context.
            items: Per image, a mapping of feature columns, or ``{"feature_error": reason}``.

        Returns:
            The number of rows written.
        """

        def work(conn: Connection) -> int:
            for index, values in enumerate(items):
                row = {**meta.columns(), "request_time": meta.time, **values}
                self._upsert(conn, meta, index, row)
            return len(items)

        return self._transaction(work)

    def record_response(
        self,
        meta: EventMeta,
        items: Sequence[tuple[str | None, float | None, Mapping[str, float] | None]],
    ) -> int:
        """Store the prediction ``(label, score, probabilities)`` of each image of a response."""

        def work(conn: Connection) -> int:
            for index, (label, score, probabilities) in enumerate(items):
                row = {
                    **meta.columns(),
                    "response_time": meta.time,
                    "prediction": label,
                    "score": score,
                    "probabilities": json.dumps(probabilities) if probabilities else None,
                }
                self._upsert(conn, meta, index, row)
            return len(items)

        return self._transaction(work)

    def record_feedback(self, inference_id: str, item: int, label: str, when: datetime) -> bool:
        """Attach a true label to a logged prediction.

        Returns:
            False when no row exists for ``(inference_id, item)`` (nothing is written then).
        """
        t = self.table

        def work(conn: Connection) -> int:
            done = conn.execute(
                update(t)
                .where(t.c.inference_id == inference_id, t.c.item == item)
                .values(true_label=label, label_time=when)
            )
            return done.rowcount

        return self._transaction(work) > 0

    def count(self) -> int:
        """Rows in the log."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self.table)).scalar_one())

    def load_window(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        limit: int | None = None,
        columns: Iterable[str] | None = None,
        labelled_only: bool = False,
    ) -> pd.DataFrame:
        """Rows whose time lies in ``[since, until)``, newest first when ``limit`` cuts them.

        Args:
            since: Inclusive lower bound on ``ts`` (naive UTC); None for no bound.
            until: Exclusive upper bound; None for no bound.
            limit: Keep only the newest ``limit`` rows.
            columns: Columns to read (default: all).
            labelled_only: Only rows with a true label.

        Raises:
            StoreError: The database cannot be read.
        """
        t = self.table
        cols = [t.c[name] for name in columns] if columns else list(t.c)
        query = select(*cols)
        if since is not None:
            query = query.where(t.c.ts >= since)
        if until is not None:
            query = query.where(t.c.ts < until)
        if labelled_only:
            query = query.where(t.c.true_label.is_not(None))
        if limit is not None:
            query = query.order_by(t.c.ts.desc()).limit(limit)
        try:
            with self.engine.connect() as conn:
                result = conn.execute(query)
                frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
        except SQLAlchemyError as e:
            raise StoreError(f"cannot read from {redact(self.url)}: {e}") from e
        return frame

    def insert_rows(self, rows: pd.DataFrame, chunk: int = 5000) -> int:
        """Bulk-insert complete rows (benchmarks, back-fills); columns must be table columns."""
        known = set(self.table.c.keys())
        unknown = set(rows.columns) - known
        if unknown:
            raise ValueError(f"unknown columns for {TABLE_NAME}: {sorted(unknown)}")
        records = rows.astype(object).where(rows.notna(), None).to_dict("records")
        try:
            with self.engine.begin() as conn:
                for start in range(0, len(records), chunk):
                    conn.execute(insert(self.table), records[start : start + chunk])
        except SQLAlchemyError as e:
            raise StoreError(f"cannot write to {redact(self.url)}: {e}") from e
        return len(records)


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
