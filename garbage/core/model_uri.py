"""Model URIs, resolved in one place: what ``--model`` (and every other model argument) may name.

=========================  =================================================================
``PATH``                   a folder holding ``model.onnx`` in any layout (an export folder, an
                           MLflow artifact folder, KServe's ``/mnt/models``), or a ``.onnx`` file
``models:/NAME/3``         a registered version; ``models:/NAME@champion`` the one an alias marks
``runs:/RUN_ID/PATH``      an artifact of an MLflow run
``mlflow-artifacts:/PATH`` an artifact served by an MLflow server's artifact proxy
``s3://BUCKET/PATH``       object storage (also ``gs://``, ``https://``, ...): what KServe's storage
                           initializer downloads
=========================  =================================================================

:func:`resolve_model_dir` turns any of them into a local folder that holds ``model.onnx``,
:func:`resolve_storage_uri` into the object-storage URI an InferenceService downloads. All but a
local path go through MLflow, imported only then: where MLflow is not installed (the serving
image) such a URI fails with one line that says what to use instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from garbage.core.classifier import ModelLoadError, find_model_file
from garbage.core.config import Config

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:")
STORAGE_SCHEMES = (
    "s3://",
    "gs://",
    "pvc://",
    "https://",
    "http://",
    "hdfs://",
    "webhdfs://",
    "oci://",
)


class ModelUriError(ModelLoadError):
    """A model URI names nothing usable, or cannot be resolved here; the message says why."""


def champion_uri(config: Config) -> str:
    """``models:/NAME@ALIAS`` of the configured registry's champion."""
    return f"models:/{config.registry.model_name}@{config.registry.champion_alias}"


def require_storage_uri(uri: str) -> str:
    """``uri``, stripped, when KServe's storage initializer can download it.

    Raises:
        ModelUriError: A local path, an MLflow URI (see :func:`resolve_storage_uri`) or an
            unknown scheme.
    """
    uri = uri.strip()
    if not uri.startswith(STORAGE_SCHEMES):
        raise ModelUriError(
            f"storage URI {uri!r} is not one KServe can download; use one of "
            f"{', '.join(s.rstrip(':/') for s in STORAGE_SCHEMES)} (for example "
            "s3://mlflow/artifacts/1/models/m-123/artifacts), or an MLflow models:/ or runs:/ "
            "URI together with the tracking server so it can be resolved"
        )
    return uri


def is_local(uri: str) -> bool:
    """True for a filesystem path (anything without an MLflow or storage scheme)."""
    return not uri.startswith(MLFLOW_SCHEMES + STORAGE_SCHEMES)


def resolve_model_dir(uri: str | None, config: Config) -> Path:
    """A local folder holding ``model.onnx`` for ``uri``.

    Args:
        uri: Any URI of the module docstring; None for the configured registry's champion.
        config: Supplies the tracking URI, the champion alias and the download cache
            (``<work_dir>/models``).

    Raises:
        ModelUriError: Nothing usable at ``uri``, no champion yet, or MLflow missing for a
            URI that needs it.
        ModelLoadError: The folder holds no ``model.onnx``.
    """
    uri = uri or champion_uri(config)
    if is_local(uri):
        return find_model_file(Path(uri).expanduser()).parent
    cache = config.work_dir / "models" / re.sub(r"[^A-Za-z0-9._-]+", "_", uri)
    # An alias can move: download every time rather than trust the cache.
    return find_model_file(download(uri, config.mlflow_tracking_uri, cache)).parent


def resolve_storage_uri(
    uri: str, tracking_uri: str | None = None, artifacts_destination: str | None = None
) -> str:
    """The object-storage URI of a model, for an InferenceService's ``storageUri``.

    Storage URIs come back unchanged; MLflow URIs are looked up in the registry. An MLflow server
    that proxies artifacts answers ``mlflow-artifacts:/PATH``; ``artifacts_destination`` (the
    server's ``--artifacts-destination``, e.g. ``s3://mlflow/artifacts``) maps that onto the bucket.

    Raises:
        ModelUriError: A local path, an unknown scheme, or an MLflow URI that cannot be resolved.
    """
    uri = uri.strip()
    if uri.startswith("mlflow-artifacts:"):
        if not artifacts_destination:
            raise ModelUriError(
                f"{uri} is served through the MLflow server's artifact proxy; pass the "
                "server's --artifacts-destination (e.g. s3://mlflow/artifacts) so it can be "
                "mapped to a bucket KServe can read"
            )
        path = urlparse(uri).path.lstrip("/")  # also mlflow-artifacts://host:port/PATH
        return f"{artifacts_destination.rstrip('/')}/{path}"
    if uri.startswith(("models:/", "runs:/")):
        underlying = _resolve_in_registry(uri, tracking_uri)
        return resolve_storage_uri(underlying, tracking_uri, artifacts_destination)
    return require_storage_uri(uri)


