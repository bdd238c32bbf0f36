"""Fixtures for the monitoring tests: the real TrashNet dev images, reference profiles, models,
a registered champion, servers.

Servers are real processes or threads on 127.0.0.1: the collector under uvicorn, a throwaway
PostgreSQL cluster (Debian's package), a Prometheus Pushgateway (Debian's package).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Self

import pandas as pd
import pytest
import support

from garbage.core.classifier import OnnxClassifier
from garbage.core.config import Config, load_config

# Test modules import the helpers as a top-level module; make this folder importable for them.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from monitoring_helpers import RELABELLED, kserve_headers
from support import free_port, wait_for_port

if TYPE_CHECKING:
    from monitoring.collector import CollectorAuth

DEV_SHA256 = "cb0934a9c4e8c36e8cf510364a57c55f006eabc831a9c5a78194c8059155cb08"


@pytest.fixture(scope="session")
def dev_dataset(
    dev_archive: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, pd.DataFrame]:
    """The extracted dev archive and its split manifest (validated and split like the pipeline)."""
    from garbage.training.data.fetch import fetch_dataset
    from garbage.training.data.split import split_dataset
    from garbage.training.data.validate import validate_dataset

    cache = tmp_path_factory.mktemp("data-cache")
    root = fetch_dataset(str(dev_archive), DEV_SHA256, cache)
    config = load_config(environ={})
    _, kept = validate_dataset(root, config.data)
    return root, split_dataset(kept, config.split)


@pytest.fixture(scope="session")
def reference_profile(
    dev_dataset: tuple[Path, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A reference built from the training split (1502 images), as the pipeline would."""
    from monitoring.reference import build_reference

    root, manifest = dev_dataset
    return build_reference(
        root, manifest, tmp_path_factory.mktemp("ref") / "reference.parquet", splits=("train",)
    )


@pytest.fixture(scope="session")
def model_reference_profile(
    dev_dataset: tuple[Path, pd.DataFrame],
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The training split's reference with the tiny model's predictions (what the pipeline logs)."""
    from monitoring.reference import build_reference

    root, manifest = dev_dataset
    return build_reference(
        root,
        manifest,
        tmp_path_factory.mktemp("model-ref") / "reference.parquet",
        splits=("train",),
        model_dir=tiny_model_dir,
    )


@pytest.fixture(scope="session")
def relabelled_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with the class names :data:`RELABELLED` in its metadata."""
    import onnx

    out = tmp_path_factory.mktemp("relabelled-model")
    graph = onnx.load(str(tiny_model_dir / "model.onnx"))
    [entry] = [e for e in graph.metadata_props if e.key == "classes"]
    assert len(json.loads(entry.value)) == len(RELABELLED)
    entry.value = json.dumps(RELABELLED)
    onnx.save(graph, str(out / "model.onnx"))
    metadata = json.loads((tiny_model_dir / "metadata.json").read_text())
    (out / "metadata.json").write_text(json.dumps({**metadata, "classes": RELABELLED}))
    support.seal_model(out)  # new digests: the model is a different one now
    assert OnnxClassifier.load(out).classes == RELABELLED
    return out


@pytest.fixture
def register_champion() -> Callable[[Config, Path, Path], str]:
    """``register_champion(config, model_dir, reference)``: see ``support.register_champion``."""
    return support.register_champion


@pytest.fixture(scope="session")
def test_images(dev_dataset: tuple[Path, pd.DataFrame]) -> list[tuple[str, bytes]]:
    """(label, JPEG bytes) of the test split: unseen by the reference."""
    root, manifest = dev_dataset
    test = manifest[manifest["split"] == "test"]
    return [(row.label, (root / row.path).read_bytes()) for row in test.itertuples()]


class ServerThread:
    """uvicorn serving an ASGI app in a background thread on 127.0.0.1 (a real socket)."""

    def __init__(self, app, port: int) -> None:
        import uvicorn

        self.port = port
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        wait_for_port(self.port)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def collector_server(tmp_path: Path, tiny_model_dir: Path) -> Iterator[ServerThread]:
    """The collector app on a SQLite store, served by uvicorn on a free loopback port; the model's
    classes are the tiny model's (TrashNet's); /feedback takes the token of
    :func:`collector_auth_header`."""
    from monitoring.collector import create_app
    from monitoring.store import InferenceStore

    store = InferenceStore(str(tmp_path / "inferences.db"))
    classes = OnnxClassifier.load(tiny_model_dir, device="cpu").classes
    with ServerThread(create_app(store, classes, auth=feedback_auth()), free_port()) as server:
        server.store = store
        yield server
    store.close()


def _pg_bindir() -> Path | None:
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields its SQLAlchemy URL."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found; run scripts/install-postgres.sh"
        )
    as_root = os.geteuid() == 0
    if as_root and not shutil.which("runuser"):
        pytest.skip("running as root without runuser: initdb refuses to run as root")
    base = Path(tempfile.mkdtemp(prefix="garbage-pg-"))
    prefix: list[str] = []
    if as_root:
        shutil.chown(base, user="postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, text=True, timeout=120)

    try:
        run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "garbage",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(base / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )
    except subprocess.CalledProcessError as e:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"cannot start PostgreSQL: {e.stderr or e.stdout}")
    try:
        yield f"postgresql://garbage@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pushgateway() -> Iterator[str]:
    """A real Prometheus Pushgateway on a free loopback port (Debian's prometheus-pushgateway)."""
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        pytest.skip("prometheus-pushgateway not installed; run scripts/install-pushgateway.sh")
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def event_headers() -> Callable[..., dict[str, str]]:
    """Factory for KServe-format binary-mode headers."""
    return kserve_headers


