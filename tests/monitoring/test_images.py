"""The image store (monitoring/images.py): content addressing, local and S3 storage, difference
hashes, retention by age and by size, and the collector keeping and serving the images of real
v1 and v2 requests.

S3 runs against moto's server mode (``ThreadedMotoServer``): a FAKE S3 on 127.0.0.1, since
MinIO (the store on the cluster) cannot run here; s3fs, botocore and the HTTP between them are
the real ones.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from monitoring_helpers import kserve_headers, make_jpeg, v1_request, v1_response
from PIL import Image
from support import free_port
from typer.testing import CliRunner

from monitoring.cli import build_app
from monitoring.collector import CollectorAuth, create_app
from monitoring.features import FEATURE_COLUMNS
from monitoring.images import (
    GB,
    ImageNotFoundError,
    ImageStore,
    ImageStoreError,
    InvalidDigestError,
    Retention,
    dhash,
    encode_png,
    hamming,
    image_key,
    media_type,
    prune_images,
)
from monitoring.store import EventMeta, InferenceStore

CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
T0 = datetime(2026, 11, 1, 12, 0, 0)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def images(tmp_path: Path) -> ImageStore:
    return ImageStore(str(tmp_path / "images"))


# -- the store ----------------------------------------------------------------------------------


def test_put_is_content_addressed_idempotent_and_the_key_follows_from_the_hash(
    images: ImageStore, tmp_path: Path
) -> None:
    data = make_jpeg((200, 40, 40), 1)
    sha = images.put(data)
    assert sha == _sha(data)
    assert image_key(sha) == f"{sha[:2]}/{sha}"
    stored = tmp_path / "images" / sha[:2] / sha
    assert stored.read_bytes() == data
    assert images.exists(sha) and images.get(sha) == data
    assert images.url(sha) == f"file://{stored}"
    written_at = stored.stat().st_mtime_ns
    assert images.save(data) == (sha, False)  # stored already: nothing written
    assert stored.stat().st_mtime_ns == written_at
    assert [p.name for p in (tmp_path / "images").rglob("*") if p.is_file()] == [sha]
    other = make_jpeg((200, 40, 40), 2)
    assert images.save(other) == (_sha(other), True)


def test_missing_deleted_and_malformed_hashes(images: ImageStore) -> None:
    data = b"any bytes at all: the store keeps what it is given"
    sha = images.put(data)
    assert images.get(sha) == data  # not an image: stored as given, never decoded
    assert images.delete(sha) is True
    assert images.delete(sha) is False and not images.exists(sha)
    with pytest.raises(ImageNotFoundError):
        images.get(sha)
    for bad in ("../../etc/passwd", sha.upper(), sha[:63], sha + "0", ""):
        with pytest.raises(InvalidDigestError, match="64 lowercase hex"):
            images.get(bad)


def test_concurrent_puts_of_the_same_bytes_leave_one_complete_file(
    images: ImageStore, tmp_path: Path
) -> None:
    data = make_jpeg((10, 120, 200), 3, size=(640, 480))
    barrier = threading.Barrier(8)
    results: list[str] = []

    def put() -> None:
        barrier.wait()
        results.append(images.put(data))

    threads = [threading.Thread(target=put) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [_sha(data)] * 8
    files = [p for p in (tmp_path / "images").rglob("*") if p.is_file()]
    assert [p.name for p in files] == [_sha(data)]  # no temporary file left behind
    assert files[0].read_bytes() == data


def test_a_store_that_cannot_be_opened_says_which(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ImageStoreError, match="cannot create the image store folder"):
        ImageStore(str(blocker / "images"))
    with pytest.raises(ImageStoreError, match="cannot open the image store nosuch://x"):
        ImageStore("nosuch://x")


def test_media_type_is_sniffed_from_the_magic_bytes() -> None:
    assert media_type(make_jpeg((1, 2, 3))) == "image/jpeg"
    assert media_type(make_jpeg((1, 2, 3), fmt="PNG")) == "image/png"
    assert media_type(b"<html><script>alert(1)</script>") == "application/octet-stream"
    assert media_type(make_jpeg((1, 2, 3), fmt="GIF")) == "application/octet-stream"


def test_dhash_finds_near_duplicates_and_tells_different_images_apart() -> None:
    rng = np.random.default_rng(0)
    scene = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    photo = Image.fromarray(scene).resize((320, 240), Image.Resampling.BICUBIC)
    value = dhash(photo)
    assert len(value) == 16 and int(value, 16) >= 0 and value == value.lower()

    def jpeg(image: Image.Image, quality: int) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue()))

    near = [jpeg(photo, 40), photo.resize((160, 120)), jpeg(photo.resize((1000, 750)), 90)]
    assert all(hamming(value, dhash(n)) <= 6 for n in near), [dhash(n) for n in near]
    other = Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((320, 240))
    assert hamming(value, dhash(other)) >= 16
    assert hamming(value, value) == 0
    assert hamming("0" * 16, "f" * 16) == 64 and hamming("0" * 16, "F" * 16) == 64
    with pytest.raises(InvalidDigestError, match="16 hex digits"):
        hamming(value, "xyz")


def test_pixels_are_stored_as_a_lossless_png() -> None:
    pixels = (np.random.default_rng(1).random((17, 23, 3)) * 255).astype(np.uint8)
    png = encode_png(pixels)
    assert media_type(png) == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)


# -- S3 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_s3() -> Iterator[str]:
    """moto's S3 server on a free loopback port (a FAKE S3: MinIO cannot run here), with the
    bucket ``garbage-images``; yields its endpoint URL."""
    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
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
    ).create_bucket(Bucket="garbage-images")
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.mark.integration
def test_s3_store_through_s3fs(fake_s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "fake")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # The endpoint from the standard variable, as on the cluster (AWS_ENDPOINT_URL).
    images = ImageStore("s3://garbage-images/site-a", environ={"AWS_ENDPOINT_URL": fake_s3})
    data = make_jpeg((90, 90, 200), 4)
    sha = images.put(data)
    assert images.url(sha) == f"s3://garbage-images/site-a/{sha[:2]}/{sha}"
    assert images.exists(sha) and images.get(sha) == data
    assert images.save(data) == (sha, False)
    assert images.delete(sha) is True and not images.exists(sha)
    with pytest.raises(ImageNotFoundError):
        images.get(sha)


@pytest.mark.integration
def test_an_unreachable_s3_endpoint_is_an_image_store_error() -> None:
    images = ImageStore(
        "s3://garbage-images",
        {
            "endpoint_url": f"http://127.0.0.1:{free_port()}",
            "key": "fake",
            "secret": "fake",
            "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}},
        },
    )
    with pytest.raises(ImageStoreError, match=r"cannot .* image .* in the image store s3://"):
        images.put(b"bytes")


# -- retention ----------------------------------------------------------------------------------


def _log(
    store: InferenceStore,
    images: ImageStore,
    name: str,
    seen: datetime,
    size: int,
    content: str | None = None,
) -> str:
    """One logged request ``name`` with one image of ``size`` bytes (made from ``content``,
    default the name), recorded as the collector does, seen at ``seen``."""
    data = (content or name).encode().ljust(size, b".")
    sha = _sha(data)
    store.record_images({sha: len(data)}, seen)
    images.put(data)
    features: dict[str, object] = {c: 1.0 for c in FEATURE_COLUMNS}
    store.record_request(
        EventMeta(name, seen), [{**features, "image_sha256": sha, "image_dhash": "0" * 16}]
    )
    store.record_response(EventMeta(name, seen), [("glass", 0.9, None)])
    return sha


@pytest.fixture
def store(tmp_path: Path) -> Iterator[InferenceStore]:
    db = InferenceStore(str(tmp_path / "log.db"))
    yield db
    db.close()


def test_retention_by_age_spares_labelled_images_and_keeps_every_row(
    store: InferenceStore, images: ImageStore
) -> None:
    old = _log(store, images, "old", T0 - timedelta(days=40), 100)
    old_labelled = _log(store, images, "old-labelled", T0 - timedelta(days=50), 100)
    recent = _log(store, images, "recent", T0 - timedelta(days=2), 100)
    assert store.record_feedback("old-labelled", 0, "paper", T0, "alice")

    result = prune_images(store, images, Retention(keep_days=30), now=T0)
    assert result.deleted == {"age": 1, "size": 0} and result.freed_bytes == 100
    assert (result.images, result.total_bytes) == (2, 200)
    assert not images.exists(old) and images.exists(old_labelled) and images.exists(recent)
    assert store.image_record(old)["deleted_at"] == T0
    assert store.image_record(recent)["deleted_at"] is None
    rows = store.load_window().set_index("inference_id")
    assert rows.loc["old", "image_sha256"] == old  # the row still points at its image
    assert rows.loc["old", "prediction"] == "glass" and rows.loc["old", "brightness"] == 1.0
    assert rows.loc["old-labelled", "true_label"] == "paper"
    assert prune_images(store, images, Retention(keep_days=30), now=T0).deleted["age"] == 0


def test_retention_by_size_deletes_the_oldest_unlabelled_first(
    store: InferenceStore, images: ImageStore
) -> None:
    ages = {"a": 9, "b": 8, "c": 7, "d": 6, "e": 5}  # days since last seen
    shas = {n: _log(store, images, n, T0 - timedelta(days=d), 100) for n, d in ages.items()}
    assert store.record_feedback("a", 0, "glass", T0, "alice")  # the oldest is labelled

    result = prune_images(store, images, Retention(keep_bytes=300), now=T0, batch=1)
    assert result.deleted == {"age": 0, "size": 2} and result.labelled_deleted == 0
    assert {n for n, s in shas.items() if images.exists(s)} == {"a", "d", "e"}
    assert store.image_usage() == (3, 300)

    # The newer unlabelled images go before the older labelled one ...
    result = prune_images(store, images, Retention(keep_bytes=100), now=T0)
    assert result.deleted["size"] == 2 and result.labelled_deleted == 0
    assert {n for n, s in shas.items() if images.exists(s)} == {"a"}
    # ... which goes only when the unlabelled alone cannot meet the limit; its label stays.
    result = prune_images(store, images, Retention(keep_bytes=50), now=T0)
    assert result.deleted["size"] == 1 and result.labelled_deleted == 1
    assert store.image_usage() == (0, 0)
    assert store.load_window(labelled_only=True)["true_label"].tolist() == ["glass"]


def test_an_image_seen_again_is_stored_again_and_never_deleted_under_a_new_sighting(
    store: InferenceStore, images: ImageStore
) -> None:
    sha = _log(store, images, "again", T0 - timedelta(days=40), 100)
    [candidate] = store.images_to_prune(T0 - timedelta(days=30), None)
    _log(store, images, "again", T0, 100)  # seen again after it was chosen
    assert store.claim_images_for_deletion([candidate], T0) == []
    assert images.exists(sha)

    pruned = prune_images(store, images, Retention(keep_days=0), now=T0 + timedelta(days=1))
    assert pruned.deleted["age"] == 1
    assert not images.exists(sha) and store.image_record(sha)["deleted_at"] is not None
    _log(store, images, "again-later", T0 + timedelta(days=2), 100, content="again")
    assert images.exists(sha) and store.image_record(sha)["deleted_at"] is None


def test_a_failed_deletion_leaves_the_image_recorded_as_stored(
    store: InferenceStore, tmp_path: Path
) -> None:
    images = ImageStore(str(tmp_path / "images"))
    sha = _log(store, images, "stuck", T0 - timedelta(days=40), 100)
    stored = tmp_path / "images" / sha[:2] / sha
    stored.unlink()
    stored.mkdir()  # os.remove refuses a folder: a real failure of the deletion
    with pytest.raises(ImageStoreError, match="cannot delete image"):
        prune_images(store, images, Retention(keep_days=30), now=T0)
    assert store.image_record(sha)["deleted_at"] is None
    assert store.image_usage() == (1, 100)


def test_retention_limits_are_checked() -> None:
    assert not Retention().active and Retention(keep_days=0).active
    with pytest.raises(ValueError, match="keep_days"):
        Retention(keep_days=-1)
    with pytest.raises(ValueError, match="keep_bytes"):
        Retention(keep_bytes=-1)


def test_the_collector_prunes_while_it_runs(
    store: InferenceStore, images: ImageStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The lifespan's background task runs retention at start and counts what it deleted."""
    old = _log(store, images, "old", datetime.now() - timedelta(days=40), 100)
    app = create_app(
        store,
        CLASSES,
        auth=CollectorAuth(allow_unauthenticated_feedback=True),
        images=images,
        retention=Retention(keep_days=30),
        prune_interval=3600,
    )
    with TestClient(app) as client:
        deadline = datetime.now() + timedelta(seconds=20)
        while images.exists(old) and datetime.now() < deadline:
            threading.Event().wait(0.05)
        assert not images.exists(old)
        metrics = client.get("/metrics").text
    assert 'garbage_monitoring_pruned_images_total{reason="age"} 1.0' in metrics


