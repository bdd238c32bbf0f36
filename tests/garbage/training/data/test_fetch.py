"""Fetching archives by path and over real HTTP, with checksums and a cache."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from support import CLASSES, make_archive, make_image_tree

from garbage.training.data.fetch import DataFetchError, fetch_dataset, find_image_root


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, str]:
    tree = tmp_path / "src"
    make_image_tree(tree / "dataset-resized", per_class=2)
    path = make_archive(tree, tmp_path / "data.tar.gz")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on loopback serving a folder."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()


def test_local_archive_is_verified_extracted_and_cached(archive, tmp_path: Path) -> None:
    path, sha = archive
    root = fetch_dataset(str(path), sha, tmp_path / "cache")
    assert sorted(p.name for p in root.iterdir()) == CLASSES
    assert root.name == "dataset-resized"  # the wrapping folder is looked through
    marker_time = next((tmp_path / "cache" / "extracted").iterdir()).stat().st_mtime_ns
    path.unlink()  # a second fetch must not need the source at all
    assert fetch_dataset(str(path), sha, tmp_path / "cache") == root
    assert next((tmp_path / "cache" / "extracted").iterdir()).stat().st_mtime_ns == marker_time


def test_download_over_http(archive, http_root, tmp_path: Path) -> None:
    path, sha = archive
    url, folder = http_root
    (folder / "data.tar.gz").write_bytes(path.read_bytes())
    root = fetch_dataset(f"{url}/data.tar.gz", sha, tmp_path / "cache")
    assert len(list(root.rglob("*.jpg"))) == 2 * len(CLASSES)


def test_checksum_mismatch_names_the_override(archive, tmp_path: Path) -> None:
    path, _ = archive
    with pytest.raises(DataFetchError, match="GARBAGE_DATA_SHA256") as info:
        fetch_dataset(str(path), "0" * 64, tmp_path / "cache")
    assert "checksum mismatch" in str(info.value)
    assert not list((tmp_path / "cache" / "archives").iterdir())  # the bad copy is not kept


def test_failed_download_names_the_override(http_root, tmp_path: Path) -> None:
    url, _ = http_root
    with pytest.raises(DataFetchError, match="GARBAGE_DATA_SOURCE"):
        fetch_dataset(f"{url}/missing.tar.gz", "0" * 64, tmp_path / "cache")


def test_missing_local_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataFetchError, match="neither an http"):
        fetch_dataset(str(tmp_path / "nope.tar.gz"), "0" * 64, tmp_path / "cache")


def test_find_image_root_stops_at_class_folders(tmp_path: Path) -> None:
    make_image_tree(tmp_path / "a" / "b", per_class=1)
    assert find_image_root(tmp_path) == tmp_path / "a" / "b"


def _crafted_archive(path: Path, member: tarfile.TarInfo) -> str:
    """A .tar.gz holding one good image folder and ``member``; returns its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("dataset/glass/ok.jpg")
        good.size = 3
        tar.addfile(good, io.BytesIO(b"jpg"))
        data = b"pwned"
        if member.isfile():
            member.size = len(data)
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("../escaped.txt"),
        _member("dataset/../../escaped.txt"),
        _member("TMP/escaped-absolute.txt"),  # the test's folder, as an absolute path
        _member("dataset/link", tarfile.SYMTYPE, "../../escaped.txt"),
        _member("dataset/abs-link", tarfile.SYMTYPE, "/etc/passwd"),
        _member("dataset/hard", tarfile.LNKTYPE, "../../escaped.txt"),
        _member("dataset/device", tarfile.CHRTYPE),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "symlink-out",
        "absolute-symlink",
        "hardlink-out",
        "device",
    ],
)
def test_an_archive_member_that_leads_out_is_refused(
    tmp_path: Path, member: tarfile.TarInfo
) -> None:
    cache = tmp_path / "deep" / "cache"
    archive = tmp_path / "crafted.tar.gz"
    member.name = member.name.replace("TMP", str(tmp_path))
    sha = _crafted_archive(archive, member)
    with pytest.raises(DataFetchError, match="refusing to extract") as raised:
        fetch_dataset(str(archive), sha, cache)
    assert "outside the extraction folder" in str(raised.value)
    assert not list(tmp_path.rglob("*escaped*"))
    assert not list((cache / "extracted").iterdir())  # nothing half-extracted is kept
