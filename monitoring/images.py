"""The image store: every logged image kept once, content-addressed by its SHA-256, with retention.

Where: a URL that fsspec opens: a local folder by default (a path, or ``file://...``), an
S3-compatible bucket on a cluster (``s3://bucket/prefix``, through s3fs; the endpoint and keys
come from the standard ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``
or from fsspec storage options), or anything else fsspec knows (``memory://`` in tests).

Layout: an image's key is ``<sha[:2]>/<sha>``, the lowercase hex SHA-256 of its bytes, without
an extension, so the key follows from the hash alone and a reader needs nothing else to find it;
the content type is sniffed from the bytes when they are served (:func:`media_type`). The bytes
are untrusted and kept exactly as the client sent them: this module never decodes them (the
collector has decoded them already; :func:`dhash` takes the decoded image). A write happens once:
:meth:`ImageStore.put` of bytes that are there already writes nothing. On a local disk a write
is atomic (a temporary file in the same folder, then a rename), so a reader never sees half an
image, and concurrent puts of the same bytes leave one complete file.

Retention (:func:`prune_images`) deletes images by age (last seen more than ``keep_days`` ago)
and by total size (over ``keep_bytes``, oldest first), from the ``images`` table of the
inference store, never by listing the bucket. Labelled images (a row of ``inference_log`` that
points at the image has a true label) are exempt from the age limit, since they are what the
next dataset version is built from; the size limit takes unlabelled images first and labelled
ones only when the unlabelled alone cannot bring the total under it (each such deletion is
logged as a warning). A deleted image leaves its rows in place: features, prediction, labels and
``image_sha256`` stay; the ``images`` table records ``deleted_at``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

if TYPE_CHECKING:
    from monitoring.store import InferenceStore

log = logging.getLogger(__name__)

SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
"""A store key's hash: 64 lowercase hex digits."""
DHASH_PATTERN = re.compile(r"[0-9a-f]{16}")
"""A difference hash: 16 lowercase hex digits (64 bits)."""
ENDPOINT_ENV = "AWS_ENDPOINT_URL"
"""The S3 endpoint (MinIO's URL on the cluster); the keys are botocore's usual variables."""
JPEG_MEDIA_TYPE, PNG_MEDIA_TYPE = "image/jpeg", "image/png"
OCTET_STREAM = "application/octet-stream"
_SIGNATURES = ((b"\xff\xd8\xff", JPEG_MEDIA_TYPE), (b"\x89PNG\r\n\x1a\n", PNG_MEDIA_TYPE))
#: s3fs settings unless storage options say otherwise: fail within seconds when the endpoint is
#: down (the collector logs the event without its image then) instead of retrying for minutes.
S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}},
}
GB = 10**9
"""``--keep-images-gb`` counts decimal gigabytes."""


class ImageStoreError(RuntimeError):
    """The image store cannot be opened, read or written; the message names the store's URL."""


class ImageNotFoundError(LookupError):
    """No image with this hash is stored (never stored, or deleted by retention)."""


class InvalidDigestError(ValueError):
    """A hash that is not 64 lowercase hex digits (or, for :func:`hamming`, 16)."""


def check_sha256(sha256: str) -> str:
    """Return ``sha256`` when it is 64 lowercase hex digits.

    Raises:
        InvalidDigestError: Anything else (so no key can leave the store's folder).
    """
    if not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256):
        raise InvalidDigestError(
            "an image hash is the SHA-256 of its bytes: 64 lowercase hex digits"
        )
    return sha256


def image_key(sha256: str) -> str:
    """The key of the image with this hash, relative to the store's root: ``<sha[:2]>/<sha>``.

    Raises:
        InvalidDigestError: ``sha256`` is not 64 lowercase hex digits.
    """
    check_sha256(sha256)
    return f"{sha256[:2]}/{sha256}"


def media_type(data: bytes) -> str:
    """The content type to serve ``data`` with: JPEG or PNG by their signature, else octet-stream.

    Only these two are named because they are the formats the collector accepts; anything else
    is served as opaque bytes, never as a type a browser would interpret.
    """
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return OCTET_STREAM