def test_prune_images_once_from_the_command_line(
    store: InferenceStore, images: ImageStore, tmp_path: Path
) -> None:
    old = _log(store, images, "old", datetime.now() - timedelta(days=40), 100)
    kept = _log(store, images, "new", datetime.now(), 100)
    db = str(tmp_path / "log.db")
    runner = CliRunner()
    args = ["collector", "--db", db, "--image-store", str(tmp_path / "images"), "--prune-images"]
    # Without --image-store: the folder images beside the SQLite file, the one used here.
    beside = ["collector", "--db", db, "--prune-images", "--keep-images-days", "30"]
    result = runner.invoke(build_app(), beside)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["deleted"] == {"age": 1, "size": 0}
    assert not images.exists(old) and images.exists(kept)
    by_size = runner.invoke(build_app(), [*args, "--keep-images-gb", str(50 / GB)])
    assert by_size.exit_code == 0, by_size.output
    assert json.loads(by_size.stdout)["deleted"] == {"age": 0, "size": 1}
    assert not images.exists(kept)
    refused = runner.invoke(build_app(), args)
    assert refused.exit_code == 2 and "--keep-images-days" in refused.output


# -- the collector keeps and serves the images --------------------------------------------------


def _send(url: str, event_id: str, body: bytes, **headers: str) -> httpx.Response:
    response = httpx.post(
        f"{url}/events", content=body, headers={**kserve_headers(event_id, "request"), **headers}
    )
    assert response.status_code == 202, response.text
    return response


