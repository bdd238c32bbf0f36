"""``garbage data``: fetch and validate the archive; build, list and show dataset versions.

``garbage data build`` is where training data and monitoring meet: it reads the labelled images
of the collector's store (``monitoring.store``, ``monitoring.images``) and hands them to the
training side's plain functions (:mod:`garbage.training.data.versions`), which know nothing of
monitoring.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.options import ConfigOption, ProfileOption, SetOption, fail, load

if TYPE_CHECKING:
    from garbage.core.config import Config
    from garbage.training.data.versions import BuildResult, DatasetStore, LabelledImage

app = typer.Typer(
    help="Fetch and validate the dataset; build, list and show dataset versions.",
    no_args_is_help=True,
)


@app.command("fetch")
def fetch(
    config: ConfigOption = None, profile: ProfileOption = "default", set_: SetOption = None
) -> None:
    """Download (or copy) the archive, verify its sha256 and extract it into the cache."""
    from garbage.training.data.fetch import DataFetchError, fetch_dataset

    cfg = load(config, profile, set_)
    try:
        root = fetch_dataset(cfg.data.source, cfg.data.sha256, cfg.data_cache_dir)
    except DataFetchError as e:
        raise fail(str(e)) from e
    typer.echo(str(root))


@app.command("validate")
def validate(
    images: Annotated[
        Path | None, typer.Option(help="Folder of class folders; default: fetch.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the reports go.")] = Path("work/validation"),
    config: ConfigOption = None,
    profile: ProfileOption = "default",
    set_: SetOption = None,
) -> None:
    """Validate the dataset; write validation.json and validation.md; exit 1 on a hard error."""
    from garbage.training.data.fetch import DataFetchError, fetch_dataset
    from garbage.training.data.validate import (
        DataValidationError,
        raise_for_errors,
        validate_dataset,
        write_report,
    )

    cfg = load(config, profile, set_)
    try:
        root = images or fetch_dataset(cfg.data.source, cfg.data.sha256, cfg.data_cache_dir)
        report, _ = validate_dataset(root, cfg.data)
        json_path, md_path = write_report(report, out)
        typer.echo(report.to_markdown())
        typer.echo(f"reports: {json_path} {md_path}")
        raise_for_errors(report)
    except (DataFetchError, DataValidationError) as e:
        raise fail(str(e)) from e


FromOption = Annotated[
    list[str] | None,
    typer.Option(
        "--from",
        help="A source (repeatable): 'trashnet' (the archive of data.source), or "
        "[NAME=]PATH_OR_URL: a folder of class folders or a .tar.gz, local, http(s) or "
        "s3://, with #sha256=HEX at the end to check an archive. NAME defaults to the file name "
        "without its suffix.",
    ),
]


#: Why a labelled row is left out, as ``skipped`` counts it.
TOO_YOUNG = "label younger than the minimum label age"
NO_IMAGE = "no stored image"
DELETED = "image deleted from the image store"


def _labelled_rows(
    db: str, min_label_age: timedelta | None, skipped: Counter[str], now: datetime | None
) -> Iterator[Any]:
    """The store's labelled rows with an image and an old enough label, oldest label first."""
    from monitoring.store import InferenceStore

    store = InferenceStore(db, create=False)
    try:
        rows = store.load_window(
            columns=["image_sha256", "true_label", "label_time", "label_selection"],
            labelled_only=True,
        )
    finally:
        store.close()
    rows = rows.sort_values("label_time", kind="mergesort", na_position="first")
    cutoff = None
    if min_label_age is not None:
        cutoff = (now or datetime.now(UTC).replace(tzinfo=None)) - min_label_age
    for row in rows.itertuples(index=False):
        if cutoff is not None and row.label_time is not None and row.label_time > cutoff:
            skipped[TOO_YOUNG] += 1
        elif not isinstance(row.image_sha256, str) or not row.image_sha256:
            skipped[NO_IMAGE] += 1
        else:
            yield row


def store_labels(
    db: str,
    image_store: str,
    min_label_age: timedelta | None,
    skipped: Counter[str],
    now: datetime | None = None,
) -> list[tuple[str, str]]:
    """``(sha256, label)`` of the images :func:`store_images` takes, without reading them.

    Same rules and the same ``skipped`` counts; oldest label first.
    """
    from monitoring.images import ImageStore

    images = ImageStore(image_store)
    labels = []
    for row in _labelled_rows(db, min_label_age, skipped, now):
        if images.exists(row.image_sha256):
            labels.append((row.image_sha256, str(row.true_label)))
        else:
            skipped[DELETED] += 1
    return labels


