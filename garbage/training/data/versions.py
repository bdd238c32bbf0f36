"""Dataset versions: immutable manifests of images, named by their content digest.

A dataset version is a table with one row per image: ``sha256`` (the image's content hash),
``label``, ``source`` (where it came from: ``trashnet``, ``site``, ...), ``time`` (when the label
was given, ISO 8601 UTC; empty for an image of an archive or folder, whose labels carry no date),
``split`` and ``path`` (the image's file, relative to the shared image folder). Its name is
``ds-<first 12 hex digits>`` of its digest: the sha256 of the canonical sorted rows without
``path`` (:func:`version_digest`), so the same images, labels, sources, times and splits always
make the same name, and any change of a label or a split makes another.

**Where.** Under a datasets root (``data.datasets_root``, default ``<work_dir>/datasets``): a
local folder, an S3-compatible bucket (``s3://garbage-datasets/``, MinIO on the cluster; the
endpoint from ``AWS_ENDPOINT_URL``, the keys from botocore's variables) or any other URL fsspec
opens (``memory://`` in tests). :class:`DatasetStore` is the one place that does I/O::

    <root>/images/<sha[:2]>/<sha>.<ext>          each image once, shared by every version
    <root>/versions/<name>/manifest.csv          the rows
    <root>/versions/<name>/version.json          sources (with their digests), parent, created
                                                 time, counts per source/split/class, changes
                                                 versus the parent, the code version

A version exists when its ``version.json`` does, so it appears whole or not at all: on a local
disk it is written into a temporary folder and renamed into place; on object storage, which has
no rename, its other files are written first and ``version.json`` last. Writing a version that
exists already writes nothing, and a version never changes.

**Sources combined** (:func:`build_version`): any folder of class folders or archive
(:func:`load_source`: the TrashNet archive, a local path, http(s) or s3://) and labelled images
(:func:`sources_from_labelled`: an iterable of image bytes or path, label, source name, time; the
CLI passes the labelled images of the monitoring store). Every source is validated with the
pipeline's own checks (:func:`garbage.training.data.validate.validate_dataset`: decodes, allowed
formats, sizes, exact duplicates, images under two classes); what is dropped is counted per
reason. A source need not have every class: the class census is the pipeline's validate step's
job, on the version as a whole.

**One row per image; the newest label wins.** The same bytes from two places make one row. When
their labels disagree, the newest dated label wins: a person who labelled this exact image at the
site (a dated label) overrides an archive's undated label, and a later re-label overrides an
earlier one. The image keeps its row's source and split (the parent's, when the parent has it).
Two undated labels that disagree exclude the image, as validation does within one source, unless
the parent has it: then the parent's row stays. Each case is counted in ``combined``.

**Splits per source, stable across versions.** Each source has its own train/val/test, so each
keeps its own test slice. An image of the parent keeps the parent's split. The images of a source
the parent does not have are split by :func:`garbage.training.data.split.split_dataset` (so a
version built from the TrashNet archive alone has exactly the pipeline's split of the archive;
``split.max_per_class`` does not apply: a version keeps every image); a class too small for that
takes the hash rule. New images of a source the parent has take the hash rule
(:func:`garbage.training.data.split.hash_split`: a threshold on a uniform value of the image's
hash, the seed and its source), so an image never moves when others are added. New images a
review picked for labelling (their labels say how: ``selection``) are split by that instead:
the test slice, ``test_fraction`` of them, comes from the review's random picks only, a uniform
sample of the traffic that measures the site without bias, and the uncertain picks, chosen for
what they teach, are trained on (:func:`_split_reviewed`). A version only grows: images of the
parent stay (re-labelled where a newer label says so).

**Training on a version** (``data.version``): :func:`materialize_version` writes its images as
class folders for the pipeline's validate step, and :func:`apply_version_splits` takes the splits
(and the ``source`` column) from the version instead of splitting again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from garbage.core.config import Config, DataConfig, SplitConfig
from garbage.core.names import SELECTION_RANDOM, SELECTIONS
from garbage.training.data.fetch import fetch_dataset, fetch_source
from garbage.training.data.split import SPLITS, hash_split, split_dataset, split_uniform
from garbage.training.data.validate import validate_dataset
from garbage.training.lineage import code_version, manifest_digest

PREFIX = "ds-"
#: Hex digits of the digest in a version's name.
NAME_DIGITS = 12
NAME_PATTERN = re.compile(r"ds-[0-9a-f]{12}")
MANIFEST_FILENAME = "manifest.csv"
INFO_FILENAME = "version.json"
#: The columns of a version's manifest; all but ``path`` make its digest.
COLUMNS = ("sha256", "label", "source", "time", "split", "path")
DIGEST_COLUMNS = COLUMNS[:-1]
#: ``--parent latest``: the newest version; ``none``: no parent.
LATEST, NO_PARENT = "latest", "none"
#: The source name of the configured archive (``data.source``, TrashNet by default).
TRASHNET = "trashnet"
SOURCE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_EXTENSIONS = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"))
_STAGED_BYTES = ".bytes"  # hidden: validation skips folders that start with a dot


class DatasetVersionError(RuntimeError):
    """A dataset version cannot be built, read or used; the message says what to do."""


class VersionNotFoundError(DatasetVersionError, LookupError):
    """No dataset version of that name is stored under the datasets root."""


class DatasetStoreError(DatasetVersionError):
    """The datasets root cannot be opened, read or written; the message names it."""


class UnsupportedLocationError(DatasetStoreError):
    """The datasets root's URL has a protocol fsspec does not know, or its library is missing."""


class StoreUnreachableError(DatasetStoreError):
    """The object store does not answer, or its bucket does not exist."""


class StoreCredentialsError(DatasetStoreError):
    """The object store refused the credentials, or there are none."""


# --------------------------------------------------------------------------------------------
# Storage: the one place that reads and writes the datasets root.

#: The S3 endpoint (MinIO's URL on the cluster); the keys are botocore's usual variables.
ENDPOINT_ENV = "AWS_ENDPOINT_URL"
_S3_PROTOCOLS = ("s3", "s3a")
#: s3fs settings unless storage options say otherwise: fail within seconds when the endpoint is
#: down instead of retrying for minutes, and list afresh each time (other pods write versions).
S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}},
    "use_listings_cache": False,
}
_CREDENTIAL_ERRORS = frozenset(
    {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}
)
_CONNECTION_ERRORS = frozenset(
    {
        "ConnectionError",  # botocore's and the builtin one
        "TimeoutError",
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ClientConnectionError",  # aiohttp's
    }
)