@pytest.mark.integration
def test_the_collector_keeps_the_images_of_a_v1_request_and_serves_them_with_a_token(
    image_collector, collector_auth_header
) -> None:
    url = image_collector.url
    jpeg, png = make_jpeg((60, 160, 90), 1), make_jpeg((235, 235, 225), 2, fmt="PNG")
    _send(url, "v1-1", v1_request([jpeg, png, b"not an image"]))
    r = httpx.post(
        f"{url}/events",
        content=v1_response(["glass", "paper", "trash"], CLASSES),
        headers=kserve_headers("v1-1", "response"),
    )
    assert r.status_code == 202
    rows = image_collector.store.load_window().sort_values("item").to_dict("records")
    assert [r["image_sha256"] for r in rows] == [_sha(jpeg), _sha(png), None]
    assert rows[0]["image_dhash"] == dhash(Image.open(io.BytesIO(jpeg)))
    assert rows[2]["image_dhash"] is None and rows[2]["feature_error"]
    assert image_collector.images.get(_sha(jpeg)) == jpeg  # the bytes as sent
    assert image_collector.store.image_record(_sha(png))["size_bytes"] == len(png)

    served = httpx.get(f"{url}/images/{_sha(jpeg)}", headers=collector_auth_header)
    assert served.status_code == 200 and served.content == jpeg
    assert served.headers["content-type"] == "image/jpeg"
    assert served.headers["x-content-type-options"] == "nosniff"
    as_png = httpx.get(f"{url}/images/{_sha(png)}", headers=collector_auth_header)
    assert as_png.headers["content-type"] == "image/png" and as_png.content == png

    assert httpx.get(f"{url}/images/{_sha(jpeg)}").status_code == 401
    wrong = {"Authorization": "Bearer not-the-token-0123456789"}
    assert httpx.get(f"{url}/images/{_sha(jpeg)}", headers=wrong).status_code == 403
    unknown = httpx.get(f"{url}/images/{'0' * 64}", headers=collector_auth_header)
    assert unknown.status_code == 404 and "no stored image" in unknown.json()["detail"]
    malformed = httpx.get(f"{url}/images/..%2F..%2Fetc", headers=collector_auth_header)
    assert malformed.status_code in (404, 422)
    assert httpx.get(f"{url}/images/abc", headers=collector_auth_header).status_code == 422

    image_collector.images.delete(_sha(jpeg))  # as retention does
    gone = httpx.get(f"{url}/images/{_sha(jpeg)}", headers=collector_auth_header)
    assert gone.status_code == 404
    metrics = httpx.get(f"{url}/metrics").text
    assert 'garbage_monitoring_stored_images_total{result="written"} 2.0' in metrics


