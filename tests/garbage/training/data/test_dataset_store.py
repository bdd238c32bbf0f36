"""The datasets root on any fsspec URL: a local folder, ``memory://`` and S3.

S3 runs against moto's server mode (``ThreadedMotoServer``): a FAKE S3 on 127.0.0.1, since
MinIO (the store on the cluster) cannot run here; s3fs, botocore and the HTTP between them are
the real ones. The same tests run on every kind of root.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from support import make_image_tree

from garbage.core.config import Config, load_config
from garbage.training.data.versions import (
    INFO_FILENAME,
    MANIFEST_FILENAME,
    DatasetStore,
    DatasetStoreError,
    SourceImages,
    StoreCredentialsError,
    StoreUnreachableError,
    UnsupportedLocationError,
    VersionNotFoundError,
    build_version,
    images_from_folder,
    list_versions,
    materialize_version,
    read_info,
    resolve_version,
    version_manifest,
)

T0 = datetime(2026, 11, 1, 8, 0, 0)
BUCKET = "garbage-datasets"
KINDS = ["local", "memory", pytest.param("s3", marks=pytest.mark.integration)]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(profile="smoke", overrides=[f"work_dir={tmp_path / 'work'}"], environ={})


@pytest.fixture(scope="module")
def fake_s3() -> Iterator[str]:
    """moto's S3 server on a free loopback port (a FAKE S3: MinIO cannot run here), with the
    bucket ``garbage-datasets``; yields its endpoint URL."""
    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    from support import free_port

    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="fake",
        aws_secret_access_key="fake",
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


def _s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "fake")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(params=KINDS)
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DatasetStore]:
    """An empty datasets root of each kind: a folder, ``memory://`` and a prefix in fake S3."""
    unique = uuid.uuid4().hex[:8]
    if request.param == "local":
        yield DatasetStore(tmp_path / "datasets")
        return
    if request.param == "memory":
        opened = DatasetStore(f"memory://datasets-{unique}")
        try:
            yield opened
        finally:
            if opened.fs.exists(opened.root):
                opened.fs.rm(opened.root, recursive=True)
        return
    endpoint = request.getfixturevalue("fake_s3")
    _s3_credentials(monkeypatch)
    # The endpoint from the standard variable, as on the cluster (AWS_ENDPOINT_URL).
    yield DatasetStore(f"s3://{BUCKET}/{unique}", environ={"AWS_ENDPOINT_URL": endpoint})


def _source(root: Path, config: Config, name: str, seed: int = 0) -> SourceImages:
    tree = make_image_tree(root, per_class=3)
    if seed:  # other bytes: another version
        for path in sorted(tree.rglob("*.jpg"))[:2]:
            path.write_bytes(path.read_bytes() + bytes([seed]))
    return images_from_folder(tree, name, config.data)


def _delete(store: DatasetStore, path: str) -> None:
    """Delete a file under the root behind the store's back (a write that stopped halfway)."""
    if store.is_local:
        (Path(store.root) / path).unlink()
    else:
        store.fs.rm_file(f"{store.root}/{path}")


def test_a_version_is_built_listed_read_and_materialized(
    store: DatasetStore, config: Config, tmp_path: Path
) -> None:
    first = build_version(config, [_source(tmp_path / "a", config, "a")], store=store, now=T0)
    assert first.created and store.names() == [first.name]
    again = build_version(
        config,
        [_source(tmp_path / "a2", config, "a")],
        store=store,
        now=T0 + timedelta(days=1),
    )
    assert not again.created and again.name == first.name  # written once, never changed
    assert read_info(store, first.name)["created"] == "2026-11-01T08:00:00+00:00"
    second = build_version(
        config,
        [_source(tmp_path / "b", config, "b", seed=7)],
        first.name,
        store=store,
        now=T0 + timedelta(hours=1),
    )
    assert second.created and store.names() == sorted([first.name, second.name])
    assert [v["name"] for v in list_versions(store)] == [first.name, second.name]
    assert resolve_version(store, "latest") == second.name
    assert version_manifest(store, second.name).equals(second.manifest)
    for row in second.manifest.itertuples():
        assert store.has_image(row.path)
    written = materialize_version(store, second.name, tmp_path / "out")
    files = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == len(files) == len(second.manifest) > len(first.manifest)
    for path in files:
        assert path.stem == hashlib.sha256(path.read_bytes()).hexdigest()
    assert store.version_url(first.name) == store.url_of(f"versions/{first.name}")
    scheme = "file" if store.is_local else store.location.split("://", 1)[0]
    assert store.url_of().startswith(f"{scheme}://")
    assert store.url_of(f"versions/{first.name}").endswith(f"/versions/{first.name}")


