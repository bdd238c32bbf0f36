"""Storage of logged inferences: a row per image, SQLite by default, PostgreSQL by URL (SQLAlchemy).

A row is keyed by ``(inference_id, item)``: the CloudEvent id shared by a request and its
response, and the image's position in the batch. The request event fills the features, the
response event the prediction, label feedback the true label; they may arrive in any order and
each only fills its own columns, so the three meet in one row whatever the order.

Every label ever given is kept in a second table, ``label_history`` (who gave it, when, and the
selection it came with); the row of ``inference_log`` holds the latest one, which is what
accuracy counts, and ``label_selection``: how ``garbage review`` first picked the image
(``random`` or ``uncertain``; empty for a label given without a review), so that accuracy on the
random picks stays unbiased.

Each row points to its image in the image store (:mod:`monitoring.images`): ``image_sha256``
(the SHA-256 of the stored bytes; empty when the image was unreadable or could not be stored)
and ``image_dhash`` (its difference hash, for near duplicates). A third table, ``images``, has a
row per stored image (size, first and last seen by the collector's clock, ``deleted_at`` once
retention deleted it), so retention needs no listing of the bucket; a deleted image's rows in
``inference_log`` keep everything, ``image_sha256`` included.

Migration: opening a store with ``create=True`` (the collector does) creates the tables that are
missing (``label_history``, ``images``) and adds the columns that an older database lacks
(``inference_log``'s ``image_sha256``, ``image_dhash``, ``label_selection`` and
``label_history``'s ``selection``: ``ALTER TABLE ... ADD COLUMN``, nullable, on SQLite and
PostgreSQL; two processes opening it at once are fine) with their index; old rows keep their
values and get no image (and no selection). A store opened with ``create=False`` (the drift
job, the review) is left as it is and reads only the columns it names; a column it lacks reads
as None. Such a reader of an SQLite file that does not exist is refused; nothing is created.

Values are checked before any SQL runs (:class:`InvalidRecordError`): text no longer than its
column (PostgreSQL refuses longer values, SQLite would store them), valid UTF-8 without NUL
characters (PostgreSQL refuses NUL), item numbers within the column's 32-bit range. A caller can
tell a client's mistake from a database failure (:class:`StoreError`) by the exception's type.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

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
    case,
    create_engine,
    event,
    exists,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, OperationalError, ProgrammingError, SQLAlchemyError

from garbage.core.names import SELECTIONS, Selection
from monitoring.defaults import DEFAULT_DB_URL
from monitoring.features import FEATURE_COLUMNS

_T = TypeVar("_T")

TABLE_NAME = "inference_log"
HISTORY_TABLE_NAME = "label_history"
IMAGES_TABLE_NAME = "images"
KEY = ("inference_id", "item")
#: Longest text of each column, in characters: the one definition of what the store takes.
FIELD_LENGTHS: dict[str, int] = {
    "inference_id": 200,
    "source": 500,
    "inference_service": 200,
    "namespace": 200,
    "component": 50,
    "endpoint": 50,
    "model_id": 200,
    "feature_error": 200,
    "prediction": 100,
    "true_label": 100,
    "labeller": 100,
    "image_sha256": 64,
    "image_dhash": 16,
    "label_selection": 20,
}
#: ``item`` is an ``INTEGER`` column: 32 bits on PostgreSQL.
MAX_ITEM = 2**31 - 1
#: ``insert`` of each supported dialect: both have ``INSERT ... ON CONFLICT DO UPDATE``.
UPSERT_DIALECTS: dict[str, Callable[[Table], Any]] = {
    "sqlite": sqlite.insert,
    "postgresql": postgresql.insert,
}


class StoreError(RuntimeError):
    """The database cannot be reached, created or written; the message names the URL.

    The message may hold the database's own words (an SQL statement, its parameters): log it,
    never send it to a client.
    """


class InvalidRecordError(ValueError):
    """A value the store cannot take (too long, not text, out of range); nothing was written.

    The message is ``"<field> <problem>"``: it names the field and the limit and quotes no part
    of the value.

    Attributes:
        field: The column (a key of :data:`FIELD_LENGTHS`, ``item`` or ``time``).
        problem: What is wrong, e.g. ``"is 300 characters long; at most 200"``.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