@pytest.mark.integration
def test_the_collector_keeps_v2_pixels_as_png_and_v2_bytes_as_sent(image_collector) -> None:
    url = image_collector.url
    pixels = (np.random.default_rng(5).random((12, 10, 3)) * 255).astype(np.uint8)
    jpeg = make_jpeg((40, 90, 200), 7)
    request = {
        "inputs": [
            {
                "name": "image",
                "shape": [1, 12, 10, 3],
                "datatype": "UINT8",
                "data": pixels.flatten().tolist(),
            }
        ]
    }
    _send(url, "v2-pixels", json.dumps(request).encode())
    request = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(jpeg).decode()],
            }
        ]
    }
    _send(url, "v2-bytes", json.dumps(request).encode())
    rows = image_collector.store.load_window().set_index("inference_id")
    png = image_collector.images.get(rows.loc["v2-pixels", "image_sha256"])
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)
    assert rows.loc["v2-bytes", "image_sha256"] == _sha(jpeg)
    # The same bytes again (another inference): one stored copy, two rows pointing at it.
    _send(url, "v2-bytes-again", json.dumps(request).encode())
    rows = image_collector.store.load_window().set_index("inference_id")
    assert rows.loc["v2-bytes-again", "image_sha256"] == _sha(jpeg)
    assert image_collector.store.image_usage()[0] == 2


@pytest.mark.integration
def test_an_image_store_failure_still_logs_the_event(image_collector) -> None:
    url = image_collector.url
    jpeg = make_jpeg((120, 20, 220), 9)
    sha = _sha(jpeg)
    # A file where the image's folder must go: the write fails for real (root ignores modes).
    (Path(image_collector.images.root) / sha[:2]).write_bytes(b"")
    answer = _send(url, "broken-1", v1_request([jpeg])).json()
    assert answer["events"][0]["images"] == 1
    [row] = image_collector.store.load_window().to_dict("records")
    assert row["image_sha256"] is None and row["brightness"] is not None
    assert row["image_dhash"] == dhash(Image.open(io.BytesIO(jpeg)))
    metrics = httpx.get(f"{url}/metrics").text
    assert 'garbage_monitoring_image_store_errors_total{operation="put"} 1.0' in metrics