def dhash(image: Image.Image) -> str:
    """A 64-bit difference hash of an image: 16 hex digits, for near-duplicate detection.

    The image is reduced to 9 x 8 grey pixels; each bit says whether a pixel is brighter than its
    left neighbour. Re-encoding, rescaling and small edits change few bits; a different scene
    changes about half of them. Compare two with :func:`hamming`.

    Args:
        image: A decoded image, any mode.

    Returns:
        16 lowercase hex digits, the first row's bits most significant.
    """
    # Shrink first, then grey (both linear, so the order hardly matters): a 40-megapixel photo
    # then takes milliseconds instead of a full-size grey copy.
    source = image if image.mode in ("RGB", "L") else image.convert("RGB")
    grey = source.resize((9, 8), Image.Resampling.LANCZOS, reducing_gap=3.0).convert("L")
    pixels = np.asarray(grey, dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).flatten()
    return f"{int(''.join('1' if bit else '0' for bit in bits), 2):016x}"


def hamming(a: str, b: str) -> int:
    """The number of bits in which two :func:`dhash` values differ (0 to 64).

    Raises:
        InvalidDigestError: Either is not 16 hex digits.
    """
    for value in (a, b):
        if not isinstance(value, str) or not DHASH_PATTERN.fullmatch(value.lower()):
            raise InvalidDigestError("a difference hash is 16 hex digits (64 bits)")
    return (int(a, 16) ^ int(b, 16)).bit_count()