def check_text(field: str, value: object, *, required: bool = False) -> None:
    """Check that ``value`` fits the column ``field`` (:data:`FIELD_LENGTHS`).

    Args:
        field: A key of :data:`FIELD_LENGTHS`.
        value: The value to store; None and ``""`` stand for no value.
        required: Refuse an empty value.

    Raises:
        InvalidRecordError: Not a string, empty when required, longer than the column, not
            encodable as UTF-8 (a lone surrogate) or holding a NUL character.
    """
    if value is None or value == "":
        if required:
            raise InvalidRecordError(field, "is empty; it is required")
        return
    if not isinstance(value, str):
        raise InvalidRecordError(field, f"must be text, got {type(value).__name__}")
    limit = FIELD_LENGTHS[field]
    if len(value) > limit:
        raise InvalidRecordError(field, f"is {len(value)} characters long; at most {limit}")
    if "\x00" in value:
        raise InvalidRecordError(field, "contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRecordError(field, "is not valid Unicode (a lone surrogate)") from e


def check_item(item: object) -> None:
    """Check an image position: an integer from 0 to :data:`MAX_ITEM`.

    Raises:
        InvalidRecordError: Not an integer or out of range.
    """
    if not isinstance(item, int) or isinstance(item, bool):
        raise InvalidRecordError("item", f"must be an integer, got {type(item).__name__}")
    if not 0 <= item <= MAX_ITEM:
        raise InvalidRecordError("item", f"is out of range; it must be 0..{MAX_ITEM}")


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

    def check(self) -> None:
        """Check every field against its column before anything is written.

        Raises:
            InvalidRecordError: A field is too long, not text, or the time is not a datetime.
        """
        check_text("inference_id", self.inference_id, required=True)
        for name, value in self.columns().items():
            check_text(name, value)
        if not isinstance(self.time, datetime):
            raise InvalidRecordError("time", f"must be a datetime, got {type(self.time).__name__}")


@dataclass(frozen=True)
class PruneCandidate:
    """An image that retention may delete, and why.

    Attributes:
        sha256: Its hash.
        size_bytes: Its size.
        last_seen: When the collector last saw it (naive UTC).
        labelled: Whether a row pointing at it has a true label.
        reason: ``age`` (last seen too long ago) or ``size`` (the store is over its size).
    """

    sha256: str
    size_bytes: int
    last_seen: datetime
    labelled: bool
    reason: str


def _table(metadata: MetaData) -> Table:
    return Table(
        TABLE_NAME,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("inference_id", _text("inference_id"), nullable=False),
        Column("item", Integer, nullable=False),
        Column("ts", DateTime, nullable=False),
        Column("request_time", DateTime),
        Column("response_time", DateTime),
        *[
            Column(name, _text(name))
            for name in (
                "source",
                "inference_service",
                "namespace",
                "component",
                "endpoint",
                "model_id",
            )
        ],
        *[Column(name, Float) for name in FEATURE_COLUMNS],
        Column("feature_error", _text("feature_error")),
        Column("prediction", _text("prediction")),
        Column("score", Float),
        Column("probabilities", Text),
        Column("true_label", _text("true_label")),
        Column("label_time", DateTime),
        Column("label_selection", _text("label_selection")),
        Column("image_sha256", _text("image_sha256")),
        Column("image_dhash", _text("image_dhash")),
        UniqueConstraint(*KEY, name="uq_inference_item"),
        Index("ix_inference_log_ts", "ts"),
        Index("ix_inference_log_image_sha256", "image_sha256"),
    )


def _images_table(metadata: MetaData) -> Table:
    """One row per image in the image store: its size, when the collector saw it, its deletion."""
    return Table(
        IMAGES_TABLE_NAME,
        metadata,
        Column("sha256", _text("image_sha256"), primary_key=True),
        Column("size_bytes", Integer, nullable=False),
        Column("first_seen", DateTime, nullable=False),
        Column("last_seen", DateTime, nullable=False),
        Column("deleted_at", DateTime),
        Index("ix_images_last_seen", "last_seen"),
    )


def _history_table(metadata: MetaData) -> Table:
    """Every label given: who gave it (the credential's name), when, and its review selection."""
    return Table(
        HISTORY_TABLE_NAME,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("inference_id", _text("inference_id"), nullable=False),
        Column("item", Integer, nullable=False),
        Column("label", _text("true_label"), nullable=False),
        Column("labeller", _text("labeller"), nullable=False),
        Column("label_time", DateTime, nullable=False),
        Column("selection", _text("label_selection")),
        Index("ix_label_history_key", *KEY),
    )


def _text(field: str) -> String:
    return String(FIELD_LENGTHS[field])


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
        """Connect to ``url`` and, when ``create``, create the tables that do not exist.

        Without ``create`` (a reader), an SQLite file must exist already: nothing is created.

        Raises:
            StoreError: Bad URL, a database other than SQLite or PostgreSQL, unreachable server,
                a folder that cannot be created, or (without ``create``) no SQLite file.
        """
        self.url = normalise_url(url)
        self.metadata = MetaData()
        self.table = _table(self.metadata)
        self.history = _history_table(self.metadata)
        self.images = _images_table(self.metadata)
        self._absent: dict[str, set[str]] = {}  # per table: the columns the database lacks
        try:
            if self.url.startswith("sqlite:///"):
                path = self.url[len("sqlite:///") :]
                if path and path != ":memory:":
                    if not create and not Path(path).is_file():
                        raise StoreError(
                            f"no inference store at {path}: the collector creates it when it "
                            "first starts; check the path"
                        )
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
                self._add_missing_columns()
                self._absent = {self.table.name: set(), self.history.name: set()}
        except (ArgumentError, SQLAlchemyError, OSError, ImportError) as e:
            raise StoreError(f"cannot open the inference store at {redact(self.url)}: {e}") from e

    def _add_missing_columns(self) -> None:
        """Add the columns of the store's tables that an older database lacks, and their indexes.

        Only nullable columns without a default are added (the ones added since a table first
        shipped), so old rows need no value. PostgreSQL skips a column that exists
        (``IF NOT EXISTS``); on SQLite a column that another process added meanwhile is seen
        when the table is inspected again.

        Raises:
            StoreError: A column that ALTER TABLE cannot add to an existing table.
            SQLAlchemyError: The database refused the change.
        """
        for table in (self.table, self.history):
            self._add_columns(table)

    def _add_columns(self, table: Table) -> None:
        """Add ``table``'s columns that the database's table lacks (see _add_missing_columns)."""
        present = {c["name"] for c in inspect(self.engine).get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in present]
        if not missing:
            return
        dialect = self.engine.dialect
        quote = dialect.identifier_preparer.quote
        if_missing = "IF NOT EXISTS " if dialect.name == "postgresql" else ""
        for column in missing:
            if not column.nullable or column.server_default is not None:
                raise StoreError(
                    f"{table.name}.{column.name} cannot be added to an existing table by "
                    "ALTER TABLE alone; migrate the database by hand"
                )
            kind = column.type.compile(dialect=dialect)
            name = quote(column.name)
            statement = f"ALTER TABLE {quote(table.name)} ADD COLUMN {if_missing}{name} {kind}"
            try:
                with self.engine.begin() as conn:
                    conn.execute(text(statement))
            except (OperationalError, ProgrammingError):
                added = {c["name"] for c in inspect(self.engine).get_columns(table.name)}
                if column.name not in added:
                    raise
        for index in table.indexes:
            try:
                with self.engine.begin() as conn:
                    index.create(conn, checkfirst=True)
            except (OperationalError, ProgrammingError):
                names = {i["name"] for i in inspect(self.engine).get_indexes(table.name)}
                if index.name not in names:
                    raise

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
        except (SQLAlchemyError, OverflowError, UnicodeError) as e:
            # The checks before each write should make the last two impossible; should one slip
            # through, it is still a failed write, not a crash.
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
            items: Per image, a mapping of feature columns, or ``{"feature_error": reason}``;
                with ``image_sha256`` and ``image_dhash`` where the image was stored.

        Returns:
            The number of rows written.

        Raises:
            InvalidRecordError: A value does not fit its column (nothing is written).
            StoreError: The database failed.
        """
        meta.check()
        for values in items:
            for name in ("feature_error", "image_sha256", "image_dhash"):
                check_text(name, values.get(name))

        def work(conn: Connection) -> int:
            for index, values in enumerate(items):
                row = {**meta.columns(), "request_time": meta.time, **values}
                self._upsert(conn, meta, index, row)
            return len(items)

        return self._transaction(work)

    def record_images(self, sizes: Mapping[str, int], seen: datetime) -> int:
        """Record that the collector saw these images at ``seen``, before their bytes are written.

        A new image gets a row (first and last seen ``seen``); a known one its ``last_seen``
        moved and any ``deleted_at`` cleared (it is stored again). Recording first means an
        image in the store always has a row, so retention finds it, even when the write of the
        event's rows fails afterwards.

        Args:
            sizes: ``{sha256: size in bytes}``.
            seen: The collector's clock (naive UTC), never the sender's event time.

        Returns:
            The number of images recorded.

        Raises:
            InvalidRecordError: A hash or size that does not fit (nothing is written).
            StoreError: The database failed.
        """
        for sha256, size in sizes.items():
            check_text("image_sha256", sha256, required=True)
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_ITEM:
                raise InvalidRecordError("size_bytes", f"must be an integer 0..{MAX_ITEM}")
        if not sizes:
            return 0
        i = self.images

        def work(conn: Connection) -> int:
            statement = UPSERT_DIALECTS[conn.dialect.name](i).values(
                [
                    {
                        "sha256": sha256,
                        "size_bytes": sizes[sha256],
                        "first_seen": seen,
                        "last_seen": seen,
                        "deleted_at": None,
                    }
                    for sha256 in sorted(sizes)  # one order: concurrent upserts cannot deadlock
                ]
            )
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["sha256"],
                    set_={
                        "last_seen": statement.excluded.last_seen,
                        "size_bytes": statement.excluded.size_bytes,
                        "deleted_at": None,
                    },
                )
            )
            return len(sizes)

        return self._transaction(work)

    def _labelled(self) -> Any:
        """True where a row of ``inference_log`` that points at the image has a true label."""
        t, i = self.table, self.images
        return exists().where(t.c.image_sha256 == i.c.sha256, t.c.true_label.is_not(None))

    def images_to_prune(
        self, older_than: datetime | None, max_bytes: int | None, *, limit: int = 200
    ) -> list[PruneCandidate]:
        """The next images retention deletes, in the order it deletes them; at most ``limit``.

        First the unlabelled images last seen before ``older_than``, oldest first; when there
        are none (left), those that bring the stored total down to ``max_bytes``: unlabelled
        before labelled, each least recently seen first.

        Args:
            older_than: The age limit (naive UTC); None for none.
            max_bytes: The size limit; None for none.
            limit: Most candidates returned.

        Raises:
            StoreError: The database cannot be read.
        """
        i = self.images
        live = i.c.deleted_at.is_(None)
        labelled = self._labelled()
        columns = (i.c.sha256, i.c.size_bytes, i.c.last_seen)

        def work(conn: Connection) -> list[PruneCandidate]:
            if older_than is not None:
                old = (
                    select(*columns)
                    .where(live, i.c.last_seen < older_than, ~labelled)
                    .order_by(i.c.last_seen, i.c.sha256)
                    .limit(limit)
                )
                rows: list[Any] = list(conn.execute(old))
                found = [
                    PruneCandidate(str(sha256), int(size), seen, False, "age")
                    for sha256, size, seen in rows
                ]
                if found:
                    return found
            if max_bytes is None:
                return []
            total: Any = conn.execute(
                select(func.coalesce(func.sum(i.c.size_bytes), 0)).where(live)
            ).scalar_one()
            excess = int(total) - max_bytes
            chosen: list[PruneCandidate] = []
            if excess <= 0:
                return chosen
            is_labelled = case((labelled, 1), else_=0)
            oldest = (
                select(*columns, is_labelled)
                .where(live)
                .order_by(is_labelled, i.c.last_seen, i.c.sha256)
                .limit(limit)
            )
            ordered: list[Any] = list(conn.execute(oldest))
            for sha256, size, seen, flag in ordered:
                chosen.append(PruneCandidate(str(sha256), int(size), seen, bool(flag), "size"))
                excess -= int(size)
                if excess <= 0:
                    break
            return chosen

        return self._read(work)

    def claim_images_for_deletion(
        self, candidates: Sequence[PruneCandidate], when: datetime
    ) -> list[PruneCandidate]:
        """Mark candidates deleted at ``when``, unless they were seen again since they were chosen.

        An age candidate that got a label meanwhile is skipped too. Returns the ones marked: the
        caller deletes their bytes next (and :meth:`release_images` the ones it could not).

        Raises:
            StoreError: The database failed.
        """
        i = self.images
        claimed: list[PruneCandidate] = []

        def work(conn: Connection) -> int:
            claimed.clear()
            for candidate in candidates:
                conditions = [
                    i.c.sha256 == candidate.sha256,
                    i.c.deleted_at.is_(None),
                    i.c.last_seen <= candidate.last_seen,
                ]
                if candidate.reason == "age":
                    conditions.append(~self._labelled())
                marked = conn.execute(update(i).where(*conditions).values(deleted_at=when))
                if marked.rowcount:
                    claimed.append(candidate)
            return len(claimed)

        self._transaction(work)
        return claimed

    def release_images(self, sha256s: Sequence[str]) -> int:
        """Clear ``deleted_at`` of images whose deletion failed (they are still stored).

        Raises:
            StoreError: The database failed.
        """
        i = self.images
        if not sha256s:
            return 0
        statement = update(i).where(i.c.sha256.in_(list(sha256s))).values(deleted_at=None)
        return self._transaction(lambda conn: conn.execute(statement).rowcount)

    def image_usage(self) -> tuple[int, int]:
        """``(images, bytes)`` stored: the rows of ``images`` not deleted.

        Raises:
            StoreError: The database cannot be read.
        """
        i = self.images
        query = select(func.count(), func.coalesce(func.sum(i.c.size_bytes), 0)).where(
            i.c.deleted_at.is_(None)
        )

        def work(conn: Connection) -> tuple[int, int]:
            row: Any = conn.execute(query).one()
            return int(row[0]), int(row[1] or 0)

        return self._read(work)

    def image_record(self, sha256: str) -> dict[str, Any] | None:
        """The ``images`` row of one image, or None when the collector never saw it.

        Returns:
            ``{"sha256", "size_bytes", "first_seen", "last_seen", "deleted_at"}`` or None.

        Raises:
            InvalidRecordError: The hash does not fit its column.
            StoreError: The database cannot be read.
        """
        check_text("image_sha256", sha256, required=True)
        i = self.images
        query = select(i).where(i.c.sha256 == sha256)

        def work(conn: Connection) -> dict[str, Any] | None:
            row = conn.execute(query).first()
            return dict(row._mapping) if row is not None else None

        return self._read(work)

    def record_response(
        self,
        meta: EventMeta,
        items: Sequence[tuple[str | None, float | None, Mapping[str, float] | None]],
    ) -> int:
        """Store the prediction ``(label, score, probabilities)`` of each image of a response.

        Raises:
            InvalidRecordError: A value does not fit its column (nothing is written).
            StoreError: The database failed.
        """
        meta.check()
        for label, _, _ in items:
            check_text("prediction", label)

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

    def record_feedback(
        self,
        inference_id: str,
        item: int,
        label: str,
        when: datetime,
        labeller: str = "",
        selection: Selection | None = None,
    ) -> bool:
        """Attach a true label to a logged prediction and add it to the label history.

        The latest label wins: the row keeps the label with the latest ``when`` (a late write
        of an older label goes to the history only), and every label stays in the history with
        its ``selection``. The row keeps the first selection a label brought: an image drawn as
        a random pick stays one, so the random picks remain a uniform sample of the traffic.

        Args:
            inference_id: The inference's id (its CloudEvent ``ce-id``).
            item: The image's position in the request.
            label: The true class.
            when: When the label was given (naive UTC).
            labeller: Who gave it (the name of the credential that sent it).
            selection: How ``garbage review`` picked the image (one of
                :data:`garbage.core.names.SELECTIONS`); None: not known (the row keeps any it has).

        Returns:
            False when no row exists for ``(inference_id, item)`` (nothing is written then).

        Raises:
            InvalidRecordError: A value does not fit its column (nothing is written).
            StoreError: The database failed.
        """
        check_text("inference_id", inference_id, required=True)
        check_item(item)
        check_text("true_label", label, required=True)
        check_text("labeller", labeller)
        if selection is not None and selection not in SELECTIONS:
            raise InvalidRecordError("label_selection", f"must be one of {SELECTIONS}")
        t, h = self.table, self.history

        def work(conn: Connection) -> int:
            key = (t.c.inference_id == inference_id, t.c.item == item)
            if conn.execute(select(func.count()).select_from(t).where(*key)).scalar_one() == 0:
                return 0
            conn.execute(
                insert(h).values(
                    inference_id=inference_id,
                    item=item,
                    label=label,
                    labeller=labeller,
                    label_time=when,
                    selection=selection,
                )
            )
            conn.execute(
                update(t)
                .where(*key, or_(t.c.label_time.is_(None), t.c.label_time <= when))
                .values(true_label=label, label_time=when)
            )
            if selection is not None:
                first = t.c.label_selection.is_(None)
                conn.execute(update(t).where(*key, first).values(label_selection=selection))
            return 1

        return self._transaction(work) > 0

    def items_logged(self, inference_id: str) -> int:
        """How many images of ``inference_id`` are logged (0 when it is unknown).

        Raises:
            InvalidRecordError: The id does not fit its column.
            StoreError: The database cannot be read.
        """
        check_text("inference_id", inference_id, required=True)
        t = self.table
        query = select(func.count()).select_from(t).where(t.c.inference_id == inference_id)
        return self._read(lambda conn: int(conn.execute(query).scalar_one()))

    def label_history(self, inference_id: str, item: int = 0) -> list[dict[str, Any]]:
        """Every label given to ``(inference_id, item)``, oldest first.

        Returns:
            ``[{"label", "labeller", "label_time", "selection"}, ...]``.

        Raises:
            InvalidRecordError: The id or item does not fit its column.
            StoreError: The database cannot be read.
        """
        check_text("inference_id", inference_id, required=True)
        check_item(item)
        h = self.history
        # A reader of a database the collector has not migrated yet gets no selection.
        wanted = ("label", "labeller", "label_time", "selection")
        present = [h.c[name] for name in wanted if name not in self._absent_columns(h)]
        query = (
            select(*present)
            .where(h.c.inference_id == inference_id, h.c.item == item)
            .order_by(h.c.label_time, h.c.id)
        )
        rows = self._read(lambda conn: [dict(row._mapping) for row in conn.execute(query)])
        return [{name: row.get(name) for name in wanted} for row in rows]

    def _read(self, work: Callable[[Connection], _T]) -> _T:
        try:
            with self.engine.connect() as conn:
                return work(conn)
        except SQLAlchemyError as e:
            raise StoreError(f"cannot read from {redact(self.url)}: {e}") from e

    def count(self) -> int:
        """Rows in the log.

        Raises:
            StoreError: The database cannot be read.
        """
        query = select(func.count()).select_from(self.table)
        return self._read(lambda conn: int(conn.execute(query).scalar_one()))

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

        Returns:
            The rows; a column an older database lacks (a store opened with ``create=False``
            before the collector added it) is all None.

        Raises:
            StoreError: The database cannot be read.
        """
        t = self.table
        cols = [t.c[name] for name in columns] if columns else list(t.c)
        absent = [c.name for c in cols if c.name in self._absent_columns(t)]
        query = select(*[c for c in cols if c.name not in absent])
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
        for name in absent:
            frame[name] = None
        return frame[[c.name for c in cols]]

    def _absent_columns(self, table: Table) -> set[str]:
        """Columns of ``table`` this database lacks (looked up once per store and table)."""
        if table.name not in self._absent:
            try:
                present = {c["name"] for c in inspect(self.engine).get_columns(table.name)}
            except SQLAlchemyError as e:
                raise StoreError(f"cannot read from {redact(self.url)}: {e}") from e
            self._absent[table.name] = set(table.c.keys()) - present
        return self._absent[table.name]

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