def store_images(
    db: str,
    image_store: str,
    source: str,
    min_label_age: timedelta | None,
    skipped: Counter[str],
    now: datetime | None = None,
) -> Iterator[LabelledImage]:
    """The labelled images of the collector's store, as one source, one image at a time.

    Rows without a stored image, rows whose image retention deleted, and labels younger than
    ``min_label_age`` are skipped and counted in ``skipped``. Oldest label first.

    Args:
        db: The store's SQLAlchemy URL or SQLite path.
        image_store: The image store's URL (a folder or ``s3://...``).
        source: The source name the images get.
        min_label_age: Only labels at least this old (time for corrections); None: all.
        skipped: Counts of skipped rows by reason (filled while iterating).
        now: The current time (naive UTC; default: now).

    Raises:
        monitoring.store.StoreError: The store cannot be read.
        monitoring.images.ImageStoreError: The image store cannot be read.
    """
    from garbage.training.data.versions import LabelledImage
    from monitoring.images import ImageNotFoundError, ImageStore

    images = ImageStore(image_store)
    for row in _labelled_rows(db, min_label_age, skipped, now):
        try:
            data = images.get(row.image_sha256)
        except ImageNotFoundError:
            skipped[DELETED] += 1
            continue
        yield LabelledImage(
            data, row.true_label, source, row.label_time, row.label_selection or None
        )


@dataclasses.dataclass(frozen=True)
class StoreSource:
    """The collector's store as a source of a dataset version.

    Attributes:
        db: The store's SQLAlchemy URL or SQLite path.
        images: The image store's URL.
        name: The source name its images get.
        min_label_age: Only labels at least this old; None: all.
    """

    db: str
    images: str
    name: str
    min_label_age: timedelta | None = None


def build_errors() -> tuple[type[Exception], ...]:
    """What :func:`build_from` raises for a reason a person can fix (the message says which)."""
    from garbage.training.data.fetch import DataFetchError
    from garbage.training.data.validate import DataValidationError
    from garbage.training.data.versions import DatasetVersionError
    from monitoring.images import ImageStoreError
    from monitoring.store import StoreError

    return (
        DataFetchError,
        DataValidationError,
        DatasetVersionError,
        StoreError,
        ImageStoreError,
        ValueError,
    )


def build_from(
    cfg: Config,
    store: DatasetStore,
    parent: str | None,
    specs: list[str],
    from_store: StoreSource | None,
    skipped: Counter[str],
    now: datetime | None = None,
) -> tuple[BuildResult, int]:
    """Build a dataset version: ``parent``'s images plus the sources ``specs`` and the store's.

    Args:
        cfg: The validated config.
        store: The datasets root.
        parent: The version this one extends; None for a first version.
        specs: Sources as ``--from`` takes them.
        from_store: The collector's store's labelled images; None: not taken.
        skipped: Counts of the store's rows left out, by reason (filled).
        now: The current time (naive UTC; default: now).

    Returns:
        The built version, and how many of the store's labelled images it took.

    Raises:
        DataFetchError: A source cannot be fetched.
        DataValidationError: A source is not valid (the message names the files).
        DatasetVersionError: A source name, the parent or the store is wrong.
        StoreError: The collector's store cannot be read.
        ImageStoreError: The image store cannot be read.
        ValueError: A label time is not a time.
    """
    from garbage.training.data.versions import (
        build_version,
        check_source_name,
        load_source,
        parse_source_spec,
        sources_from_labelled,
    )

    sources = [load_source(parse_source_spec(spec), cfg) for spec in specs]
    with tempfile.TemporaryDirectory(prefix="garbage-labelled-") as staging:
        taken = 0
        if from_store is not None:
            check_source_name(from_store.name)
            items = store_images(
                from_store.db,
                from_store.images,
                from_store.name,
                from_store.min_label_age,
                skipped,
                now=now,
            )
            labelled = sources_from_labelled(items, cfg.data, Path(staging), location=from_store.db)
            taken = sum(len(s.table) for s in labelled)
            sources += labelled
        return build_version(cfg, sources, parent, store=store), taken