def encode_png(pixels: np.ndarray) -> bytes:
    """Pixels (``[H, W, 3]`` uint8) as a lossless PNG: how an image sent as a tensor is stored."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def default_image_store(db: str, work_dir: Path) -> str:
    """Where a store's images are kept by default.

    The folder ``images`` beside a SQLite store's file (writable wherever the database is), else
    ``<work_dir>/monitoring/images``.
    """
    from monitoring.store import normalise_url

    url = normalise_url(db)
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
    if path and path != ":memory:":
        return str(Path(path).parent / "images")
    return str(work_dir / "monitoring" / "images")


def _storage_options(
    protocol: str, options: Mapping[str, Any] | None, environ: Mapping[str, str]
) -> dict[str, Any]:
    merged = dict(options or {})
    if protocol in ("s3", "s3a"):
        for key, value in S3_DEFAULTS.items():
            merged.setdefault(key, value)
        endpoint = environ.get(ENDPOINT_ENV)
        client_kwargs = merged.get("client_kwargs") or {}
        if endpoint and "endpoint_url" not in merged and "endpoint_url" not in client_kwargs:
            merged["endpoint_url"] = endpoint
    return merged


class ImageStore:
    """Images by the SHA-256 of their bytes, in a folder or a bucket (any fsspec URL).

    Attributes:
        location: The store's URL as given (a path, ``file://``, ``s3://bucket/prefix``, ...).
    """

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """Open the store at ``url``; a local folder is created when missing.

        Args:
            url: A folder (path or ``file://``), ``s3://bucket/prefix`` or another fsspec URL.
            storage_options: fsspec options for the filesystem (for S3: ``endpoint_url``,
                ``key``, ``secret``, ``client_kwargs``...); for S3 the endpoint defaults to
                ``$AWS_ENDPOINT_URL`` and the keys to botocore's environment variables.
            environ: The environment to read ``AWS_ENDPOINT_URL`` from (default ``os.environ``).

        Raises:
            ImageStoreError: The URL's protocol is unknown or its library is missing (s3fs for
                ``s3://``), or a local folder cannot be created.
        """
        self.location = url
        environ = os.environ if environ is None else environ
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        try:
            fs, root = fsspec.core.url_to_fs(
                url, **_storage_options(protocol, storage_options, environ)
            )
        except ImportError as e:
            raise ImageStoreError(
                f"cannot open the image store {url}: {e} (s3:// needs the s3fs package: "
                "pip install s3fs)"
            ) from e
        except ValueError as e:
            raise ImageStoreError(
                f"cannot open the image store {url}: {e}; give a folder, file://... or "
                "s3://bucket/prefix"
            ) from e
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = str(root).rstrip("/")
        self._local = isinstance(fs, LocalFileSystem)
        if self._local:
            try:
                Path(self.root).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ImageStoreError(f"cannot create the image store folder {url}: {e}") from e

    def __repr__(self) -> str:
        return f"ImageStore({self.location!r})"

    def _path(self, sha256: str) -> str:
        return f"{self.root}/{image_key(sha256)}"

    def _fail(self, what: str, sha256: str, error: Exception) -> ImageStoreError:
        return ImageStoreError(
            f"cannot {what} image {sha256[:12]} in the image store {self.location}: "
            f"{error.__class__.__name__}: {error}"
        )

    def url(self, sha256: str) -> str:
        """The full URL of the image's object (``s3://bucket/prefix/ab/ab...``, ``file:///...``).

        A storage URL, for tools that read the store directly; a labeller's browser gets the
        image from the collector's ``GET /images/{sha256}`` instead.

        Raises:
            InvalidDigestError: ``sha256`` is not 64 lowercase hex digits.
        """
        return str(self.fs.unstrip_protocol(self._path(sha256)))

    def exists(self, sha256: str) -> bool:
        """Whether the image with this hash is stored.

        Raises:
            InvalidDigestError: ``sha256`` is not 64 lowercase hex digits.
            ImageStoreError: The store cannot be read.
        """
        path = self._path(sha256)
        if self._local:
            return os.path.isfile(path)
        try:
            return bool(self.fs.exists(path))
        except Exception as e:  # fsspec backends raise their own types (botocore's are no OSError)
            raise self._fail("look up", sha256, e) from e

    def put(self, data: bytes) -> str:
        """Store ``data`` under its SHA-256 unless it is stored already; return the hash.

        Raises:
            ImageStoreError: The store cannot be written.
        """
        return self.save(data)[0]

    def save(self, data: bytes) -> tuple[str, bool]:
        """Like :meth:`put`, and say whether the bytes were written (False: stored already).

        Raises:
            ImageStoreError: The store cannot be written.
        """
        sha256 = hashlib.sha256(data).hexdigest()
        if self.exists(sha256):
            return sha256, False
        path = self._path(sha256)
        try:
            if self._local:
                self._write_local(path, data)
            else:
                self.fs.pipe_file(path, data)
        except Exception as e:  # fsspec backends raise their own types (botocore's are no OSError)
            raise self._fail("write", sha256, e) from e
        return sha256, True

    @staticmethod
    def _write_local(path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` atomically: a temporary file in its folder, then a rename."""
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".incoming-", dir=folder)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def get(self, sha256: str) -> bytes:
        """The bytes of the image with this hash, as they were stored.

        Raises:
            InvalidDigestError: ``sha256`` is not 64 lowercase hex digits.
            ImageNotFoundError: No such image is stored.
            ImageStoreError: The store cannot be read.
        """
        path = self._path(sha256)
        try:
            if self._local:
                return Path(path).read_bytes()
            return bytes(self.fs.cat_file(path))
        except FileNotFoundError as e:
            raise ImageNotFoundError(f"no stored image {sha256}") from e
        except Exception as e:  # fsspec backends raise their own types (botocore's are no OSError)
            raise self._fail("read", sha256, e) from e

    def delete(self, sha256: str) -> bool:
        """Delete the image with this hash; return whether it was there.

        Raises:
            InvalidDigestError: ``sha256`` is not 64 lowercase hex digits.
            ImageStoreError: The store refused the deletion.
        """
        path = self._path(sha256)
        try:
            if self._local:
                try:
                    os.remove(path)
                except FileNotFoundError:
                    return False
                return True
            if not self.fs.exists(path):
                return False
            self.fs.rm_file(path)
            return True
        except Exception as e:  # fsspec backends raise their own types (botocore's are no OSError)
            raise self._fail("delete", sha256, e) from e


