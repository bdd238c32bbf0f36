"""Fetch a dataset archive by URL or local path, verify its checksum, extract it into a cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from garbage.core.config import ENV_DATA_SHA256, ENV_DATA_SOURCE

_CHUNK = 1 << 20
_COMPLETE_MARKER = ".extracted-sha256"


class DataFetchError(RuntimeError):
    """The archive could not be downloaded, read, verified or extracted."""


def sha256_of(path: Path) -> str:
    """Return the hex sha256 digest of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _download(url: str, destination: Path) -> None:
    partial = destination.with_suffix(destination.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=f"download {destination.name}"
            ) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        partial.unlink(missing_ok=True)
        raise DataFetchError(
            f"cannot download {url}: {e}. On a machine without internet access, point "
            f"{ENV_DATA_SOURCE} at a local copy of the archive "
            f"(and {ENV_DATA_SHA256} at its sha256)."
        ) from e
    partial.replace(destination)


def _archive_path(source: str, sha256: str, cache_dir: Path) -> Path:
    name = Path(source.rstrip("/").split("?")[0]).name or "dataset.tar.gz"
    return cache_dir / "archives" / f"{sha256[:12]}-{name}"


def _untrusted_member(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
    """Python's ``data`` filter, and no absolute names (which that filter makes relative).

    The ``data`` filter refuses ``..`` out of the folder, links and hard links that lead out,
    devices, and drops set-id bits.
    """
    if member.name.startswith(("/", "\\")) or Path(member.name).is_absolute():
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, path)


def _extract(archive: Path, destination: Path) -> None:
    staging = destination.with_name(destination.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter=_untrusted_member)
    except tarfile.FilterError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataFetchError(
            f"refusing to extract {archive}: {e} (a member would land outside the extraction "
            "folder or is not a plain file or folder); the archive is crafted or broken, check "
            f"where {ENV_DATA_SOURCE} points"
        ) from e
    except (tarfile.TarError, OSError) as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataFetchError(f"cannot extract {archive}: {e}") from e
    shutil.rmtree(destination, ignore_errors=True)
    staging.replace(destination)


def find_image_root(extracted: Path) -> Path:
    """Return the folder whose sub-folders are the classes (archives often wrap it in a folder)."""
    root = extracted
    while True:
        children = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(children) == 1 and children[0].is_dir() and any(children[0].iterdir()):
            inner = [p for p in children[0].iterdir() if not p.name.startswith(".")]
            if inner and all(p.is_dir() for p in inner):
                root = children[0]
                continue
        return root


def fetch_dataset(source: str, sha256: str, cache_dir: Path) -> Path:
    """Make the dataset available locally and return the folder that holds its class folders.

    Nothing is downloaded or extracted again when the cached archive and tree are present and valid.

    Args:
        source: http(s) URL or local path of a ``.tar.gz`` archive.
        sha256: Expected sha256 of the archive.
        cache_dir: Cache folder (archives and extracted trees).

    Raises:
        DataFetchError: The source is missing or unreachable, or its checksum does not match.
    """
    cache_dir = Path(cache_dir)
    sha256 = sha256.lower()
    extracted = cache_dir / "extracted" / sha256[:16]
    marker = extracted / _COMPLETE_MARKER
    if marker.is_file() and marker.read_text().strip() == sha256:
        return find_image_root(extracted)

    archive = _archive_path(source, sha256, cache_dir)
    archive.parent.mkdir(parents=True, exist_ok=True)
    if not (archive.is_file() and sha256_of(archive) == sha256):
        if _is_url(source):
            _download(source, archive)
        else:
            local = Path(source).expanduser()
            if not local.is_file():
                raise DataFetchError(
                    f"data source {source!r} is neither an http(s) URL nor an existing file; "
                    f"set {ENV_DATA_SOURCE} to the archive's URL or path."
                )
            shutil.copyfile(local, archive)
    actual = sha256_of(archive)
    if actual != sha256:
        archive.unlink(missing_ok=True)
        raise DataFetchError(
            f"checksum mismatch for {source}: expected sha256 {sha256}, got {actual}. "
            f"If the source is right, set {ENV_DATA_SHA256}={actual}; "
            f"otherwise fix {ENV_DATA_SOURCE}."
        )
    _extract(archive, extracted)
    marker.write_text(sha256 + "\n")
    return find_image_root(extracted)