def _min_age(text: str | None) -> timedelta | None:
    from monitoring.accuracy import parse_window

    if text is None:
        return None
    try:
        return parse_window(text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--min-label-age") from e


@app.command("build")
def build(
    from_: FromOption = None,
    from_store: Annotated[
        str | None,
        typer.Option(
            "--from-store",
            help="The collector's store (SQLAlchemy URL or SQLite path): its labelled images "
            "join as the source --store-source.",
        ),
    ] = None,
    image_store: Annotated[
        str | None,
        typer.Option(
            "--image-store",
            envvar="GARBAGE_IMAGE_STORE",
            help="Where the collector keeps the images (a folder or s3://bucket/prefix); "
            "default: the folder images beside a SQLite --from-store.",
        ),
    ] = None,
    store_source: Annotated[
        str, typer.Option("--store-source", help="The source name of the store's images.")
    ] = "site",
    min_label_age: Annotated[
        str | None,
        typer.Option(
            "--min-label-age",
            help="Take only labels at least this old (30m, 24h, 7d): time to correct them.",
        ),
    ] = None,
    parent: Annotated[
        str,
        typer.Option(
            "--parent",
            help="The version this one extends (its images keep their splits): ds-..., "
            "'latest' (the newest, if any) or 'none'.",
        ),
    ] = "latest",
    as_json: Annotated[bool, typer.Option("--json", help="Print version.json.")] = False,
    config: ConfigOption = None,
    profile: ProfileOption = "default",
    set_: SetOption = None,
) -> None:
    """Build a dataset version from sources combined; print its name, counts and changes.

    The version holds the parent's images plus the sources' (validated; the newest label of an
    image wins); each source has its own train/val/test, and no image of the parent changes
    split. Writing a version that exists changes nothing.
    """
    from garbage.training.data.versions import describe_version, open_store, resolve_version
    from monitoring.images import default_image_store

    cfg = load(config, profile, set_)
    if not from_ and not from_store:
        raise fail("nothing to build from: give --from (repeatable) and/or --from-store", code=2)
    age = _min_age(min_label_age)
    skipped: Counter[str] = Counter()
    source = None
    if from_store:
        images = image_store or default_image_store(from_store, cfg.work_dir)
        source = StoreSource(from_store, images, store_source, age)
    try:
        store = open_store(cfg)
        result, used = build_from(
            cfg, store, resolve_version(store, parent), from_ or [], source, skipped
        )
    except build_errors() as e:
        raise fail(str(e)) from e
    if as_json:
        typer.echo(json.dumps(result.info, indent=2))
        return
    typer.echo(describe_version(result.info, created=result.created), nl=False)
    if from_store:
        detail = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) or "none skipped"
        typer.echo(f"store {from_store}: {used} labelled images taken; {detail}")


@app.command("versions")
def versions(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per version.")] = False,
    config: ConfigOption = None,
    profile: ProfileOption = "default",
    set_: SetOption = None,
) -> None:
    """List the dataset versions, oldest first: name, created, images, sources, parent."""
    from garbage.training.data.versions import DatasetVersionError, list_versions, open_store

    cfg = load(config, profile, set_)
    try:
        store = open_store(cfg)
        infos = list_versions(store)
    except DatasetVersionError as e:
        raise fail(str(e)) from e
    if as_json:
        for info in infos:
            typer.echo(json.dumps(info))
        return
    if not infos:
        typer.echo(f"no dataset versions under {store.location}; build one: garbage data build")
        return
    typer.echo("| name | created | images | sources | parent |")
    typer.echo("| --- | --- | ---: | --- | --- |")
    for info in infos:
        sources = ", ".join(f"{k} {v}" for k, v in sorted(info["counts"]["source"].items()))
        typer.echo(
            f"| {info['name']} | {info['created']} | {info['counts']['images']} | {sources} | "
            f"{info.get('parent') or '-'} |"
        )


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="A version's name (ds-...) or 'latest'.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print version.json.")] = False,
    config: ConfigOption = None,
    profile: ProfileOption = "default",
    set_: SetOption = None,
) -> None:
    """Show one dataset version: sources, counts per source/split/class, changes, code version."""
    from garbage.training.data.versions import (
        DatasetVersionError,
        describe_version,
        open_store,
        read_info,
        resolve_version,
    )

    cfg = load(config, profile, set_)
    try:
        store = open_store(cfg)
        resolved = resolve_version(store, name)
        if resolved is None:
            raise fail(
                f"no dataset version {name!r} under {store.location}; see garbage data versions"
            )
        info = read_info(store, resolved)
    except DatasetVersionError as e:
        raise fail(str(e)) from e
    typer.echo(json.dumps(info, indent=2) if as_json else describe_version(info), nl=as_json)