@dataclass(frozen=True)
class Retention:
    """How long and how much the image store keeps; None means no limit of that kind.

    Attributes:
        keep_days: Delete unlabelled images last seen more than this many days ago.
        keep_bytes: Keep the stored images' total size at or under this many bytes, deleting
            the least recently seen first (unlabelled before labelled).
    """

    keep_days: float | None = None
    keep_bytes: int | None = None

    def __post_init__(self) -> None:
        """Refuse negative limits.

        Raises:
            ValueError: A limit is negative.
        """
        if self.keep_days is not None and self.keep_days < 0:
            raise ValueError(f"keep_days must be 0 or more, got {self.keep_days}")
        if self.keep_bytes is not None and self.keep_bytes < 0:
            raise ValueError(f"keep_bytes must be 0 or more, got {self.keep_bytes}")

    @property
    def active(self) -> bool:
        """Whether any limit is set."""
        return self.keep_days is not None or self.keep_bytes is not None


@dataclass
class PruneResult:
    """What one :func:`prune_images` run did.

    Attributes:
        deleted: Images deleted, by reason (``age``, ``size``).
        freed_bytes: Their total size.
        labelled_deleted: How many of them were labelled (only the size limit deletes those).
        images: Images stored after the run.
        total_bytes: Their total size.
    """

    deleted: dict[str, int] = field(default_factory=lambda: {"age": 0, "size": 0})
    freed_bytes: int = 0
    labelled_deleted: int = 0
    images: int = 0
    total_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready values."""
        return {
            "deleted": dict(self.deleted),
            "freed_bytes": self.freed_bytes,
            "labelled_deleted": self.labelled_deleted,
            "images": self.images,
            "total_bytes": self.total_bytes,
        }


def prune_images(
    store: InferenceStore,
    images: ImageStore,
    retention: Retention,
    *,
    now: datetime | None = None,
    lock: AbstractContextManager[Any] | None = None,
    batch: int = 200,
    on_delete: Callable[[str, int], None] | None = None,
) -> PruneResult:
    """Apply ``retention`` once: delete images by age, then by total size, oldest first.

    Each batch is claimed in the ``images`` table first (``deleted_at`` set, only where the image
    was not seen again since it was chosen), then deleted from the store; an image whose deletion
    fails is released again and the run stops (the next run retries it), so the table never
    calls an image deleted that is still stored.

    Args:
        store: The inference store with the ``images`` table.
        images: Where the bytes are.
        retention: The limits; without any, nothing is deleted.
        now: The time the age limit counts back from (naive UTC; default: now).
        lock: Held around each batch; the collector holds the same lock while it records and
            stores an event's images, so an image seen again is never deleted under it.
        batch: Images claimed and deleted per batch.
        on_delete: Called with ``(reason, count)`` after each batch (metrics).

    Returns:
        What was deleted and what is left.

    Raises:
        StoreError: The inference store failed.
        ImageStoreError: The image store refused a deletion (the images deleted before it stay
            deleted and counted in the table).
    """
    now = now or datetime.now(UTC).replace(tzinfo=None)
    result = PruneResult()
    guard: AbstractContextManager[Any] = lock if lock is not None else nullcontext()
    older_than = (
        now - timedelta(days=retention.keep_days) if retention.keep_days is not None else None
    )
    while retention.active:
        candidates = store.images_to_prune(older_than, retention.keep_bytes, limit=batch)
        if not candidates:
            break
        with guard:
            claimed = store.claim_images_for_deletion(candidates, now)
            failed: list[str] = []
            error: ImageStoreError | None = None
            for candidate in claimed:
                try:
                    images.delete(candidate.sha256)
                except ImageStoreError as e:
                    failed.append(candidate.sha256)
                    error = error or e
            if failed:
                store.release_images(failed)
        done = [c for c in claimed if c.sha256 not in set(failed)]
        for reason in ("age", "size"):
            count = sum(1 for c in done if c.reason == reason)
            result.deleted[reason] += count
            if count and on_delete is not None:
                on_delete(reason, count)
        result.freed_bytes += sum(c.size_bytes for c in done)
        labelled = [c for c in done if c.labelled]
        result.labelled_deleted += len(labelled)
        if labelled:
            log.warning(
                "image retention deleted %d labelled images to stay under %d bytes: raise "
                "--keep-images-gb to keep the images labels were given for",
                len(labelled),
                retention.keep_bytes,
            )
        if error is not None:
            raise error
        if not claimed:
            break  # every candidate was seen again meanwhile: the next run looks afresh
    result.images, result.total_bytes = store.image_usage()
    return result
