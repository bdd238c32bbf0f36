"""The promotion gate and the MLflow registry, on the embedded store and a real server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from support import (
    CLASSES,
    constant_onnx_model,
    jpeg_bytes,
    make_archive,
    make_image_tree,
    mlflow_server,
    register_champion,
)

from garbage.core.classifier import OnnxClassifier
from garbage.core.config import CardConfig, Config, ExternalSet
from garbage.core.model_uri import resolve_model_dir
from garbage.training.data.split import read_manifest, write_manifest
from garbage.training.lineage import code_version, data_version
from garbage.training.registry import (
    CHECKPOINT_ARTIFACT,
    RegistryError,
    champion_version,
    checkpoint_of,
    configure_tracking,
    decide_promotion,
    version_of,
)
from garbage.training.steps import register_step


@pytest.mark.parametrize(
    ("candidate", "champion", "margin", "floor", "promote", "words"),
    [
        (0.80, None, 0.0, 0.0, True, "no champion yet"),
        (0.85, 0.80, 0.01, 0.0, True, "beats champion"),
        (0.80, 0.80, 0.0, 0.0, False, "does not beat"),
        (0.805, 0.80, 0.01, 0.0, False, "the champion stays"),
        (0.70, 0.60, 0.0, 0.75, False, "below the floor"),
        (0.50, None, 0.0, 0.75, False, "below the floor"),
    ],
)
def test_gate_decisions(candidate, champion, margin, floor, promote, words) -> None:
    decision = decide_promotion("macro_f1", candidate, champion, margin, floor, "3")
    assert decision.promote is promote
    assert words in decision.reason


def test_no_champion_is_none(smoke_config: Config) -> None:
    configure_tracking(smoke_config)
    assert champion_version(smoke_config) is None


def assert_same_model(downloaded: Path, exported: Path) -> None:
    """The registry's copy carries the same metadata and gives the same outputs."""
    a, b = OnnxClassifier.load(downloaded), OnnxClassifier.load(exported)
    assert a.metadata == b.metadata
    assert a.digest == b.digest is not None  # the same files, verified on both sides
    pixels = np.stack([a.preprocess(jpeg_bytes((40 * i, 90, 200), seed=i)) for i in range(4)])
    assert np.array_equal(a.logits(pixels), b.logits(pixels))


def _manifest(image_tree: Path, tmp_path: Path) -> Path:
    rows = [
        {"path": f"{c}/{c}{i}.jpg", "label": c, "sha256": f"{c}{i}", "split": "test"}
        for c in CLASSES
        for i in range(3)
    ]
    return write_manifest(pd.DataFrame(rows), tmp_path / "manifest.csv")


def _register_twice(config: Config, model_dir: Path, image_tree: Path, tmp_path: Path):
    manifest = _manifest(image_tree, tmp_path)
    experiment = configure_tracking(config)
    decisions = []
    for i in range(2):
        with mlflow.start_run(experiment_id=experiment) as run:
            run_id = run.info.run_id
        gate = tmp_path / f"gate{i}"
        decisions.append(
            {
                **register_step(config, model_dir, image_tree, manifest, gate, run_id),
                "run_id": run_id,
            }
        )
    return decisions


def test_register_and_gate_on_the_embedded_store(
    smoke_config: Config, tiny_model_dir: Path, image_tree: Path, tmp_path: Path
) -> None:
    first, second = _register_twice(smoke_config, tiny_model_dir, image_tree, tmp_path)
    assert first["promote"] and first["version"] == "1"
    assert not second["promote"] and second["version"] == "2"
    assert "does not beat champion v1" in second["reason"]
    assert champion_version(smoke_config) == "1"
    assert (
        (tmp_path / "gate1" / "decision.md")
        .read_text()
        .startswith("# Promotion gate: version 2 not promoted")
    )
    assert (smoke_config.work_dir / "mlflow.db").is_file()
    assert_same_model(resolve_model_dir(None, smoke_config), tiny_model_dir)


def test_a_registered_version_links_to_its_run_and_carries_its_lineage_and_card(
    smoke_config: Config, tiny_model_dir: Path, image_tree: Path, tmp_path: Path
) -> None:
    """The version's run, lineage tags and description (the model card, with the measured
    external set), and the card as the run's artifact and in the step's out_dir."""
    make_image_tree(tmp_path / "site" / "site-dev", per_class=2)
    archive = make_archive(tmp_path / "site", tmp_path / "site-dev.tar.gz")
    external = ExternalSet(
        name="site-dev",
        source=str(archive),
        sha256=hashlib.sha256(archive.read_bytes()).hexdigest(),
    )
    config = smoke_config.model_copy(update={"card": CardConfig(external=[external])})
    manifest_csv = _manifest(image_tree, tmp_path)
    with mlflow.start_run(experiment_id=configure_tracking(config)) as run:
        run_id = run.info.run_id
    result = register_step(config, tiny_model_dir, image_tree, manifest_csv, tmp_path / "g", run_id)

    uri = config.mlflow_tracking_uri
    version = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(
        config.registry.model_name, result["version"]
    )
    assert version.run_id == run_id
    code, data = code_version(), data_version(config, read_manifest(manifest_csv))
    assert version.tags["run_id"] == run_id
    assert version.tags["git.commit"] == code.commit == result["git_commit"]
    assert version.tags["git.dirty"] == code.dirty_text
    assert version.tags["data.version"] == data.version == result["data_version"]
    assert version.tags["data.sha256"] == config.data.sha256

    card = (tmp_path / "g" / "model_card.md").read_text()
    assert version.description == card
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/model_card.md") == card
    assert card.startswith(f"# Model card: garbage-classifier v{result['version']}\n")
    assert f"`{run_id}`" in card and code.commit in card and data.version in card
    assert "promoted to champion: no champion yet" in card
    assert "| site-dev | 12 |" in card  # 2 images of each of the six classes, scored


