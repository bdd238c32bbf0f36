"""Test helpers shared by all test modules (importable as ``support`` via pytest's pythonpath)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from garbage.core.config import Config

REPO_ROOT = Path(__file__).resolve().parents[1]
DEV_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "trashnet-112-dev.tar.gz"
DEV_ARCHIVE_SHA256 = "cb0934a9c4e8c36e8cf510364a57c55f006eabc831a9c5a78194c8059155cb08"
CLASSES = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


def jpeg_bytes(
    color: tuple[int, int, int], size: tuple[int, int] = (112, 84), seed: int = 0, fmt: str = "JPEG"
) -> bytes:
    """A small noisy image of a dominant colour, encoded; different seeds give different bytes."""
    rng = np.random.default_rng(seed)
    base = np.array(color, dtype=np.int16)
    pixels = np.clip(base + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


COLORS = {
    "cardboard": (160, 120, 70),
    "glass": (60, 160, 90),
    "metal": (150, 150, 160),
    "paper": (235, 235, 225),
    "plastic": (40, 90, 200),
    "trash": (90, 40, 40),
}


def make_image_tree(root: Path, per_class: int = 8, classes: list[str] | None = None) -> Path:
    """Write ``per_class`` distinct synthetic JPEGs into each class folder under ``root``."""
    for c_index, name in enumerate(classes or CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (folder / f"{name}{i}.jpg").write_bytes(
                jpeg_bytes(COLORS.get(name, (128, 128, 128)), seed=c_index * 1000 + i)
            )
    return root


def make_archive(tree_parent: Path, archive: Path) -> Path:
    """Pack the folders under ``tree_parent`` into a .tar.gz."""
    with tarfile.open(archive, "w:gz") as tar:
        for child in sorted(tree_parent.iterdir()):
            tar.add(child, arcname=child.name)
    return archive


def train_manifest(root: Path) -> pd.DataFrame:
    """A split manifest that takes every JPEG under the class folders of ``root`` as training."""
    import pandas as pd

    files = sorted(root.rglob("*.jpg"))
    return pd.DataFrame(
        {
            "path": [p.relative_to(root).as_posix() for p in files],
            "label": [p.parent.name for p in files],
            "sha256": "0" * 64,
            "split": "train",
        }
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def mlflow_server(root: Path, timeout: float = 180) -> Iterator[str]:
    """A real ``mlflow server`` process on loopback, its store and artifacts under ``root``.

    It proxies artifacts (``--artifacts-destination``), as the cluster's does; yields its URL.
    """
    port = free_port()
    # The child keeps its own handle of the log file; the parent closes its copy at once.
    with (root / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError as e:
                if process.poll() is not None or time.monotonic() > deadline:
                    log_text = (root / "server.log").read_text()
                    raise RuntimeError(f"mlflow server did not start:\n{log_text}") from e
                time.sleep(1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def register_champion(config: Config, model_dir: Path, reference: Path | None = None) -> str:
    """Log an exported model (with its reference profile) into the config's registry, as the
    pipeline's register step does, and make it the champion; return the version.

    MLflow's process-wide tracking and registry URIs (and the environment variables it sets with
    them) are cleared afterwards, so that code under test finds the registry only through its
    config.
    """
    import mlflow

    from garbage.training.registry import (
        configure_tracking,
        decide_promotion,
        log_onnx_model,
        register_model,
        set_champion,
    )

    metadata = json.loads((model_dir / "metadata.json").read_text())
    try:
        with mlflow.start_run(experiment_id=configure_tracking(config)):
            version = register_model(config, log_onnx_model(model_dir, metadata, reference), {})
        set_champion(config, version, decide_promotion("macro_f1", 0.5, None, 0.0))
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        os.environ.pop("MLFLOW_REGISTRY_URI", None)  # set_*_uri sets them too
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return version


def register_sources(
    config: Config, sources: list[str], champion: str | None = None, challenger: str | None = None
) -> MlflowClient:
    """Versions 1, 2, ... of the config's model in its registry, one per storage URI in ``sources``
    (as versions registered through the cluster's MLflow server point at ``s3://``), with the
    champion and challenger aliases on the versions given."""
    from mlflow import MlflowClient

    uri = config.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = config.registry.model_name
    client.create_registered_model(name)
    for source in sources:
        client.create_model_version(name, source=source)
    for alias, version in (
        (config.registry.champion_alias, champion),
        (config.registry.challenger_alias, challenger),
    ):
        if version is not None:
            client.set_registered_model_alias(name, alias, version)
    return client


def aliases(client: MlflowClient, config: Config) -> dict[str, str]:
    """The aliases of the config's registered model: ``{"champion": "2", ...}``."""
    model = client.get_registered_model(config.registry.model_name)
    return {alias: str(version) for alias, version in model.aliases.items()}


def seal_model(folder: Path) -> dict:
    """Record the digests of the files ``folder/model.onnx`` loads in its ``metadata.json``, as
    export does: for test models built or altered by hand. Returns the metadata written."""
    from garbage.core.classifier import combined_digest, model_file_digests

    metadata_file = folder / "metadata.json"
    metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
    metadata["files"] = model_file_digests(folder / "model.onnx")
    metadata["digest"] = combined_digest(metadata["files"])
    metadata_file.write_text(json.dumps(metadata, indent=2))
    return metadata


def constant_onnx_model(
    folder: Path,
    logits: list[float],
    size: int = 16,
    external_data: str | None = None,
    seal: bool = True,
) -> Path:
    """A classifier graph built with ``onnx.helper`` whose logits are ``logits`` for every image
    (NaN and infinity allowed), with the garbage-classifier metadata and its ``metadata.json``.

    Args:
        folder: Where ``model.onnx`` goes (created).
        logits: One value per class (classes ``c0``, ``c1``...).
        size: Input height and width.
        external_data: A file name to store the logits in as ONNX external data.
        seal: Record the files' digests in ``metadata.json`` (:func:`seal_model`).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    classes = [f"c{i}" for i in range(len(logits))]
    row = numpy_helper.from_array(np.asarray([logits], dtype=np.float32), "row")
    axes = numpy_helper.from_array(np.asarray([1, 2, 3], dtype=np.int64), "axes")
    column = numpy_helper.from_array(np.asarray([1], dtype=np.int64), "column")
    zero = numpy_helper.from_array(np.asarray(0, dtype=np.float32), "zero")
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["pixels", "axes"], ["total"], keepdims=0),
        helper.make_node("Unsqueeze", ["total", "column"], ["per_image"]),
        helper.make_node("Mul", ["per_image", "zero"], ["zeros"]),  # [N, 1] of 0
        helper.make_node("Add", ["zeros", "row"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "constant",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", size, size, 3])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(logits)]),
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, ["batch", len(logits)]
            ),
        ],
        [row, axes, column, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    properties = {
        "classes": json.dumps(classes),
        "image_height": str(size),
        "image_width": str(size),
    }
    helper.set_model_props(model, properties)
    folder.mkdir(parents=True, exist_ok=True)
    if external_data:  # the logits only: shape inference needs the axes in the graph
        [stored] = [t for t in model.graph.initializer if t.name == "row"]
        set_external_data(stored, location=external_data)
        (folder / external_data).parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / "model.onnx"))
    metadata = {"classes": classes, "image_height": size, "image_width": size}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    if seal:
        seal_model(folder)
    return folder
