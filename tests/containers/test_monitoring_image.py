"""The monitoring image, built and run for real: the collector stores what KServe's payload logger
sends, and the drift job gives the verdict the in-process job gives, from mounted files and from
an MLflow tracking server's champion.

Containers run the way the Kubernetes manifests run them: as the image's non-root user, read-only
root filesystem with a writable /tmp, every capability dropped, no privilege escalation; the model
mounted read-only, the data folder (SQLite store, drift output) writable.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from containers.container_engine import (
    HARDENED,
    IMAGE_UID,
    REPO_ROOT,
    Engine,
    readable_copy,
    writable_dir,
)
from support import (
    CLASSES,
    free_port,
    jpeg_bytes,
    make_image_tree,
    mlflow_server,
    register_champion,
    train_manifest,
)

sys.path.insert(0, str(REPO_ROOT / "tests" / "monitoring"))
from monitoring_helpers import kserve_headers, v1_request, v1_response

pytestmark = pytest.mark.integration

IMAGE = "localhost/garbage-monitoring:test"
#: Per class: 6 classes x 18 = 108 images, over the drift job's 100-row minimum for a verdict.
PER_CLASS = 18
#: The summary keys that carry the verdict (timings and output paths differ between runs).
VERDICT_KEYS = ("drift_detected", "drift_share", "window_size", "status", "drifted_columns")

#: The collector's feedback token in these tests.
FEEDBACK_TOKEN = "test-feedback-token-0123456789"


def _run(engine: Engine, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``run --rm`` the image hardened, on the host network (the container's ports are loopback)."""
    network = ["--network", "host"]
    return engine.run("run", "--rm", *network, *HARDENED, *args, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def monitoring_image(engine: Engine) -> str:
    """Build monitoring/Dockerfile once for this module."""
    started = time.monotonic()
    engine.build("monitoring/Dockerfile", IMAGE)
    print(f"\nmonitoring image built with {engine.cli} in {time.monotonic() - started:.0f} s")
    return IMAGE


@pytest.fixture(scope="module")
def mounted_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny exported model, readable by the image's user."""
    return readable_copy(tiny_model_dir, tmp_path_factory.mktemp("model-mount") / "model")


@pytest.fixture(scope="module")
def drift_inputs(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(a folder with ``reference.parquet`` and ``window/``, the in-process summary).

    The reference is the model's profile of synthetic images in TrashNet's colours; the window
    holds the same classes photographed far brighter, so the job must see drift.
    """
    from monitoring.job import run_drift_job
    from monitoring.reference import build_reference

    root = tmp_path_factory.mktemp("drift-inputs")
    train = make_image_tree(root / "train", per_class=PER_CLASS)
    manifest = train_manifest(train)
    mount = root / "mount"
    reference = build_reference(
        train, manifest, mount / "reference.parquet", model_dir=tiny_model_dir
    )
    for c, name in enumerate(CLASSES):
        folder = mount / "window" / name
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            (folder / f"{name}{i}.jpg").write_bytes(
                jpeg_bytes((245, 245, 240), seed=10_000 + c * 100 + i)
            )
    summary = run_drift_job(
        tiny_model_dir, root / "in-process", reference=reference, images=mount / "window"
    )
    assert summary["status"] == "drift", summary  # the inputs are what the test needs
    for path in [mount, *mount.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (root / "summary.json").write_text(json.dumps(summary, default=str))
    return mount, root / "summary.json"


def _assert_same_verdict(got: dict, expected: dict) -> None:
    for key in VERDICT_KEYS:
        if isinstance(expected[key], float):
            assert got[key] == pytest.approx(expected[key], abs=1e-9), key
        else:
            assert got[key] == expected[key], key
    got_live, want_live = got["live_accuracy"], expected["live_accuracy"]
    assert got_live["labelled"] == want_live["labelled"] == len(CLASSES) * PER_CLASS
    assert got_live["accuracy"] == pytest.approx(want_live["accuracy"], abs=1e-9)


def test_image_has_no_torch_cuda_or_kserve_and_runs_as_non_root(
    engine: Engine, monitoring_image: str
) -> None:
    probe = (
        "import glob, os, importlib.util as u, onnxruntime; "
        "mods = ('torch', 'torchvision', 'kserve', 'nvidia', 'tensorrt', 'serving', 'cli', "
        "'components', 'mlflow'); "
        "libs = glob.glob('/opt/venv/**/libcud*', recursive=True); "
        "print(os.getuid(), os.getgid(), "
        "','.join(m for m in mods if u.find_spec(m)), len(libs), "
        "[p for p in onnxruntime.get_available_providers() if 'CUDA' in p or 'TensorRT' in p])"
    )
    result = _run(engine, "--entrypoint", "python", monitoring_image, "-c", probe)
    assert result.returncode == 0, result.stderr
    # mlflow is there (the client, mlflow-skinny, for models:/ URIs); the rest is not.
    assert result.stdout.split() == [
        str(IMAGE_UID),
        str(IMAGE_UID),
        "mlflow",
        "0",
        "[]",
    ]
    config = json.loads(engine.run("image", "inspect", monitoring_image).stdout)[0]["Config"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert config["Entrypoint"] == ["python", "-m", "monitoring"]
    data = _run(engine, "--entrypoint", "stat", monitoring_image, "-c", "%u %F", "/data")
    assert data.stdout.split() == [str(IMAGE_UID), "directory"]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ((), ["collector", "drift"]),
        (("collector",), ["--model", "--db", "--host", "--port", "--windows"]),
        (("drift",), ["--images", "--db", "--model", "--reference", "--out", "--config", "--set"]),
    ],
)
def test_every_entry_point_starts(
    engine: Engine, monitoring_image: str, command: tuple[str, ...], expected: list[str]
) -> None:
    result = _run(engine, monitoring_image, *command, "--help")
    assert result.returncode == 0, result.stderr
    for word in expected:
        assert word in result.stdout, (word, result.stdout)
    assert result.stderr.strip() == ""


def test_every_monitoring_and_core_module_imports(engine: Engine, monitoring_image: str) -> None:
    """Including what the commands import only when they run (Evidently, uvicorn, psycopg...)."""
    probe = (
        "import importlib, pkgutil, garbage.core, monitoring; "
        "names = [f'{p.__name__}.{m.name}' for p in (garbage.core, monitoring) "
        "for m in pkgutil.iter_modules(p.__path__)]; "
        "[importlib.import_module(n) for n in names]; "
        "import evidently.presets, evidently.metrics, evidently.legacy.core, uvicorn, psycopg, "
        "pyarrow.parquet, mlflow.artifacts, mlflow.store.artifact.models_artifact_repo; "
        "print(len(names))"
    )
    result = _run(engine, "--entrypoint", "python", monitoring_image, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 20  # garbage.core's and monitoring's modules


@pytest.fixture
def collector(
    engine: Engine, monitoring_image: str, mounted_model: Path, tmp_path: Path
) -> Iterator[tuple[str, Path]]:
    """The collector container on a loopback port; yields (its URL, the host's SQLite file).

    Its feedback token comes from a read-only mounted file, as from the Secret on the cluster.
    """
    data = writable_dir(tmp_path / "data")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "tokens").write_text(f"labeller:{FEEDBACK_TOKEN}\n")
    secret.chmod(0o755)
    (secret / "tokens").chmod(0o644)
    port = free_port()
    name = f"garbage-monitoring-test-{port}"
    engine.run(
        "run",
        "-d",
        "--rm",
        "--name",
        name,
        "--network",
        "host",
        *HARDENED,
        "-v",
        f"{mounted_model}:/mnt/models:ro",
        "-v",
        f"{data}:/data",
        "-v",
        f"{secret}:/var/run/secrets/garbage-collector:ro",
        monitoring_image,
        "collector",
        "--token-file",
        "/var/run/secrets/garbage-collector/tokens",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        "/mnt/models",
        "--db",
        "sqlite:////data/inferences.db",
        "--log-level",
        "warning",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                ready = httpx.get(f"{url}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            state = engine.run("inspect", "-f", "{{.State.Running}}", name, check=False)
            if (
                state.returncode != 0
                or state.stdout.strip() != "true"
                or time.monotonic() > deadline
            ):
                logs = engine.run("logs", name, check=False)
                pytest.fail(f"collector did not become ready:\n{logs.stdout}\n{logs.stderr}")
            time.sleep(0.5)
        assert ready.json()["status"] == "ready"
        yield url, data / "inferences.db"
    finally:
        engine.run("stop", "-t", "5", name, check=False, timeout=60)


def test_collector_stores_a_payload_logger_event(collector: tuple[str, Path]) -> None:
    from monitoring.store import InferenceStore

    url, db = collector
    images = [jpeg_bytes((60, 160, 90), seed=1), jpeg_bytes((235, 235, 225), seed=2)]
    request = httpx.post(
        f"{url}/events", content=v1_request(images), headers=kserve_headers("req-1", "request")
    )
    assert request.status_code == 202, request.text
    response = httpx.post(
        f"{url}/events",
        content=v1_response(["glass", "paper"], CLASSES),
        headers=kserve_headers("req-1", "response"),
    )
    assert response.status_code == 202, response.text

    store = InferenceStore(str(db))
    try:
        rows = store.load_window().sort_values("item")
    finally:
        store.close()
    assert list(rows["inference_id"]) == ["req-1", "req-1"]
    assert list(rows["prediction"]) == ["glass", "paper"]
    assert rows["inference_service"].eq("garbage-classifier").all()
    assert rows.iloc[1]["brightness"] > rows.iloc[0]["brightness"]  # features from the pixels
    # Labels need the token; the class names come from the mounted model.
    anonymous = httpx.post(f"{url}/feedback", json={"inference_id": "req-1", "label": "glass"})
    assert anonymous.status_code == 401, anonymous.text
    auth = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
    unknown = httpx.post(
        f"{url}/feedback", json={"inference_id": "req-1", "label": "bottle"}, headers=auth
    )
    assert unknown.status_code == 422, unknown.text
    known = httpx.post(
        f"{url}/feedback", json={"inference_id": "req-1", "label": "glass"}, headers=auth
    )
    assert known.status_code == 200 and known.json()["matched"] == 1, known.text


def test_drift_on_mounted_files_gives_the_in_process_verdict(
    engine: Engine,
    monitoring_image: str,
    mounted_model: Path,
    drift_inputs: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    inputs, expected = drift_inputs
    out = writable_dir(tmp_path / "out")
    result = _run(
        engine,
        "-v",
        f"{mounted_model}:/mnt/models:ro",
        "-v",
        f"{inputs}:/inputs:ro",
        "-v",
        f"{out}:/data",
        monitoring_image,
        "drift",
        "--images",
        "/inputs/window",
        "--model",
        "/mnt/models",
        "--reference",
        "/inputs/reference.parquet",
        "--out",
        "/data/drift",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    _assert_same_verdict(summary, json.loads(expected.read_text()))
    assert summary["status"] == "drift" and summary["window_size"] == len(CLASSES) * PER_CLASS
    for name in ("drift_report.html", "drift_report.json", "drift_summary.json", "metrics.prom"):
        assert (out / "drift" / name).is_file(), name
    written = json.loads((out / "drift" / "drift_summary.json").read_text())
    assert written["drift_detected"] is True
    metrics = (out / "drift" / "metrics.prom").read_text().splitlines()
    assert any(line.startswith("garbage_drift_detected 1") for line in metrics), metrics


@pytest.fixture(scope="module")
def mlflow_champion(
    tiny_model_dir: Path, drift_inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real ``mlflow server`` on loopback (proxying its artifacts, as on the cluster) whose
    registry holds the tiny model, with its reference, as champion; yields its URL."""
    from garbage.core.config import load_config

    root = tmp_path_factory.mktemp("mlflow-server")
    with mlflow_server(root) as url:
        config = load_config(
            overrides=[f"work_dir={root / 'work'}", f"registry.tracking_uri={url}"], environ={}
        )
        inputs, _ = drift_inputs
        register_champion(config, tiny_model_dir, inputs / "reference.parquet")
        assert not (root / "work" / "mlflow.db").exists()  # all of it went to the server
        yield url


def test_drift_resolves_the_champion_and_its_reference_from_a_tracking_server(
    engine: Engine,
    monitoring_image: str,
    mlflow_champion: str,
    drift_inputs: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """What the drift CronJob does: models:/...@champion through MLFLOW_TRACKING_URI."""
    inputs, expected = drift_inputs
    out = writable_dir(tmp_path / "out")
    result = _run(
        engine,
        "-e",
        f"MLFLOW_TRACKING_URI={mlflow_champion}",
        "-v",
        f"{inputs}:/inputs:ro",
        "-v",
        f"{out}:/data",
        monitoring_image,
        "drift",
        "--images",
        "/inputs/window",
        "--reference",
        "models:/garbage-classifier@champion",
        "--out",
        "/data/drift",
        "--no-html",
    )
    assert result.returncode == 0, result.stderr
    _assert_same_verdict(json.loads(result.stdout), json.loads(expected.read_text()))
    assert (out / "drift" / "drift_summary.json").is_file()


def test_drift_without_a_registry_says_so_in_one_line(
    engine: Engine, monitoring_image: str
) -> None:
    """No tracking server configured: the champion is looked up in the work dir on /tmp."""
    result = _run(engine, monitoring_image, "drift", "--images", "/tmp")
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "models:/garbage-classifier@champion" in lines[0]
    assert "sqlite:////tmp/garbage-work/mlflow.db" in lines[0]
