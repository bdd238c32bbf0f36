"""Resolve a model URI (folder, KServe's /mnt/models, MLflow ``models:/``, ``runs:/``) locally."""

from __future__ import annotations

from pathlib import Path

from components.config import Config
from components.inference import ModelLoadError, find_model_file

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def resolve_model_dir(uri: str | None, config: Config) -> Path:
    """Return a local folder holding ``model.onnx`` for ``uri``.

    Args:
        uri: A local path (folder or ``.onnx`` file), an MLflow URI such as
            ``models:/garbage-classifier@champion`` or ``models:/garbage-classifier/3``, or None
            for the configured registry's champion.
        config: Supplies the tracking URI, model name and champion alias.

    Raises:
        ModelLoadError: Nothing usable at ``uri`` (or no champion yet).
    """
    if uri is None:
        from components.registry import champion_uri

        uri = champion_uri(config)
    if uri.startswith(MLFLOW_SCHEMES):
        from components.registry import RegistryError, download_model

        cache = (
            config.work_dir / "models" / uri.replace(":/", "_").replace("/", "_").replace("@", "_")
        )
        try:
            # An alias can move: download every time rather than trust the cache.
            local = download_model(uri, config, dst=cache)
        except RegistryError as e:
            raise ModelLoadError(
                f"cannot load {uri}: {e}. Run `make run` (or `garbage pipeline run`) to train and "
                "register a champion, or pass --model with a folder that holds model.onnx"
            ) from e
        return find_model_file(local).parent
    return find_model_file(Path(uri).expanduser()).parent