def _mlflow(uri: str) -> Any:
    try:
        import mlflow
    except ImportError as e:
        raise ModelUriError(
            f"{uri} needs MLflow to be resolved, and MLflow is not installed here; pass a local "
            "model folder (on Kubernetes, KServe's storage initializer downloads s3:// URIs into "
            "/mnt/models) or install mlflow"
        ) from e
    return mlflow


def download(uri: str, tracking_uri: str | None, destination: Path) -> Path:
    """Download what an MLflow or object-storage URI names into ``destination``; return it.

    Args:
        uri: ``models:/``, ``runs:/``, ``mlflow-artifacts:`` or a storage URI.
        tracking_uri: The MLflow tracking (and registry) server; None for MLflow's default
            (``MLFLOW_TRACKING_URI``).
        destination: A folder (created).

    Raises:
        ModelUriError: MLflow is not installed, there is no registry yet, nothing is there, or
            what came down lies (or links) outside ``destination``.
    """
    mlflow = _mlflow(uri)
    tracking = tracking_uri or mlflow.get_tracking_uri()
    in_registry = uri.startswith(("models:/", "runs:/"))
    store = Path(tracking.removeprefix("sqlite:///"))
    missing = tracking.startswith("sqlite:///") and not store.is_file()
    if in_registry and missing:
        raise ModelUriError(
            f"cannot load {uri}: there is no registry at {tracking} yet. Run `make run` (or "
            "`garbage pipeline run`) to train and register a champion, or pass --model with a "
            "folder that holds model.onnx"
        )
    destination.mkdir(parents=True, exist_ok=True)
    try:
        location = _underlying_uri(uri, tracking) if in_registry else uri
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=str(destination), tracking_uri=tracking
        )
    except Exception as e:  # MLflow raises many unrelated types for a missing model or server
        if uri.startswith(STORAGE_SCHEMES):
            raise ModelUriError(
                f"cannot download {uri}: {e} (object storage needs its client library, e.g. "
                "boto3 for s3://, and credentials); or pass --model with a local folder"
            ) from e
        raise ModelUriError(
            f"cannot load {uri} from {tracking}: {e}. Run `make run` (or `garbage pipeline run`) "
            "to train and register a champion, or pass --model with a folder that holds model.onnx"
        ) from e
    return _inside(Path(local), destination, uri)


def _inside(local: Path, destination: Path, uri: str) -> Path:
    """``local``, when it and everything under it lie inside ``destination`` (links included)."""
    root = destination.resolve()
    paths = [local, *local.rglob("*")] if local.is_dir() else [local]
    for path in paths:
        if not path.resolve().is_relative_to(root):
            raise ModelUriError(
                f"the download of {uri} put {path} outside the download folder {root} (a path "
                "or link that leads out): refused; check what the artifact store holds there"
            )
    return local


def _underlying_uri(uri: str, tracking_uri: str) -> str:
    """Where the artifacts of a ``models:/`` or ``runs:/`` URI are stored.

    MLflow's own resolution of these URIs reads the process-wide tracking and registry URIs; a
    client made for ``tracking_uri`` keeps this one to the server it is given.
    """
    _mlflow(uri)
    from mlflow import MlflowClient
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    if uri.startswith("runs:/"):
        return str(RunsArtifactRepository.get_underlying_uri(uri, tracking_uri))
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    named = get_model_name_and_version(client, uri)
    if len(named) == 1:  # models:/m-<id>, a logged model
        return str(client.get_logged_model(named[0]).artifact_location)
    return str(client.get_model_version_download_uri(*named))


def _resolve_in_registry(uri: str, tracking_uri: str | None) -> str:
    mlflow = _mlflow(uri)
    try:
        return _underlying_uri(uri, tracking_uri or mlflow.get_tracking_uri())
    except Exception as e:  # MlflowException, connection errors
        where = tracking_uri or mlflow.get_tracking_uri()
        raise ModelUriError(f"cannot resolve {uri} through MLflow at {where}: {e}") from e