def test_a_champion_that_fails_verification_is_not_compared(
    smoke_config: Config, tiny_model_dir: Path, image_tree: Path, tmp_path: Path
) -> None:
    """A registered champion whose stored weights changed is reported, not scored or served."""
    manifest = _manifest(image_tree, tmp_path)
    experiment = configure_tracking(smoke_config)
    decisions = []
    for i in range(2):
        with mlflow.start_run(experiment_id=experiment) as run:
            run_id = run.info.run_id
        decisions.append(
            register_step(
                smoke_config, tiny_model_dir, image_tree, manifest, tmp_path / f"g{i}", run_id
            )
        )
        if i == 0:
            [stored] = [
                p
                for p in smoke_config.work_dir.rglob("model.onnx")
                if (smoke_config.work_dir / "models") not in p.parents
            ]
            data = bytearray(stored.read_bytes())
            data[len(data) // 2] ^= 0x01
            stored.write_bytes(bytes(data))
    assert decisions[1]["promote"]
    assert "champion v1 fails verification" in decisions[1]["reason"]
    assert "does not match the digest recorded at export" in decisions[1]["reason"]


def test_a_model_with_external_weights_comes_back_from_the_registry_verified(
    smoke_config: Config, tmp_path: Path
) -> None:
    exported = constant_onnx_model(tmp_path / "m", [0.0, 1.0, 2.0], external_data="w/weights.bin")
    register_champion(smoke_config, exported)
    downloaded = resolve_model_dir(None, smoke_config)
    assert (downloaded / "w" / "weights.bin").read_bytes() == (
        exported / "w" / "weights.bin"
    ).read_bytes()
    assert OnnxClassifier.load(downloaded).digest == OnnxClassifier.load(exported).digest


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` process on loopback with its own SQLite store and artifacts."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.mark.integration
def test_register_and_gate_against_a_real_mlflow_server(
    tracking_server: str,
    smoke_config: Config,
    tiny_model_dir: Path,
    image_tree: Path,
    tmp_path: Path,
) -> None:
    config = smoke_config.model_copy(
        update={
            "registry": smoke_config.registry.model_copy(update={"tracking_uri": tracking_server})
        }
    )
    first, second = _register_twice(config, tiny_model_dir, image_tree, tmp_path)
    assert first["promote"] and not second["promote"]
    assert champion_version(config) == first["version"]
    assert not (config.work_dir / "mlflow.db").exists()  # nothing went to the embedded store
    assert_same_model(
        resolve_model_dir("models:/garbage-classifier@champion", config), tiny_model_dir
    )


def test_a_checkpoint_is_found_through_every_uri_that_names_its_version(
    smoke_config: Config, tmp_path: Path
) -> None:
    register_champion(smoke_config, constant_onnx_model(tmp_path / "m", [0.0, 1.0, 2.0]))
    client = MlflowClient(smoke_config.mlflow_tracking_uri, smoke_config.mlflow_tracking_uri)
    name = smoke_config.registry.model_name
    run_id = client.get_model_version(name, "1").run_id
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"the weights of version 1")
    client.log_artifact(run_id, str(checkpoint), CHECKPOINT_ARTIFACT.rsplit("/", 1)[0])

    for i, uri in enumerate([f"models:/{name}@champion", f"models:/{name}/1", f"runs:/{run_id}"]):
        found = checkpoint_of(smoke_config, uri, tmp_path / f"download-{i}")
        assert found.read_bytes() == checkpoint.read_bytes(), uri
    assert version_of(smoke_config, f"models:/{name}@champion") == "1"
    assert version_of(smoke_config, f"models:/{name}/1") == "1"
    assert version_of(smoke_config, "models:/another-model/1") is None
    with pytest.raises(RegistryError, match="no such version"):
        version_of(smoke_config, f"models:/{name}/7")
    with pytest.raises(RegistryError, match="name a registered version"):
        checkpoint_of(smoke_config, "models:/m-0123456789", tmp_path / "logged")
    with pytest.raises(RegistryError, match="no checkpoint in the registry"):
        checkpoint_of(smoke_config, f"models:/{name}/7", tmp_path / "missing")
