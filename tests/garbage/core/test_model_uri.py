"""The one model-URI resolver: local folders, MLflow URIs (real MLflow, SQLite), storage URIs."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from garbage.core.classifier import ModelLoadError
from garbage.core.config import Config
from garbage.core.model_uri import (
    ModelUriError,
    champion_uri,
    download,
    require_storage_uri,
    resolve_model_dir,
    resolve_storage_uri,
)


def test_local_folders_and_files_resolve_to_the_folder_of_model_onnx(
    tiny_model_dir: Path, tmp_path: Path, smoke_config: Config
) -> None:
    nested = tmp_path / "mlflow-layout" / "artifacts"  # what an MLflow download looks like
    shutil.copytree(tiny_model_dir, nested)
    assert resolve_model_dir(str(tiny_model_dir), smoke_config) == tiny_model_dir
    assert resolve_model_dir(str(tiny_model_dir / "model.onnx"), smoke_config) == tiny_model_dir
    assert resolve_model_dir(str(tmp_path / "mlflow-layout"), smoke_config) == nested
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_dir(str(tmp_path / "nothing"), smoke_config)


def test_the_champion_of_an_empty_work_dir_says_how_to_get_one(smoke_config: Config) -> None:
    assert champion_uri(smoke_config) == "models:/garbage-classifier@champion"
    with pytest.raises(ModelUriError, match="Run `make run`"):
        resolve_model_dir(None, smoke_config)
    assert not (smoke_config.work_dir / "mlflow.db").exists()  # looking up creates no registry


def test_an_mlflow_uri_without_mlflow_fails_with_one_line(
    monkeypatch: pytest.MonkeyPatch, smoke_config: Config
) -> None:
    """Where MLflow is not installed (the serving image), MLflow URIs say what to use instead."""
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    for uri in ("models:/garbage-classifier@champion", "runs:/abc/model"):
        with pytest.raises(ModelUriError) as raised:
            resolve_model_dir(uri, smoke_config)
        message = str(raised.value)
        assert "\n" not in message
        assert "MLflow is not installed" in message and "local model folder" in message
    with pytest.raises(ModelUriError, match="MLflow is not installed"):
        resolve_storage_uri("models:/garbage-classifier/1")


@pytest.mark.parametrize(
    "uri",
    ["/tmp/model", "file:///tmp/model", "models:/garbage-classifier@champion", "ftp://host/model"],
)
def test_storage_uri_that_kserve_cannot_download_is_rejected(uri):
    with pytest.raises(ModelUriError, match="not one KServe can download"):
        require_storage_uri(uri)


def test_mlflow_uris_resolve_to_the_object_storage_location(tmp_path: Path):
    """Real MLflow (SQLite store): run and registered-model URIs become the bucket paths."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, uri)
    experiment = client.create_experiment(
        "deploy-test", artifact_location="s3://mlflow/artifacts/7"
    )
    run = client.create_run(experiment)
    client.set_terminated(run.info.run_id)
    resolved = resolve_storage_uri(f"runs:/{run.info.run_id}/model", tracking_uri=uri)
    assert resolved == f"s3://mlflow/artifacts/7/{run.info.run_id}/artifacts/model"

    client.create_registered_model("garbage-classifier")
    version = client.create_model_version(
        "garbage-classifier", "s3://mlflow/artifacts/7/models/m-1/artifacts"
    )
    client.set_registered_model_alias("garbage-classifier", "champion", version.version)
    assert (
        resolve_storage_uri("models:/garbage-classifier@champion", tracking_uri=uri)
        == "s3://mlflow/artifacts/7/models/m-1/artifacts"
    )
    assert (
        resolve_storage_uri(
            "mlflow-artifacts:/7/models/m-2/artifacts",
            artifacts_destination="s3://mlflow/artifacts",
        )
        == "s3://mlflow/artifacts/7/models/m-2/artifacts"
    )
    with pytest.raises(ModelUriError, match="artifacts-destination"):
        resolve_storage_uri("mlflow-artifacts:/7/models/m-2/artifacts")
    with pytest.raises(ModelUriError, match="cannot resolve models:/nope/1"):
        resolve_storage_uri("models:/nope/1", tracking_uri=uri)


def test_an_object_storage_folder_that_cannot_be_downloaded_says_what_it_needs(
    smoke_config: Config,
) -> None:
    with pytest.raises(ModelUriError) as raised:
        resolve_model_dir("s3://no-such-bucket/models/m-1/artifacts", smoke_config)
    message = str(raised.value)
    assert message.startswith("cannot download s3://no-such-bucket/models/m-1/artifacts")
    assert "make run" not in message and "local folder" in message


@pytest.mark.parametrize("escape", ["answer", "link"])
def test_a_download_that_lands_outside_the_cache_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, escape: str
) -> None:
    """A fake MLflow download (a real store cannot be made to misbehave here): what it reports,
    and every link in what it wrote, must stay inside the destination."""
    import mlflow

    outside = tmp_path / "outside"
    outside.mkdir()

    def fake_download_artifacts(artifact_uri: str, dst_path: str, tracking_uri: str) -> str:
        if escape == "answer":
            return str(outside)
        (Path(dst_path) / "model").mkdir()
        (Path(dst_path) / "model" / "weights.bin").symlink_to(outside / "secret")
        return str(Path(dst_path) / "model")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", fake_download_artifacts)
    destination = tmp_path / "cache" / "s3_bucket_model"
    with pytest.raises(ModelUriError, match="outside the download folder"):
        download("s3://bucket/model", "sqlite:///unused.db", destination)