#: URL schemes :func:`fetch_source` reads archives from through fsspec (s3fs for ``s3://``).
FSSPEC_SCHEMES = ("s3://",)


@dataclass(frozen=True)
class FetchedSource:
    """A dataset source made available locally.

    Attributes:
        root: The folder that holds the class folders.
        kind: ``archive`` (a ``.tar.gz``/``.tar`` file, local or remote) or ``folder``.
        sha256: The archive's sha256; None for a folder (its digest is its images').
    """

    root: Path
    kind: str
    sha256: str | None


def _fetch_with_fsspec(url: str, destination: Path) -> None:
    """Copy ``url`` (``s3://...``) to ``destination`` through fsspec, atomically."""
    partial = destination.with_suffix(destination.suffix + ".part")
    try:
        import fsspec

        with fsspec.open(url, "rb") as source, partial.open("wb") as out:
            shutil.copyfileobj(source, out, _CHUNK)
    except ImportError as e:
        partial.unlink(missing_ok=True)
        raise DataFetchError(
            f"cannot read {url}: {e} (s3:// needs the s3fs package: pip install s3fs)"
        ) from e
    except Exception as e:  # fsspec backends raise their own types (botocore's are no OSError)
        partial.unlink(missing_ok=True)
        raise DataFetchError(
            f"cannot read {url}: {e.__class__.__name__}: {e} (for S3 set AWS_ENDPOINT_URL, "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        ) from e
    partial.replace(destination)


def fetch_source(location: str, cache_dir: Path, sha256: str | None = None) -> FetchedSource:
    """Make any dataset source available locally: a folder of class folders, or an archive.

    Args:
        location: A local folder of class folders, or a ``.tar.gz``/``.tar`` archive: a local
            path, an http(s) URL or an ``s3://`` URL.
        cache_dir: The cache (archives and extracted trees, as :func:`fetch_dataset`).
        sha256: The archive's expected sha256; None: whatever it is (it is recorded; a remote
            archive without one is downloaded again on every call, to learn it).

    Returns:
        The folder of class folders, what the source is and the archive's sha256.

    Raises:
        DataFetchError: The source is missing, unreachable or of an unsupported kind, or its
            checksum is not ``sha256``.
    """
    cache_dir = Path(cache_dir)
    expected = sha256.lower() if sha256 else None
    if "://" in location and not _is_url(location) and not location.startswith(FSSPEC_SCHEMES):
        raise DataFetchError(
            f"data source {location!r}: its scheme is not supported yet; give a local folder or "
            "archive, an http(s) URL or an s3:// URL of an archive"
        )
    if _is_url(location) and expected:
        return FetchedSource(fetch_dataset(location, expected, cache_dir), "archive", expected)
    if _is_url(location) or location.startswith(FSSPEC_SCHEMES):
        downloads = cache_dir / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(location.encode()).hexdigest()[:12]
        name = Path(location.rstrip("/").split("?")[0]).name or "dataset.tar.gz"
        local = downloads / f"{key}-{os.getpid()}-{name}"
        try:
            if _is_url(location):
                _download(location, local)
            else:
                _fetch_with_fsspec(location, local)
            actual = sha256_of(local)
            if expected and actual != expected:
                raise DataFetchError(
                    f"checksum mismatch for {location}: expected sha256 {expected}, got {actual}"
                )
            return FetchedSource(fetch_dataset(str(local), actual, cache_dir), "archive", actual)
        finally:
            local.unlink(missing_ok=True)
    path = Path(location).expanduser()
    if path.is_dir():
        return FetchedSource(find_image_root(path), "folder", None)
    if not path.is_file():
        raise DataFetchError(
            f"data source {location!r} is neither an existing folder or archive nor an "
            "http(s) or s3:// URL"
        )
    actual = sha256_of(path)
    if expected and actual != expected:
        raise DataFetchError(
            f"checksum mismatch for {location}: expected sha256 {expected}, got {actual}"
        )
    return FetchedSource(fetch_dataset(str(path), actual, cache_dir), "archive", actual)
