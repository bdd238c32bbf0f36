"""The one model-URI resolver: local folders, MLflow URIs (real MLflow, SQLite), storage URIs."""

from __future__ import annotations

from pathlib import Path

import pytest

from garbage.core.model_uri import ModelUriError, require_storage_uri, resolve_storage_uri


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