#: The feedback credential of :func:`secured_collector` (``name:token``).
COLLECTOR_LABELLER = "labeller-1"
COLLECTOR_TOKEN = "test-feedback-token-0123456789abcdef"


def feedback_auth() -> CollectorAuth:
    """The collector's credentials in these tests: :data:`COLLECTOR_TOKEN` on /feedback."""
    from monitoring.collector import CollectorAuth, parse_credentials

    return CollectorAuth(
        feedback=parse_credentials(f"{COLLECTOR_LABELLER}:{COLLECTOR_TOKEN}", "the test")
    )


@pytest.fixture
def collector_auth_header() -> dict[str, str]:
    """The ``Authorization`` header that :func:`secured_collector` accepts on /feedback."""
    return {"Authorization": f"Bearer {COLLECTOR_TOKEN}"}


@pytest.fixture
def secured_collector(tmp_path: Path) -> Iterator[ServerThread]:
    """The collector app on a SQLite store behind uvicorn on a free loopback port, /feedback
    taking the bearer token of :func:`collector_auth_header` (recorded as
    :data:`COLLECTOR_LABELLER`); the classes are the configured ones (TrashNet's)."""
    from monitoring.collector import create_app
    from monitoring.store import InferenceStore

    store = InferenceStore(str(tmp_path / "inferences.db"))
    classes = load_config(environ={}).data.classes
    with ServerThread(create_app(store, classes, auth=feedback_auth()), free_port()) as server:
        server.store = store
        yield server
    store.close()


@pytest.fixture
def image_collector(tmp_path: Path) -> Iterator[ServerThread]:
    """:func:`secured_collector` keeping the logged images in a local image store,
    ``tmp_path/images`` (``server.images``)."""
    from monitoring.collector import create_app
    from monitoring.images import ImageStore
    from monitoring.store import InferenceStore

    store = InferenceStore(str(tmp_path / "inferences.db"))
    images = ImageStore(str(tmp_path / "images"))
    classes = load_config(environ={}).data.classes
    app = create_app(store, classes, auth=feedback_auth(), images=images)
    with ServerThread(app, free_port()) as server:
        server.store, server.images = store, images
        yield server
    store.close()