def _storage_options(
    protocol: str, options: Mapping[str, Any] | None, environ: Mapping[str, str]
) -> dict[str, Any]:
    """The fsspec options for ``protocol``: ``options`` over S3's defaults and endpoint.

    The same conventions as the collector's image store (``monitoring/images.py``), which this
    package may not import.
    """
    merged = dict(options or {})
    if protocol in _S3_PROTOCOLS:
        for key, value in S3_DEFAULTS.items():
            merged.setdefault(key, value)
        endpoint = environ.get(ENDPOINT_ENV)
        client_kwargs = merged.get("client_kwargs") or {}
        if endpoint and "endpoint_url" not in merged and "endpoint_url" not in client_kwargs:
            merged["endpoint_url"] = endpoint
    return merged


def _names(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


class DatasetStore:
    """The datasets root: the shared images and the versions, in a folder or a bucket.

    The root is any URL fsspec opens: a local folder (a path or ``file://...``), an
    S3-compatible bucket (``s3://bucket/prefix``, through s3fs; the endpoint comes from
    ``AWS_ENDPOINT_URL`` and the keys from botocore's ``AWS_ACCESS_KEY_ID`` and
    ``AWS_SECRET_ACCESS_KEY``, or from storage options), or anything else fsspec knows
    (``memory://`` in tests).

    A version exists when, and only when, its ``version.json`` does: on a local disk a version
    is written into a hidden staging folder and renamed into place; on object storage, which
    cannot rename, every other file is written first and ``version.json`` last. A version
    folder without ``version.json`` (a write that stopped halfway) is invisible and is written
    over by the next build of that version.

    Attributes:
        location: The root as given.
        root: The root's path inside its filesystem (a local folder's path; ``bucket/prefix``
            for S3).
        fs: The fsspec filesystem of the root.
    """

    def __init__(
        self,
        location: str | Path,
        storage_options: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """Open the datasets root at ``location`` (created on the first write; no I/O here).

        Args:
            location: A folder (path or ``file://``), ``s3://bucket/prefix`` or another fsspec
                URL.
            storage_options: fsspec options for the filesystem (for S3: ``endpoint_url``,
                ``key``, ``secret``, ``client_kwargs``...); for S3 the endpoint defaults to
                ``$AWS_ENDPOINT_URL`` and the keys to botocore's environment variables.
            environ: The environment to read ``AWS_ENDPOINT_URL`` from (default ``os.environ``).

        Raises:
            UnsupportedLocationError: fsspec knows no such protocol, its library is missing
                (s3fs for ``s3://``), or an ``s3://`` URL names no bucket.
        """
        text = str(location)
        self.location = text
        self._protocol = text.split("://", 1)[0].lower() if "://" in text else "file"
        self._local = self._protocol in ("file", "local")
        self._checked = False
        if self._local:
            from fsspec.implementations.local import LocalFileSystem

            self._folder = Path(re.sub(r"^(file|local)://", "", text)).expanduser()
            self.root = str(self._folder)
            self.fs: Any = LocalFileSystem()
            return
        import fsspec

        environ = os.environ if environ is None else environ
        options = _storage_options(self._protocol, storage_options, environ)
        try:
            fs, root = fsspec.core.url_to_fs(text, **options)
        except ImportError as e:
            raise UnsupportedLocationError(
                f"cannot open the datasets root {text}: {e} (s3:// needs the s3fs package: "
                "pip install s3fs)"
            ) from e
        except ValueError as e:
            raise UnsupportedLocationError(
                f"cannot open the datasets root {text}: {e}; set data.datasets_root to a "
                "folder, file://... or s3://bucket/prefix"
            ) from e
        self.fs = fs
        self.root = str(root).rstrip("/")
        if self._protocol in _S3_PROTOCOLS and not self.root:
            raise UnsupportedLocationError(
                f"the datasets root {text} names no bucket; set data.datasets_root to "
                "s3://BUCKET or s3://BUCKET/PREFIX"
            )

    def __repr__(self) -> str:
        return f"DatasetStore({self.location!r})"

    # -- locations ---------------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        """Whether the root is a folder on this machine (then :attr:`images_dir` works)."""
        return self._local

    def url_of(self, path: str = "") -> str:
        """The full URL of ``path`` under the root (``s3://bucket/prefix/versions/...``).

        A local root gives a ``file://`` URL of the absolute path. For text that tells people
        where something lies (a lineage ``source`` field); read and write through the methods.

        Args:
            path: Relative to the root: ``versions/<name>``, ``images/ab/ab....jpg``; empty for
                the root itself.
        """
        if self._local:
            full = self._folder.absolute() / path if path else self._folder.absolute()
            return f"file://{full}"
        return str(self.fs.unstrip_protocol(self._key(path) if path else self.root))

    def version_url(self, name: str) -> str:
        """The URL of version ``name``'s folder (:meth:`url_of` of ``versions/<name>``)."""
        return self.url_of(f"versions/{name}")

    @property
    def images_dir(self) -> Path:
        """The shared, content-addressed image folder of a local root.

        Raises:
            DatasetStoreError: The root is not local (use :meth:`url_of` for its location).
        """
        return self._local_folder("images")

    def version_dir(self, name: str) -> Path:
        """The folder of version ``name`` under a local root.

        Raises:
            DatasetStoreError: The root is not local (use :meth:`version_url` for its
                location).
        """
        return self._local_folder("versions") / name

    def _local_folder(self, name: str) -> Path:
        if not self._local:
            raise DatasetStoreError(
                f"the datasets root {self.location} is not a local folder: it has no local "
                f"{name} folder; use url_of()/version_url() for a location, read_image() and "
                "read_text() for contents"
            )
        return self._folder / name

    def _key(self, path: str) -> str:
        """``path`` (relative to the root) as a path of the root's filesystem."""
        return f"{self.root}/{path}"

    @staticmethod
    def _relative(path: str) -> str:
        parts = path.replace("\\", "/").split("/")
        if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise DatasetStoreError(
                f"{path!r} is not a path relative to the datasets root: give parts such as "
                "retrains/<name>.json, without '..', '.' or a leading '/'"
            )
        return path

    # -- object storage: errors and the one bucket check -------------------------------------

    def _fail(self, what: str, error: BaseException) -> DatasetStoreError:
        """The error to raise when ``what`` failed on object storage with ``error``."""
        names = _names(error)
        detail = f"{error.__class__.__name__}: {error}"
        if names & _CREDENTIAL_ERRORS or isinstance(error, PermissionError):
            return StoreCredentialsError(
                f"cannot {what} in the datasets root {self.location}: {detail}; the store "
                "refused the credentials or there are none: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (on the cluster: the Secret of the MinIO user) and check "
                "the user's policy on the bucket"
            )
        if names & _CONNECTION_ERRORS:
            return StoreUnreachableError(
                f"cannot {what} in the datasets root {self.location}: {detail}; the object "
                f"store does not answer: check {ENDPOINT_ENV} (MinIO's URL on the cluster) and "
                "that the store is up"
            )
        return DatasetStoreError(f"cannot {what} in the datasets root {self.location}: {detail}")

    def _check(self) -> None:
        """Check once that an S3 root's bucket exists and answers (before the first I/O).

        Without this a missing bucket would look like an empty store, and a build would fail
        only at its first upload.

        Raises:
            StoreUnreachableError: The endpoint does not answer or the bucket does not exist.
            StoreCredentialsError: The credentials are missing or refused.
        """
        if self._checked or self._local:
            return
        call = getattr(self.fs, "call_s3", None)
        if self._protocol in _S3_PROTOCOLS and call is not None:
            bucket = self.root.split("/", 1)[0]
            endpoint = getattr(self.fs, "endpoint_url", None) or "of AWS"
            try:
                call("head_bucket", Bucket=bucket)
            except FileNotFoundError as e:
                raise StoreUnreachableError(
                    f"the bucket {bucket} of the datasets root {self.location} does not exist "
                    f"at the endpoint {endpoint}: create it (on the cluster the Job "
                    "minio-buckets does) or fix data.datasets_root"
                ) from e
            except Exception as e:  # botocore's errors are no OSError
                raise self._fail(f"reach the bucket {bucket}", e) from e
        self._checked = True

    def _exists(self, path: str) -> bool:
        """Whether the file ``path`` (relative to the root) exists."""
        if self._local:
            return (self._folder / path).is_file()
        self._check()
        try:  # not fs.isfile: it answers False for any error, credentials and timeouts too
            return bool(self.fs.info(self._key(path))["type"] == "file")
        except FileNotFoundError:
            return False
        except Exception as e:  # fsspec backends raise their own types
            raise self._fail(f"look up {path}", e) from e

    def _read(self, path: str) -> bytes:
        """The bytes of ``path`` on object storage.

        Raises:
            FileNotFoundError: It does not exist.
            DatasetStoreError: The store cannot be read.
        """
        self._check()
        try:
            return bytes(self.fs.cat_file(self._key(path)))
        except FileNotFoundError:
            raise
        except Exception as e:  # fsspec backends raise their own types
            raise self._fail(f"read {path}", e) from e

    def _write(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` on object storage: one PUT, atomic there."""
        self._check()
        try:
            self.fs.pipe_file(self._key(path), data)
        except Exception as e:  # fsspec backends raise their own types
            raise self._fail(f"write {path}", e) from e

    def _create(self, path: str, data: bytes) -> bool:
        """Write ``data`` to ``path`` on object storage unless it exists; whether it wrote.

        A conditional PUT (``If-None-Match: *``, fsspec's ``mode="create"``) where the store
        honours it (AWS S3, recent MinIO, s3fs >= 2024.12): then two writers cannot both win.
        A store that ignores the condition overwrites: the existence check before it is all
        that remains, best effort.
        """
        if self._exists(path):
            return False
        try:
            self.fs.pipe_file(self._key(path), data, mode="create")
        except FileExistsError:
            return False
        except Exception as e:  # fsspec backends raise their own types
            if isinstance(e, OSError) and self._exists(path):  # a 412 without its condition
                return False
            raise self._fail(f"write {path}", e) from e
        return True

    # -- images ------------------------------------------------------------------------------

    def has_image(self, path: str) -> bool:
        """Whether the image at ``path`` (relative to the image folder) is stored.

        Raises:
            DatasetStoreError: The object store cannot be read.
        """
        return self._exists(f"images/{path}")

    def read_image(self, path: str) -> bytes:
        """The bytes of the image at ``path``.

        Raises:
            DatasetVersionError: It is missing or unreadable (:class:`DatasetStoreError` when the
                object store cannot be read).
        """
        if not self._local:
            try:
                return self._read(f"images/{path}")
            except FileNotFoundError as e:
                raise DatasetVersionError(
                    f"image {path} is missing from the datasets root {self.location}: {e}"
                ) from e
        try:
            return (self._folder / "images" / path).read_bytes()
        except OSError as e:
            raise DatasetVersionError(
                f"image {path} is missing from the datasets root {self.location}: {e}"
            ) from e

    def put_image(self, path: str, data: bytes) -> bool:
        """Store ``data`` at ``path`` unless it is there; atomic. Returns whether it wrote.

        On a local disk: a temporary file in the same folder, then a rename. On object storage:
        one PUT, atomic there.

        Raises:
            DatasetStoreError: The object store cannot be written.
        """
        if not self._local:
            if self.has_image(path):
                return False
            self._write(f"images/{path}", data)
            return True
        target = self._folder / "images" / path
        if target.is_file():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".incoming-", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return True

    # -- versions ----------------------------------------------------------------------------

    def publish(self, name: str, files: Mapping[str, str]) -> bool:
        """Write a version's files so that it appears whole or not at all.

        Local: into a hidden staging folder, renamed into place. Object storage: every file but
        ``version.json`` first, then ``version.json`` (by a conditional PUT where the store
        honours it, so two builds of the same version cannot both write it).

        Args:
            name: The version's name.
            files: File name to text; must hold ``version.json``.

        Returns:
            False when the version exists already (nothing is written), else True.

        Raises:
            DatasetVersionError: ``files`` has no ``version.json``.
            DatasetStoreError: The object store cannot be written.
        """
        if INFO_FILENAME not in files:
            raise DatasetVersionError(
                f"version {name} has no {INFO_FILENAME}: a version exists only with it; pass "
                f"it among the files ({', '.join(files) or 'none given'})"
            )
        if not self._local:
            return self._publish_objects(name, files)
        target = self.version_dir(name)
        if (target / INFO_FILENAME).is_file():
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{name}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            for filename, text in files.items():
                (staging / filename).write_text(text)
            try:
                self._rename_into_place(staging, target)
            except OSError:
                if (target / INFO_FILENAME).is_file():  # written at the same time: same content
                    return False
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return True

    @staticmethod
    def _rename_into_place(staging: Path, target: Path) -> None:
        """Rename ``staging`` to ``target``, first moving aside a ``target`` left unfinished."""
        try:
            staging.rename(target)
            return
        except OSError:
            if not target.is_dir() or (target / INFO_FILENAME).is_file():
                raise
        stale = target.parent / f".{target.name}-stale-{uuid.uuid4().hex[:8]}"
        target.rename(stale)  # a folder without version.json: invisible, replaced
        shutil.rmtree(stale, ignore_errors=True)
        staging.rename(target)

    def _publish_objects(self, name: str, files: Mapping[str, str]) -> bool:
        base = f"versions/{name}"
        if self._exists(f"{base}/{INFO_FILENAME}"):
            return False
        for filename, text in files.items():
            if filename != INFO_FILENAME:
                self._write(f"{base}/{filename}", text.encode())
        return self._create(f"{base}/{INFO_FILENAME}", files[INFO_FILENAME].encode())

    def read_text(self, name: str, filename: str) -> str:
        """A file of version ``name``.

        Raises:
            VersionNotFoundError: No such version (no ``version.json``).
            DatasetVersionError: The version exists but lacks ``filename``.
            DatasetStoreError: The object store cannot be read.
        """
        path = f"versions/{name}/{filename}"
        if filename != INFO_FILENAME and not self._exists(f"versions/{name}/{INFO_FILENAME}"):
            raise self._not_found(name)
        try:
            if self._local:
                return (self._folder / path).read_text()
            return self._read(path).decode()
        except FileNotFoundError as e:
            if filename == INFO_FILENAME:
                raise self._not_found(name) from e
            raise DatasetVersionError(
                f"version {name} under {self.location} lacks its {filename} (the datasets "
                "root is damaged); rebuild the version from its sources"
            ) from e

    def _not_found(self, name: str) -> VersionNotFoundError:
        known = ", ".join(self.names()) or "none yet"
        return VersionNotFoundError(
            f"no dataset version {name} under {self.location} (versions: {known}); "
            "build one with `garbage data build`"
        )

    def names(self) -> list[str]:
        """The names of the stored versions (those with a ``version.json``), sorted.

        Raises:
            DatasetStoreError: The object store cannot be listed.
        """
        if self._local:
            folder = self._folder / "versions"
            if not folder.is_dir():
                return []
            return sorted(
                p.name
                for p in folder.iterdir()
                if NAME_PATTERN.fullmatch(p.name) and (p / INFO_FILENAME).is_file()
            )
        self._check()
        try:
            found = self.fs.glob(self._key(f"versions/*/{INFO_FILENAME}"))
        except FileNotFoundError:
            return []
        except Exception as e:  # fsspec backends raise their own types
            raise self._fail("list the versions", e) from e
        names = {str(p).rstrip("/").rsplit("/", 2)[-2] for p in found}
        return sorted(n for n in names if NAME_PATTERN.fullmatch(n))

    # -- other files under the root ----------------------------------------------------------

    def read_file(self, path: str) -> str | None:
        """The text of ``path`` (relative to the root: ``retrains/<name>.json``); None if absent.

        Raises:
            DatasetStoreError: ``path`` leaves the root, or the object store cannot be read.
        """
        self._relative(path)
        if not self._local:
            try:
                return self._read(path).decode()
            except FileNotFoundError:
                return None
        try:
            return (self._folder / path).read_text()
        except FileNotFoundError:
            return None

    def write_file(self, path: str, text: str, *, exclusive: bool = False) -> bool:
        """Write ``text`` to ``path`` (relative to the root), atomically.

        Local: a temporary file and a rename; exclusive: created with ``O_EXCL``, so two
        writers cannot both win. Object storage: one PUT; exclusive: an existence check, then a
        conditional PUT (``If-None-Match: *``) that AWS S3 and recent MinIO enforce; a store
        that ignores the condition leaves only the check, which two writers at the same moment
        can both pass (best effort there).

        Args:
            path: The file, relative to the root.
            text: Its new contents.
            exclusive: Write only if the file does not exist (a claim two writers cannot both
                win, where the store enforces it).

        Returns:
            False when ``exclusive`` and the file exists (nothing is written), else True.

        Raises:
            DatasetStoreError: ``path`` leaves the root, or the object store cannot be written.
        """
        self._relative(path)
        if not self._local:
            if exclusive:
                return self._create(path, text.encode())
            self._write(path, text.encode())
            return True
        target = self._folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if exclusive:
            try:
                with target.open("x") as out:
                    out.write(text)
            except FileExistsError:
                return False
            return True
        handle, temporary = tempfile.mkstemp(prefix=".incoming-", dir=target.parent)
        try:
            with os.fdopen(handle, "w") as out:
                out.write(text)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return True


def datasets_root(config: Config) -> str:
    """The datasets root of ``config``: ``data.datasets_root``, else ``<work_dir>/datasets``."""
    return config.data.datasets_root or str(config.work_dir / "datasets")


def open_store(config: Config) -> DatasetStore:
    """The :class:`DatasetStore` at ``config``'s datasets root."""
    return DatasetStore(datasets_root(config))


# --------------------------------------------------------------------------------------------
# Names, digests, times.


def version_digest(manifest: pd.DataFrame) -> str:
    """The content digest of a version: the sha256 of its sorted rows without ``path``.

    Independent of row order; the same after a write and a read (missing values count as empty).
    """
    return manifest_digest(manifest[list(DIGEST_COLUMNS)])


def version_name(digest: str) -> str:
    """``ds-`` and the first :data:`NAME_DIGITS` hex digits of ``digest``."""
    return PREFIX + digest[:NAME_DIGITS]


def label_time(value: datetime | str | None) -> str:
    """A label's time as the manifest writes it: ISO 8601 in UTC with a ``Z``; empty if none.

    A naive datetime counts as UTC (the monitoring store keeps naive UTC times).

    Raises:
        ValueError: ``value`` is text that is not an ISO 8601 time.
    """
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, str):
        if not value.strip():
            return ""
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError as e:
            raise ValueError(
                f"label time {value!r} is not an ISO 8601 time such as 2026-11-01T08:00:00Z"
            ) from e
    else:
        when = value.to_pydatetime() if isinstance(value, pd.Timestamp) else value
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when.isoformat() + "Z"


def _parsed(time: str) -> datetime | None:
    """A manifest time as a naive UTC datetime; None when empty."""
    return datetime.fromisoformat(time).replace(tzinfo=None) if time else None


def _newer(a: str, b: str) -> bool:
    """Whether label time ``a`` is strictly newer than ``b`` (an empty time is the oldest)."""
    ta, tb = _parsed(a), _parsed(b)
    if ta is None:
        return False
    return tb is None or ta > tb


def _extension(data: bytes, fallback: str = "") -> str:
    for signature, extension in _EXTENSIONS:
        if data.startswith(signature):
            return extension
    return fallback.lower()


def image_path(sha256: str, extension: str) -> str:
    """Where an image lies in the shared image folder: ``<sha[:2]>/<sha><extension>``."""
    return f"{sha256[:2]}/{sha256}{extension}"


def check_source_name(name: str) -> str:
    """Return ``name`` when it is a valid source name (lowercase letters, digits, ``._-``).

    Raises:
        DatasetVersionError: It is not.
    """
    if not SOURCE_NAME.fullmatch(name):
        raise DatasetVersionError(
            f"source name {name!r}: use 1 to 64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


# --------------------------------------------------------------------------------------------
# Sources.


@dataclass
class SourceImages:
    """One source's validated images, ready to join a version.

    Attributes:
        name: The source's name (the manifest's ``source`` and the model card's slice).
        kind: ``archive``, ``folder`` or ``labelled``.
        location: Where it came from (a path or URL; for labelled images, what the caller says).
        digest: The source's own digest: an archive's sha256, else the sha256 of its kept rows.
        root: The folder the table's paths are relative to.
        table: The kept images: ``path``, ``label``, ``sha256``, ``time``, ``selection`` (how a
            review picked a labelled image; ``""`` when not known).
        dropped: Images left out, by reason.
    """

    name: str
    kind: str
    location: str
    digest: str
    root: Path
    table: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What ``version.json`` records of the source."""
        return {
            "name": self.name,
            "kind": self.kind,
            "location": self.location,
            "digest": self.digest,
            "images": len(self.table),
            "dropped": dict(self.dropped),
        }


def images_from_folder(
    root: Path,
    name: str,
    config: DataConfig,
    *,
    kind: str = "folder",
    location: str | None = None,
    digest: str | None = None,
    times: Mapping[str, str] | None = None,
    selections: Mapping[str, str] | None = None,
    dropped: Mapping[str, int] | None = None,
) -> SourceImages:
    """Validate a folder of class folders as one source.

    Args:
        root: The folder whose sub-folders are the classes.
        name: The source's name.
        config: What a valid image is (``data`` of the config).
        kind: What the source is (``folder``, ``archive``, ``labelled``).
        location: Where it came from (default: ``root``).
        digest: The source's digest (an archive's sha256); default: the kept rows' digest.
        times: Label time per image hash (labelled images); default: none (undated).
        selections: How a review picked each image, per image hash (labelled images); default:
            not known.
        dropped: Images left out before validation, by reason.

    Returns:
        The kept images and the counts of those left out.
    """
    check_source_name(name)
    report, kept = validate_dataset(Path(root), config)
    invalid = len(report.invalid_files)
    conflicting = sum(len(group) for group in report.label_conflicts)
    duplicates = sum(len(group) - 1 for group in report.duplicates_within_class)
    other = report.num_files - report.num_kept - invalid - conflicting - duplicates
    reasons = Counter(dropped or {})
    for reason, count in (
        ("invalid image", invalid),
        ("same image under two classes", conflicting),
        ("duplicate within a class", duplicates),
        ("not in a configured class folder", other),
    ):
        if count > 0:
            reasons[reason] += count
    table = kept[["path", "label", "sha256"]].copy()
    table["time"] = [(times or {}).get(sha, "") for sha in table["sha256"]]
    table["selection"] = [(selections or {}).get(sha, "") for sha in table["sha256"]]
    return SourceImages(
        name=name,
        kind=kind,
        location=location or str(root),
        digest=digest or manifest_digest(table),
        root=Path(root),
        table=table.reset_index(drop=True),
        dropped=dict(reasons),
    )


@dataclass(frozen=True)
class LabelledImage:
    """One labelled image for a version (e.g. a logged site image a person labelled).

    Attributes:
        image: The image's bytes, or the path of its file.
        label: Its class.
        source: The source it belongs to (``site``, ...).
        time: When the label was given (a datetime, naive = UTC, or ISO text); None if unknown.
        selection: How ``garbage review`` picked it (:data:`garbage.core.names.SELECTIONS`);
            None if it was labelled without a review.
    """

    image: bytes | Path | str
    label: str
    source: str
    time: datetime | str | None = None
    selection: str | None = None


def sources_from_labelled(
    items: Iterable[LabelledImage | tuple[Any, ...]],
    config: DataConfig,
    staging_dir: Path,
    location: str = "labelled images",
) -> list[SourceImages]:
    """Validate labelled images as sources, one per source name, in order of appearance.

    The images are written once each into ``staging_dir`` (class folders per source) and
    validated there. An image labelled more than once keeps its newest label, and counts as a
    random pick of a review when any of its labels was one. Items with a label that is not a
    configured class, or whose file cannot be read, are dropped and counted.

    Args:
        items: :class:`LabelledImage` or ``(image, label, source, time[, selection])`` tuples;
            consumed once.
        config: What a valid image is, and the classes.
        staging_dir: An empty folder for the images (the caller removes it after the build).
        location: What to record as the sources' location.

    Returns:
        One :class:`SourceImages` per source name.

    Raises:
        DatasetVersionError: A source name is invalid.
        ValueError: A label time is not an ISO 8601 time.
    """
    best: dict[str, dict[str, tuple[str, str, str]]] = {}  # source -> sha -> (label, time, ext)
    dropped: dict[str, Counter[str]] = {}
    picked: dict[str, dict[str, str]] = {}  # source -> sha -> selection
    for raw in items:
        item = raw if isinstance(raw, LabelledImage) else LabelledImage(*raw)
        source = check_source_name(item.source)
        images = best.setdefault(source, {})
        counts = dropped.setdefault(source, Counter())
        if item.label not in config.classes:
            counts["label not a configured class"] += 1
            continue
        try:
            data = item.image if isinstance(item.image, bytes) else Path(item.image).read_bytes()
        except OSError:
            counts["unreadable file"] += 1
            continue
        sha = hashlib.sha256(data).hexdigest()
        chosen = picked.setdefault(source, {})
        if item.selection in SELECTIONS and chosen.get(sha) != SELECTION_RANDOM:
            chosen[sha] = item.selection
        time = label_time(item.time)
        folder = Path(staging_dir) / source / _STAGED_BYTES
        if sha not in images:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / sha).write_bytes(data)
            images[sha] = (item.label, time, _extension(data))
            continue
        label, previous, extension = images[sha]
        if item.label != label and _newer(time, previous):
            images[sha] = (item.label, time, extension)
            counts["older label of a re-labelled image"] += 1
        elif item.label != label:
            counts["older label of a re-labelled image"] += 1
        else:
            if _newer(time, previous):
                images[sha] = (label, time, extension)
            counts["duplicate within a class"] += 1
    sources = []
    for source, images in best.items():
        base = Path(staging_dir) / source
        base.mkdir(parents=True, exist_ok=True)
        for sha, (label, _, extension) in images.items():
            (base / label).mkdir(exist_ok=True)
            os.replace(base / _STAGED_BYTES / sha, base / label / f"{sha}{extension}")
        shutil.rmtree(base / _STAGED_BYTES, ignore_errors=True)
        times = {sha: time for sha, (_, time, _) in images.items()}
        sources.append(
            images_from_folder(
                base,
                source,
                config,
                kind="labelled",
                location=location,
                times=times,
                selections=picked.get(source),
                dropped=dropped[source],
            )
        )
    return sources


@dataclass(frozen=True)
class SourceSpec:
    """A source named on the command line: ``trashnet`` or ``[NAME=]PATH_OR_URL[#sha256=HEX]``.

    Attributes:
        name: The source's name.
        location: ``trashnet`` (the configured archive), a folder, an archive path or a URL.
        sha256: The archive's expected sha256, when given.
    """

    name: str
    location: str
    sha256: str | None = None


_SHA_FRAGMENT = re.compile(r"#sha256=([0-9a-fA-F]{64})$")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def parse_source_spec(text: str) -> SourceSpec:
    """Parse ``trashnet``, ``PATH_OR_URL``, ``NAME=PATH_OR_URL``, each with ``#sha256=HEX``.

    Without a name, the name is the file or folder name, lowercased, without an archive suffix
    (``realwaste-200-dev.tar.gz`` -> ``realwaste-200-dev``).

    Raises:
        DatasetVersionError: No location, or no usable name.
    """
    text = text.strip()
    sha = None
    match = _SHA_FRAGMENT.search(text)
    if match:
        sha, text = match.group(1).lower(), text[: match.start()]
    if text == TRASHNET:
        return SourceSpec(TRASHNET, TRASHNET, sha)
    name, sep, rest = text.partition("=")
    if sep and SOURCE_NAME.fullmatch(name) and rest:
        return SourceSpec(name, rest, sha)
    if not text:
        raise DatasetVersionError("a source needs a location: a folder, an archive or a URL")
    base = text.rstrip("/").split("?")[0].rsplit("/", 1)[-1].lower()
    for suffix in _ARCHIVE_SUFFIXES:
        base = base.removesuffix(suffix)
    derived = re.sub(r"[^a-z0-9._-]+", "-", base).strip("-._")[:64]
    if not derived:
        raise DatasetVersionError(f"cannot name the source {text!r}: give NAME={text}")
    return SourceSpec(derived, text, sha)


def load_source(spec: SourceSpec, config: Config) -> SourceImages:
    """Fetch (cached) and validate the folder or archive a :class:`SourceSpec` names.

    ``trashnet`` is the configured archive (``data.source`` with its ``data.sha256``).

    Raises:
        garbage.training.data.fetch.DataFetchError: It cannot be fetched or fails its checksum.
        DatasetVersionError: Its name is invalid.
    """
    if spec.location == TRASHNET:
        root = fetch_dataset(config.data.source, config.data.sha256, config.data_cache_dir)
        return images_from_folder(
            root,
            spec.name,
            config.data,
            kind="archive",
            location=config.data.source,
            digest=config.data.sha256,
        )
    fetched = fetch_source(spec.location, config.data_cache_dir, spec.sha256)
    return images_from_folder(
        fetched.root,
        spec.name,
        config.data,
        kind=fetched.kind,
        location=spec.location,
        digest=fetched.sha256,
    )


# --------------------------------------------------------------------------------------------
# Building a version.


@dataclass
class BuildResult:
    """A built (or found) version.

    Attributes:
        name: The version's name.
        created: True when this build wrote it; False when it existed already.
        info: Its ``version.json``.
        manifest: Its rows.
    """

    name: str
    created: bool
    info: dict[str, Any]
    manifest: pd.DataFrame


def empty_manifest() -> pd.DataFrame:
    """A manifest without rows."""
    return pd.DataFrame({c: pd.Series(dtype=str) for c in COLUMNS})


def _split_new(
    rows: list[dict[str, Any]], config: SplitConfig, first_of_source: bool, notes: Counter[str]
) -> None:
    """Give each new row of one source its split, in place (see the module docstring)."""
    reviewed = [row for row in rows if row.get("selection") in SELECTIONS]
    if reviewed:
        _split_reviewed(reviewed, config)
        notes[f"{reviewed[0]['source']}: picked by a review (test slice from random picks)"] += len(
            reviewed
        )
        rows = [row for row in rows if row.get("selection") not in SELECTIONS]
        if not rows:
            return
    if not first_of_source:
        for row in rows:
            row["split"] = hash_split(row["sha256"], config, row["source"])
        return
    frame = pd.DataFrame(rows)
    uncapped = config.model_copy(update={"max_per_class": None})
    splits: dict[str, str] = {}
    for label, group in frame.groupby("label", sort=True):
        try:
            done = split_dataset(group[["sha256", "label"]].assign(path=group["sha256"]), uncapped)
            splits.update(zip(done["sha256"], done["split"], strict=True))
        except ValueError:  # too few images to stratify: the hash rule
            notes[f"{rows[0]['source']}/{label}: too few images to stratify, hash rule"] += len(
                group
            )
            for sha in group["sha256"]:
                splits[sha] = hash_split(sha, config, rows[0]["source"])
    for row in rows:
        row["split"] = splits[row["sha256"]]


def _split_reviewed(rows: list[dict[str, Any]], config: SplitConfig) -> None:
    """Split the new rows a review picked: a test slice from its random picks only.

    ``test_fraction`` of the rows go to test, all of them random picks (the lowest
    :func:`~garbage.training.data.split.split_uniform` values; fewer when there are fewer random
    picks): a uniform sample of the traffic, so the slice measures the site as the model meets
    it, not the hard cases the rest were picked for. The others go to val at
    ``val_fraction / (1 - test_fraction)`` by an independent draw, else to train.
    """
    source = rows[0]["source"]
    random = sorted(
        (row for row in rows if row["selection"] == SELECTION_RANDOM),
        key=lambda row: split_uniform(row["sha256"], config.seed, source),
    )
    test = {row["sha256"] for row in random[: round(len(rows) * config.test_fraction)]}
    val_share = config.val_fraction / (1 - config.test_fraction)
    for row in rows:
        if row["sha256"] in test:
            row["split"] = "test"
        elif split_uniform(row["sha256"], config.seed, f"{source}/val") < val_share:
            row["split"] = "val"
        else:
            row["split"] = "train"


def _combine(
    parent: pd.DataFrame, sources: Sequence[SourceImages]
) -> tuple[list[dict[str, Any]], dict[str, Path], Counter[str]]:
    """One row per image from the parent's rows and the sources' (see the module docstring).

    Returns:
        The rows (new ones without ``split`` and ``path``), each new image's file, and what was
        dropped or changed, by reason.
    """
    rows: dict[str, dict[str, Any]] = {
        r["sha256"]: {**r, "inherited": True} for r in parent.to_dict("records")
    }
    files: dict[str, Path] = {}
    candidates: dict[str, list[dict[str, Any]]] = {}
    for source in sources:
        for r in source.table.itertuples(index=False):
            candidates.setdefault(r.sha256, []).append(
                {
                    "sha256": r.sha256,
                    "label": r.label,
                    "source": source.name,
                    "time": r.time,
                    "selection": r.selection,
                }
            )
            files.setdefault(r.sha256, source.root / r.path)
    notes: Counter[str] = Counter()
    for sha, offered in candidates.items():
        existing = rows.get(sha)
        everyone = ([existing] if existing else []) + offered
        labels = {r["label"] for r in everyone}
        base = existing or offered[0]
        if len(labels) == 1:
            repeats = [r for r in offered if r is not base and r["source"] != base["source"]]
            if repeats:
                notes["same image in another source (kept once)"] += len(repeats)
            newest = max(everyone, key=lambda r: _parsed(r["time"]) or datetime.min)
            if existing is None:
                rows[sha] = {**base, "time": newest["time"]}
            continue
        dated = [r for r in everyone if r["time"]]
        if dated:
            winner = max(dated, key=lambda r: _parsed(r["time"]) or datetime.min)
            if existing is not None and winner["label"] != existing["label"]:
                rows[sha] = {**existing, "label": winner["label"], "time": winner["time"]}
                notes["re-labelled by a newer label"] += 1
            elif existing is None:
                rows[sha] = dict(winner)
            notes["older label of an image labelled differently (newest kept)"] += sum(
                1 for r in offered if r is not winner and r["label"] != winner["label"]
            )
        elif existing is not None:
            notes["undated label contradicting the parent's (parent's kept)"] += sum(
                1 for r in offered if r["label"] != existing["label"]
            )
        else:
            notes["same image under two classes in two sources (excluded)"] += len(offered)
            files.pop(sha, None)
    return list(rows.values()), files, +notes  # unary plus: without the reasons counted 0


def _counts(manifest: pd.DataFrame) -> dict[str, Any]:
    def by(column: str) -> dict[str, int]:
        return {str(k): int(v) for k, v in manifest.groupby(column).size().items()}

    nested: dict[str, dict[str, dict[str, int]]] = {}
    for (source, split, label), n in manifest.groupby(["source", "split", "label"]).size().items():
        nested.setdefault(str(source), {}).setdefault(str(split), {})[str(label)] = int(n)
    return {
        "images": len(manifest),
        "source": by("source"),
        "split": by("split"),
        "class": by("label"),
        "source_split_class": nested,
    }


def compare_versions(old: pd.DataFrame, new: pd.DataFrame) -> dict[str, Any]:
    """What changed from manifest ``old`` to ``new``.

    Returns:
        ``added`` (images, and counts per source and split), ``removed``, ``relabelled`` (each
        ``{sha256, from, to}``) and ``moved`` (images whose split changed: none between a parent
        and its child).
    """
    before = old.set_index("sha256")
    after = new.set_index("sha256")
    added = after.loc[after.index.difference(before.index)]
    both = after.index.intersection(before.index)
    relabelled = [
        {"sha256": sha, "from": str(before.at[sha, "label"]), "to": str(after.at[sha, "label"])}
        for sha in sorted(both)
        if before.at[sha, "label"] != after.at[sha, "label"]
    ]
    moved = [sha for sha in sorted(both) if before.at[sha, "split"] != after.at[sha, "split"]]
    per_source: dict[str, dict[str, int]] = {}
    counts = added.groupby(["source", "split"]).size()
    for source in sorted({str(s) for s, _ in counts.index}):
        per_source[source] = {
            split: int(counts[(source, split)]) for split in SPLITS if (source, split) in counts
        }
    return {
        "added": len(added),
        "added_per_source": per_source,
        "removed": len(before.index.difference(after.index)),
        "relabelled": relabelled,
        "moved": moved,
    }


def build_version(
    config: Config,
    sources: Sequence[SourceImages],
    parent: str | None = None,
    *,
    store: DatasetStore | None = None,
    now: datetime | None = None,
) -> BuildResult:
    """Build the version of ``parent``'s rows plus ``sources``, and store it unless it exists.

    ``version.json`` records the sources (each with its digest, images and what validation
    dropped; the parent's with the version that added them as ``added_in``), the parent, the
    created time, the code version, the split settings, the counts per source/split/class, the
    changes versus the parent (:func:`compare_versions`) and, as ``combined``, how the sources
    were combined (images kept once, re-labelled, excluded).

    Args:
        config: Its ``data`` (classes) and ``split`` (fractions, seed) settings.
        sources: The validated sources, in order (on a tie, the earlier one's row is kept).
        parent: The version it extends (its rows keep their splits); None for none.
        store: Where versions are kept (default: ``config``'s datasets root).
        now: The created time to record (default: now; naive means UTC).

    Returns:
        The version's name, whether this call wrote it, its ``version.json`` and rows.

    Raises:
        VersionNotFoundError: ``parent`` does not exist.
        DatasetVersionError: The result would hold no image.
    """
    store = store or open_store(config)
    parent_rows = version_manifest(store, parent) if parent else empty_manifest()
    inherited = []
    if parent:
        for source in read_info(store, parent)["sources"]:
            inherited.append({**source, "added_in": source.get("added_in", parent)})
    rows, files, notes = _combine(parent_rows, sources)
    if not rows:
        raise DatasetVersionError(
            "the version would hold no image: every source is empty or was dropped "
            f"({dict(notes) or 'nothing to add'}); check the --from locations"
        )
    known_sources = set(parent_rows["source"])
    new_by_source: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if not row.get("inherited"):
            new_by_source.setdefault(row["source"], []).append(row)
    for source, new in new_by_source.items():
        _split_new(new, config.split, source not in known_sources, notes)
    digest = version_digest(pd.DataFrame([{c: row[c] for c in DIGEST_COLUMNS} for row in rows]))
    name = version_name(digest)
    if name in store.names():
        return BuildResult(name, False, read_info(store, name), version_manifest(store, name))
    for row in rows:
        if not row.get("inherited"):
            data = files[row["sha256"]].read_bytes()
            row["path"] = image_path(row["sha256"], _extension(data, files[row["sha256"]].suffix))
            store.put_image(row["path"], data)
    manifest = pd.DataFrame([{c: row[c] for c in COLUMNS} for row in rows], columns=list(COLUMNS))
    manifest = _sorted(manifest)
    code = code_version()
    created_at = now or datetime.now(UTC)
    if created_at.tzinfo is None:  # naive: UTC, as everywhere in the project
        created_at = created_at.replace(tzinfo=UTC)
    info = {
        "name": name,
        "digest": digest,
        "created": created_at.astimezone(UTC).isoformat(),
        "parent": parent,
        "code": {"commit": code.commit, "dirty": code.dirty},
        "split": config.split.model_dump(mode="json", exclude={"max_per_class"}),
        "classes": list(config.data.classes),
        "sources": inherited + [s.summary() for s in sources],
        "counts": _counts(manifest),
        "changes": compare_versions(parent_rows, manifest),
        "combined": dict(notes),
    }
    created = store.publish(
        name,
        {
            MANIFEST_FILENAME: manifest.to_csv(index=False, lineterminator="\n"),
            INFO_FILENAME: json.dumps(info, indent=2) + "\n",
        },
    )
    if not created:  # another build wrote it meanwhile: that one is the version
        info = read_info(store, name)
    return BuildResult(name, created, info, manifest)


def _sorted(manifest: pd.DataFrame) -> pd.DataFrame:
    order = {s: i for i, s in enumerate(SPLITS)}
    return (
        manifest.assign(_order=manifest["split"].map(order))
        .sort_values(["source", "_order", "label", "sha256"], kind="mergesort")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


# --------------------------------------------------------------------------------------------
# Reading versions.


def version_manifest(store: DatasetStore, name: str) -> pd.DataFrame:
    """The rows of version ``name`` (every column text; an undated ``time`` is empty).

    Raises:
        VersionNotFoundError: No such version.
    """
    import io

    text = store.read_text(name, MANIFEST_FILENAME)
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)[list(COLUMNS)]


def read_info(store: DatasetStore, name: str) -> dict[str, Any]:
    """The ``version.json`` of version ``name``.

    Raises:
        VersionNotFoundError: No such version.
    """
    info: dict[str, Any] = json.loads(store.read_text(name, INFO_FILENAME))
    return info


def list_versions(store: DatasetStore) -> list[dict[str, Any]]:
    """The ``version.json`` of every stored version, oldest first."""
    infos = [read_info(store, name) for name in store.names()]
    return sorted(infos, key=lambda info: (info.get("created", ""), info["name"]))


def resolve_version(store: DatasetStore, reference: str | None) -> str | None:
    """The version a reference names: a name, ``latest`` (None when there is none) or ``none``.

    Raises:
        VersionNotFoundError: A name that is not stored.
        DatasetVersionError: Neither a name, ``latest`` nor ``none``.
    """
    if reference is None or reference == NO_PARENT:
        return None
    if reference == LATEST:
        versions = list_versions(store)
        return str(versions[-1]["name"]) if versions else None
    if not NAME_PATTERN.fullmatch(reference):
        raise DatasetVersionError(
            f"{reference!r} is not a dataset version: give ds-<12 hex digits>, latest or none"
        )
    store.read_text(reference, INFO_FILENAME)  # raises when it is not there
    return reference


# --------------------------------------------------------------------------------------------
# Training on a version.


def materialize_version(store: DatasetStore, name: str, out_dir: Path) -> int:
    """Write version ``name``'s images as class folders: ``out_dir/<label>/<sha><ext>``.

    Each image's bytes are checked against its hash on the way.

    Returns:
        The number of images written.

    Raises:
        VersionNotFoundError: No such version.
        DatasetVersionError: An image is missing or its bytes do not match its hash.
    """
    manifest = version_manifest(store, name)
    for row in manifest.itertuples(index=False):
        data = store.read_image(row.path)
        if hashlib.sha256(data).hexdigest() != row.sha256:
            raise DatasetVersionError(
                f"image {row.path} of {name} does not match its sha256 (the datasets root "
                f"{store.location} is damaged); rebuild the version from its sources"
            )
        target = Path(out_dir) / row.label / Path(row.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return len(manifest)


def apply_version_splits(table: pd.DataFrame, version: pd.DataFrame, name: str) -> pd.DataFrame:
    """The split manifest of the validated images of a version: its splits, sources and times.

    Args:
        table: The validate step's kept images (``path``, ``label``, ``sha256``, ...).
        version: The version's rows (:func:`version_manifest`).
        name: The version's name, for messages.

    Returns:
        ``table`` with the version's ``split``, ``source`` and ``time``, sorted by split, label
        and path (as :func:`garbage.training.data.split.split_dataset` sorts).

    Raises:
        DatasetVersionError: Validation left out images of the version (it was built under
            other ``data`` settings), or kept images that are not in it, or a label differs.
    """
    rows = version[["sha256", "label", "source", "time", "split"]].rename(
        columns={"label": "version_label"}
    )
    merged = table.merge(rows, on="sha256", how="outer", indicator=True)
    missing = merged[merged["_merge"] == "right_only"]
    extra = merged[merged["_merge"] == "left_only"]
    if len(missing) or len(extra):
        raise DatasetVersionError(
            f"the validated images are not those of {name}: {len(missing)} of its images were "
            f"left out by validation, {len(extra)} kept images are not in it; build the version "
            "under the same data settings (allowed formats, sizes, classes) as the training"
        )
    wrong = merged[merged["label"] != merged["version_label"]]
    if len(wrong):
        raise DatasetVersionError(
            f"{len(wrong)} images of {name} lie in another class folder than their label "
            f"(e.g. {wrong['path'].iloc[0]}); materialize the version again"
        )
    result = merged.drop(columns=["_merge", "version_label"])
    result["split"] = pd.Categorical(result["split"], categories=SPLITS, ordered=True)
    result = result.sort_values(["split", "label", "path"]).reset_index(drop=True)
    result["split"] = result["split"].astype(str)
    return result


# --------------------------------------------------------------------------------------------
# Text for people.


def _table_lines(info: Mapping[str, Any]) -> Iterator[str]:
    classes = list(info.get("classes") or info["counts"]["class"])
    yield "| source | split | " + " | ".join(classes) + " | total |"
    yield "| --- | --- | " + " | ".join("---:" for _ in classes) + " | ---: |"
    for source, splits in sorted(info["counts"]["source_split_class"].items()):
        for split in SPLITS:
            counts = splits.get(split, {})
            if not counts:
                continue
            cells = " | ".join(str(counts.get(c, 0)) for c in classes)
            yield f"| {source} | {split} | {cells} | {sum(counts.values())} |"


def describe_version(info: Mapping[str, Any], created: bool | None = None) -> str:
    """A version's ``version.json`` for people: name, sources, counts, changes, dropped.

    Args:
        info: The version's ``version.json``.
        created: Whether a build just wrote it (True), found it (False), or neither (None).
    """
    state = {True: " (new)", False: " (exists already: nothing new)", None: ""}[created]
    code = info.get("code", {})
    lines = [
        f"{info['name']}{state}",
        f"digest {info['digest']}; {info['counts']['images']} images; created {info['created']} "
        f"by {str(code.get('commit', 'unknown'))[:7]}{'+dirty' if code.get('dirty') else ''}; "
        f"parent {info.get('parent') or 'none'}",
        "",
        "sources:",
    ]
    for source in info["sources"]:
        dropped = ", ".join(f"{n} {why}" for why, n in source.get("dropped", {}).items())
        lines.append(
            f"  {source['name']}: {source['kind']} {source['location']} "
            f"(digest {str(source['digest'])[:12]}), {source['images']} images"
            + (f"; dropped {dropped}" if dropped else "")
            + (f" (added in {source['added_in']})" if source.get("added_in") else "")
        )
    lines += ["", *_table_lines(info), ""]
    changes = info.get("changes", {})
    added = "; ".join(
        f"{source} " + ", ".join(f"{split} +{n}" for split, n in splits.items())
        for source, splits in changes.get("added_per_source", {}).items()
    )
    lines.append(
        f"changes versus {info.get('parent') or 'nothing'}: +{changes.get('added', 0)} images"
        + (f" ({added})" if added else "")
        + f", {len(changes.get('relabelled', []))} re-labelled, "
        f"{changes.get('removed', 0)} removed, {len(changes.get('moved', []))} moved between splits"
    )
    if info.get("combined"):
        lines.append(
            "combining the sources: "
            + "; ".join(f"{n} {why}" for why, n in info["combined"].items())
        )
    return "\n".join(lines) + "\n"
