"""``garbage review`` (what to label next) and ``garbage labels`` (Label Studio in and out).

- ``garbage review --db URL --out tasks.json``: picks the logged images to label next
  (:mod:`monitoring.review`) and writes them as Label Studio tasks or CSV; every exported image
  goes into the review ledger, so the next review picks others.
- ``garbage labels config``: the labelling config of the Label Studio project.
- ``garbage labels import EXPORT.json --collector URL``: sends the labels of a Label Studio JSON
  export through the collector's ``/feedback`` (the one write path: the credential check, the
  labeller's name and the label history apply), in batches, and reports what was imported,
  skipped and failed.
- ``garbage labels history INFERENCE_ID --db URL``: every label one logged image was given (who,
  when, with which review selection), read from the store.

Re-importing the same export sets the same labels again: each row keeps its label, while the
label history gains one entry per label and import (``/feedback`` records every label it is
given, with the time it received it).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from garbage.core.names import TRASHNET_CLASSES
from monitoring.cli import _fail
from monitoring.defaults import DEFAULT_DB_URL

if TYPE_CHECKING:
    import httpx

    from monitoring.labelstudio import ImportedLabel

#: Where the collector is: ``--collector`` or this variable.
COLLECTOR_URL_ENV = "GARBAGE_COLLECTOR_URL"
DEFAULT_COLLECTOR_URL = "http://127.0.0.1:8082"
#: Labels per ``/feedback`` request (the collector takes at most 1000 and 1 MiB).
DEFAULT_BATCH_SIZE = 500
#: Failures listed in the report; the count is always complete.
SHOWN_FAILURES = 50
#: Attempts per batch when the collector is unreachable or answers 5xx / 429.
ATTEMPTS = 3

labels_app = typer.Typer(
    help="Labels: the Label Studio labelling config, import of its JSON exports, the history.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

CollectorOption = Annotated[
    str,
    typer.Option(
        "--collector",
        envvar=COLLECTOR_URL_ENV,
        help="The collector's base URL (its /feedback and /images).",
    ),
]
DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="GARBAGE_MONITORING_DB",
        help="The collector's store: SQLAlchemy URL (postgresql://...) or SQLite path.",
    ),
]
ClassesOption = Annotated[
    str | None,
    typer.Option(
        "--classes",
        help="The model's classes, comma-separated, in its order (default: TrashNet's).",
    ),
]


class OutputFormat(StrEnum):
    """What ``garbage review`` writes."""

    labelstudio = "labelstudio"
    csv = "csv"


class Strategy(StrEnum):
    """How ``garbage review`` measures uncertainty."""

    margin = "margin"
    entropy = "entropy"


def _classes(text: str | None) -> list[str]:
    if text is None:
        return list(TRASHNET_CLASSES)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise typer.BadParameter("give at least one class name", param_hint="--classes")
    return names


class CollectorTokenError(ValueError):
    """No usable credential to send to the collector; the message says how to give one."""


def client_token(environ: Mapping[str, str], token_file: Path | None) -> str:
    """The bearer token to send: from ``--token-file``, else ``$GARBAGE_COLLECTOR_TOKEN``.

    Both hold what the collector takes (``name:token`` or a bare token), here exactly one
    entry; only the token is sent (the collector records the name it knows it by).

    Raises:
        CollectorTokenError: Neither is set, the file cannot be read, or it holds no entry or
            more than one.
    """
    from monitoring.collector import TOKEN_ENV

    if token_file is not None:
        try:
            text, source = token_file.read_text(encoding="utf-8"), str(token_file)
        except (OSError, UnicodeDecodeError) as e:
            raise CollectorTokenError(
                f"cannot read the token file {token_file}: {e.__class__.__name__}"
            ) from e
    else:
        text, source = environ.get(TOKEN_ENV, ""), f"${TOKEN_ENV}"
    entries = [
        line.strip()
        for line in text.replace(",", "\n").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    if len(entries) != 1:
        found = "no entry" if not entries else f"{len(entries)} entries"
        raise CollectorTokenError(
            f"{source} holds {found}; writing labels needs one credential: set {TOKEN_ENV}="
            "name:token (or a bare token) or pass --token-file with one such line"
        )
    _, _, token = entries[0].rpartition(":")
    if not token.strip():
        raise CollectorTokenError(f"the entry in {source} has no token after ':'")
    return token.strip()


class CollectorRefusedError(RuntimeError):
    """The collector refused the credential (401/403): nothing more is sent."""


@dataclass
class SendResult:
    """What the collector made of the labels sent.

    Attributes:
        imported: Labels the collector stored.
        failed: ``{"task", "inference_id", "item", "reason"}`` of each label it did not store.
        labeller: The name the collector recorded the labels under (the credential's).
    """

    imported: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    labeller: str | None = None


def _batches(items: Sequence[ImportedLabel], size: int) -> Iterator[Sequence[ImportedLabel]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return str(body)[:200]


def send_labels(
    labels: Sequence[ImportedLabel],
    collector: str,
    token: str,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    client: httpx.Client | None = None,
    attempts: int = ATTEMPTS,
    backoff: float = 0.5,
) -> SendResult:
    """Send labels to the collector's ``/feedback``, ``batch_size`` per request.

    A batch the collector refuses as a whole with 422 (a label it does not know, an item out of
    range) or 413 is sent again label by label, so each failure gets its own reason. A connection
    error, 429 or 5xx is retried ``attempts`` times with backoff; after that the rest of the
    labels count as failed, with the reason.

    Args:
        labels: What :func:`monitoring.labelstudio.parse_export` found.
        collector: The collector's base URL.
        token: The bearer token (:func:`client_token`).
        batch_size: Labels per request (1 to 1000).
        client: An HTTP client to use (default: a new one).
        attempts: Tries per request on a connection error, 429 or 5xx.
        backoff: Seconds before the first retry, doubling.

    Raises:
        CollectorRefusedError: 401 or 403: the credential is missing, malformed or unknown.
        ValueError: ``batch_size`` out of range.
    """
    import httpx

    if not 1 <= batch_size <= 1000:
        raise ValueError(f"batch_size must be 1 to 1000, got {batch_size}")
    url = collector.rstrip("/") + "/feedback"
    headers = {"Authorization": f"Bearer {token}"}
    result = SendResult()
    own = client is None
    http = client or httpx.Client(timeout=30.0)

    def fail(batch: Sequence[ImportedLabel], reason: str) -> None:
        for label in batch:
            result.failed.append(
                {
                    "task": label.task_id,
                    "inference_id": label.inference_id,
                    "item": label.item,
                    "reason": reason,
                }
            )

    def post(batch: Sequence[ImportedLabel]) -> httpx.Response | str:
        """The answer, or why there is none after every attempt."""
        body = [label.feedback() for label in batch]
        problem = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                response = http.post(url, json=body, headers=headers)
            except httpx.HTTPError as e:
                problem = f"the collector at {collector} cannot be reached: {e.__class__.__name__}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                problem = f"the collector answered {response.status_code}: {_detail(response)}"
                continue
            return response
        return problem

    def send(batch: Sequence[ImportedLabel]) -> bool:
        """Send one batch; False when the collector is unavailable (stop sending)."""
        answer = post(batch)
        if isinstance(answer, str):
            fail(batch, answer)
            return False
        status = answer.status_code
        if status in (401, 403):
            raise CollectorRefusedError(
                f"the collector refused the credential ({status}: {_detail(answer)})"
            )
        if status in (413, 422) and len(batch) > 1:
            for position, label in enumerate(batch):  # one by one: a reason for each
                if not send([label]):
                    fail(batch[position + 1 :], "not sent: the collector was unavailable")
                    return False
            return True
        if status == 200:
            body = answer.json()
            result.labeller = body.get("labeller", result.labeller)
            for label, outcome in zip(batch, body.get("results", []), strict=False):
                if outcome.get("matched"):
                    result.imported += 1
                elif outcome.get("logged_items"):
                    fail(
                        [label],
                        f"inference {label.inference_id} logged {outcome['logged_items']} "
                        f"images; item {label.item} is not one of them",
                    )
                else:
                    fail([label], "no logged prediction with this inference_id and item")
            return True
        if status == 404:
            fail(batch, "no logged prediction with this inference_id and item")
        else:
            fail(batch, f"the collector answered {status}: {_detail(answer)}")
        return True

    try:
        pending = list(_batches(labels, batch_size))
        for number, batch in enumerate(pending):
            if not send(batch):
                for rest in pending[number + 1 :]:
                    fail(rest, "not sent: the collector was unavailable")
                break
    finally:
        if own:
            http.close()
    return result


@labels_app.command("config")
def labels_config(
    classes: ClassesOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write it here instead of stdout.")
    ] = None,
) -> None:
    """Print the labelling config (XML) for the Label Studio project of `garbage review` tasks."""
    from monitoring.labelstudio import labelling_config

    try:
        text = labelling_config(_classes(classes))
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--classes") from e
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")


@labels_app.command("import")
def labels_import(
    export: Annotated[
        Path,
        typer.Argument(
            help="A Label Studio JSON export of `garbage review` tasks.", dir_okay=False
        ),
    ],
    collector: CollectorOption = DEFAULT_COLLECTOR_URL,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            dir_okay=False,
            help="File with the credential (name:token or the token); default: "
            "$GARBAGE_COLLECTOR_TOKEN.",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=1000, help="Labels per request.")
    ] = DEFAULT_BATCH_SIZE,
    classes: ClassesOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Read the export and report; send nothing.")
    ] = False,
) -> None:
    """Import the labels of a Label Studio export through the collector's /feedback.

    Each task gives the choice of its latest annotation that was not cancelled (skipped);
    tasks without one are counted as skipped. The collector records every label with the name
    of the credential that sent it. Prints a JSON report; exit 1 when any label failed.
    """
    from monitoring.labelstudio import LabelStudioFormatError, load_export

    try:
        parsed = load_export(export, _classes(classes), strict=False)
    except LabelStudioFormatError as e:
        raise _fail(f"error: {e}", code=2) from e
    failures: list[dict[str, Any]] = [
        {"task": problem.task, "reason": problem.reason} for problem in parsed.invalid
    ]
    sent = SendResult()
    if not dry_run and parsed.labels:
        try:
            token = client_token(os.environ, token_file)
        except CollectorTokenError as e:
            raise _fail(f"error: {e}", code=2) from e
        try:
            sent = send_labels(parsed.labels, collector, token, batch_size=batch_size)
        except CollectorRefusedError as e:
            raise _fail(f"error: {e}; check $GARBAGE_COLLECTOR_TOKEN or --token-file", 2) from e
        failures += sent.failed
    report = {
        "export": str(export),
        "tasks": parsed.tasks,
        "labels": len(parsed.labels),
        "imported": sent.imported,
        "skipped": len(parsed.skipped),
        "skipped_reasons": parsed.skipped_by_reason(),
        "failed": len(failures),
        "failures": failures[:SHOWN_FAILURES],
        "labeller": sent.labeller,
        "dry_run": dry_run,
    }
    typer.echo(json.dumps(report, indent=2, default=str))
    if failures:
        raise typer.Exit(1)


@labels_app.command("history")
def labels_history(
    inference_id: Annotated[str, typer.Argument(help="The logged inference's id (its ce-id).")],
    item: Annotated[
        int, typer.Option("--item", min=0, help="The image's position in the request.")
    ] = 0,
    db: DbOption = DEFAULT_DB_URL,
    as_json: Annotated[bool, typer.Option("--json", help="Print the history as JSON.")] = False,
) -> None:
    """Every label a logged image was given, oldest first: who, when, with which selection.

    The latest label is the one accuracy and dataset versions use; the first selection is the
    one the image keeps. Reads the store only. Exit 1 when the image has no label.
    """
    from monitoring.store import InferenceStore, InvalidRecordError, StoreError, redact

    try:
        store = InferenceStore(db, create=False)
        try:
            history = store.label_history(inference_id, item)
        finally:
            store.close()
    except (InvalidRecordError, StoreError) as e:
        raise _fail(f"error: {e}", code=2) from e
    if as_json:
        typer.echo(json.dumps(history, indent=2, default=str))
    if not history:
        raise _fail(f"no label for {inference_id} item {item} in {redact(db)}")
    if as_json:
        return
    typer.echo(f"{inference_id} item {item}: {len(history)} label(s), oldest first")
    typer.echo(f"  {'time (UTC)':<19}  {'label':<10} {'labeller':<16} selection")
    for entry in history:
        stamp = entry["label_time"].isoformat(sep=" ", timespec="seconds")
        typer.echo(
            f"  {stamp:<19}  {entry['label']:<10} {entry['labeller'] or '-':<16} "
            f"{entry['selection'] or '-'}"
        )


def _since(text: str) -> datetime:
    """``--since``: a duration back from now (``24h``, ``7d``) or an ISO date/time (UTC)."""
    from monitoring.accuracy import parse_window

    try:
        return datetime.now(UTC).replace(tzinfo=None) - parse_window(text)
    except ValueError as window_error:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise typer.BadParameter(
                f"{window_error}, or an ISO date/time such as 2026-11-01T08:00",
                param_hint="--since",
            ) from None
        if when.tzinfo is not None:
            when = when.astimezone(UTC).replace(tzinfo=None)
        return when


def review(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", dir_okay=False, help="The export file (tasks JSON or CSV)."),
    ],
    db: DbOption = DEFAULT_DB_URL,
    since: Annotated[
        str,
        typer.Option("--since", help="Logged since: a duration (24h, 7d) or an ISO date/time."),
    ] = "7d",
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="Label Studio tasks JSON, or CSV.")
    ] = OutputFormat.labelstudio,
    strategy: Annotated[
        Strategy,
        typer.Option("--strategy", help="Uncertainty: top-1 minus top-2 margin, or entropy."),
    ] = Strategy.margin,
    per_class: Annotated[
        int | None,
        typer.Option("--per-class", min=1, help="Images per predicted class (default 25)."),
    ] = None,
    total: Annotated[
        int | None, typer.Option("--total", min=1, help="Or this many images in all.")
    ] = None,
    random_share: Annotated[
        float,
        typer.Option(
            "--random-share",
            min=0.0,
            max=1.0,
            help="Share drawn uniformly at random (keeps live accuracy unbiased).",
        ),
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random share.")] = 0,
    near_duplicate: Annotated[
        int,
        typer.Option(
            "--near-duplicate",
            min=-1,
            max=64,
            help="Largest dHash Hamming distance (of 64) of a near duplicate; -1: off.",
        ),
    ] = 6,
    collector: CollectorOption = DEFAULT_COLLECTOR_URL,
    image_url: Annotated[
        str | None,
        typer.Option(
            "--image-url",
            help="Image URL template with {sha256} or {key} (the store key, e.g. "
            "s3://bucket/{key}); also {inference_id}, {item}. Default: "
            "<collector>/images/{sha256}.",
        ),
    ] = None,
    ledger: Annotated[
        Path | None,
        typer.Option(
            "--ledger",
            dir_okay=False,
            help="CSV of images exported before; default: review-ledger.csv next to --out.",
        ),
    ] = None,
    pre_annotate: Annotated[
        bool,
        typer.Option(
            "--pre-annotate/--no-pre-annotate",
            help="Put the model's prediction in each task as a pre-annotation.",
        ),
    ] = True,
) -> None:
    """Pick the logged images a person should label next; write Label Studio tasks or CSV.

    The least certain predictions, balanced over predicted classes, plus a uniform random share
    (marked data.selection = "random"); labelled images, images without a stored copy, images
    exported before (the ledger) and exact and near duplicates are left out. Prints a JSON
    summary.
    """
    from monitoring.review import (
        REVIEW_COLUMNS,
        ReviewError,
        append_ledger,
        check_template,
        read_ledger,
        select_for_review,
        to_csv_frame,
        to_tasks,
        write_atomically,
    )
    from monitoring.store import InferenceStore, StoreError

    if per_class is not None and total is not None:
        raise typer.BadParameter("give --per-class or --total, not both")
    if per_class is None and total is None:
        per_class = 25
    template = image_url or collector.rstrip("/") + "/images/{sha256}"
    ledger_path = ledger or out.with_name("review-ledger.csv")
    start = _since(since)
    try:
        check_template(template)
        exported = read_ledger(ledger_path)
    except ReviewError as e:
        raise typer.BadParameter(str(e)) from e
    try:
        store = InferenceStore(db, create=False)
    except StoreError as e:
        raise _fail(f"error: {e}") from e

    def is_stored(sha256: str) -> bool:
        record = store.image_record(sha256)
        return record is not None and record["deleted_at"] is None

    try:
        frame = store.load_window(start, columns=REVIEW_COLUMNS)
        selection = select_for_review(
            frame,
            per_class=per_class,
            total=total,
            strategy=strategy.value,
            random_share=random_share,
            seed=seed,
            near_duplicate=near_duplicate,
            ledger=exported,
            is_stored=is_stored,
        )
    except StoreError as e:
        raise _fail(f"error: {e} (has a collector that keeps images opened this store yet?)") from e
    except ReviewError as e:
        raise _fail(f"error: {e}") from e
    finally:
        store.close()
    if output_format is OutputFormat.labelstudio:
        tasks = to_tasks(selection.picks, template, pre_annotate=pre_annotate)
        text = json.dumps(tasks, indent=2) + "\n"
    else:
        text = to_csv_frame(selection.picks, template).to_csv(index=False)
    write_atomically(out, text)
    if not selection.picks.empty:
        append_ledger(ledger_path, selection.picks, out.name)
    summary = {
        **selection.stats,
        "since": start.isoformat(timespec="seconds"),
        "out": str(out),
        "format": output_format.value,
        "ledger": str(ledger_path),
    }
    typer.echo(json.dumps(summary, indent=2, default=str))