def test_a_version_without_its_version_json_is_invisible_and_built_again(
    store: DatasetStore, config: Config, tmp_path: Path
) -> None:
    built = build_version(config, [_source(tmp_path / "a", config, "a")], store=store)
    _delete(store, f"versions/{built.name}/{INFO_FILENAME}")  # its manifest.csv stays
    assert store.names() == []
    assert resolve_version(store, "latest") is None
    with pytest.raises(VersionNotFoundError, match=f"no dataset version {built.name}"):
        store.read_text(built.name, MANIFEST_FILENAME)
    with pytest.raises(VersionNotFoundError):
        resolve_version(store, built.name)
    rebuilt = build_version(config, [_source(tmp_path / "a2", config, "a")], store=store)
    assert rebuilt.created and rebuilt.name == built.name and store.names() == [built.name]
    assert version_manifest(store, built.name).equals(built.manifest)
    if store.is_local:  # no staging or stale folder left behind
        assert [p.name for p in (Path(store.root) / "versions").iterdir()] == [built.name]


def test_on_object_storage_version_json_is_written_last(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DatasetStore(f"memory://datasets-{uuid.uuid4().hex[:8]}")
    written: list[str] = []
    pipe = store.fs.pipe_file

    def record(path: str, data: bytes, **kwargs: object) -> None:
        written.append(path.rsplit("/", 1)[-1])
        if path.endswith(INFO_FILENAME):
            raise ConnectionError("the store went away")
        pipe(path, data, **kwargs)

    monkeypatch.setattr(store.fs, "pipe_file", record)
    try:
        with pytest.raises(StoreUnreachableError, match="does not answer"):
            build_version(config, [_source(tmp_path / "a", config, "a")], store=store)
        assert written[-2:] == [MANIFEST_FILENAME, INFO_FILENAME]
        assert store.names() == []  # the manifest alone makes no version
    finally:
        monkeypatch.undo()
        store.fs.rm(store.root, recursive=True)


def test_exclusive_writes_win_once(store: DatasetStore) -> None:
    path = "retrains/ds-0123456789ab.json"
    assert store.read_file(path) is None
    assert store.write_file(path, '{"run": 1}', exclusive=True) is True
    assert store.write_file(path, '{"run": 2}', exclusive=True) is False
    assert store.read_file(path) == '{"run": 1}'  # the loser wrote nothing
    assert store.write_file(path, '{"run": 3}') is True  # a plain write replaces it
    assert store.read_file(path) == '{"run": 3}'
    for bad in ("../outside.json", "/etc/passwd", "retrains//x.json", ""):
        with pytest.raises(DatasetStoreError, match="not a path relative to the datasets root"):
            store.write_file(bad, "x")


def test_concurrent_exclusive_writes_on_a_local_root_have_one_winner(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "datasets")
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def claim(i: int) -> None:
        barrier.wait()
        results.append(store.write_file("retrains/x.json", str(i), exclusive=True))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


def test_local_only_folders_refuse_object_storage() -> None:
    store = DatasetStore(f"memory://datasets-{uuid.uuid4().hex[:8]}")
    assert not store.is_local
    with pytest.raises(DatasetStoreError, match="not a local folder"):
        _ = store.images_dir
    with pytest.raises(DatasetStoreError, match="version_url"):
        store.version_dir("ds-0123456789ab")
    assert DatasetStore("file:///tmp/x").version_dir("v") == Path("/tmp/x/versions/v")


def test_roots_that_cannot_be_opened_say_what_to_do() -> None:
    with pytest.raises(UnsupportedLocationError, match="cannot open the datasets root nosuch://"):
        DatasetStore("nosuch://bucket/datasets")
    with pytest.raises(UnsupportedLocationError, match="names no bucket"):
        DatasetStore("s3://")


def test_refused_credentials_are_a_credentials_error(monkeypatch: pytest.MonkeyPatch) -> None:
    store = DatasetStore(f"memory://datasets-{uuid.uuid4().hex[:8]}")

    def refuse(path: str, **kwargs: object) -> bytes:
        raise PermissionError("Access Denied")

    monkeypatch.setattr(store.fs, "cat_file", refuse)
    with pytest.raises(StoreCredentialsError, match="AWS_ACCESS_KEY_ID"):
        store.read_file("retrains/x.json")


@pytest.mark.integration
def test_a_missing_bucket_is_named(fake_s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _s3_credentials(monkeypatch)
    store = DatasetStore("s3://no-such-bucket/datasets", {"endpoint_url": fake_s3})
    with pytest.raises(StoreUnreachableError, match=r"bucket no-such-bucket .* does not exist"):
        store.names()


@pytest.mark.integration
def test_an_unreachable_endpoint_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from support import free_port

    _s3_credentials(monkeypatch)
    store = DatasetStore(
        f"s3://{BUCKET}",
        {
            "endpoint_url": f"http://127.0.0.1:{free_port()}",
            "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}},
        },
    )
    with pytest.raises(StoreUnreachableError, match="AWS_ENDPOINT_URL"):
        store.read_file("retrains/x.json")


@pytest.mark.integration
def test_missing_credentials_are_named(
    fake_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = DatasetStore(
        f"s3://{BUCKET}", {"skip_instance_cache": True}, environ={"AWS_ENDPOINT_URL": fake_s3}
    )
    with pytest.raises(StoreCredentialsError, match="set AWS_ACCESS_KEY_ID"):
        store.names()
