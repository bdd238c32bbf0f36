"""The reference profile: monitoring features of the images the champion was trained on.

The drift job compares live traffic with this table, so it must hold exactly the features the
collector computes (:mod:`monitoring.features`), for the champion's training (and validation)
images. The pipeline builds it next to the model and logs it with the model version in MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from garbage.core.classifier import OnnxClassifier
from garbage.core.model_uri import ModelUriError, download, is_local
from garbage.core.preprocessing import InvalidImageError, decode_image
from monitoring.features import FEATURE_COLUMNS, FEATURE_VERSION, pixel_features

META_COLUMNS = ("path", "label", "split", "sha256")
PREDICTION_BATCH = 64


class ReferenceProfileError(ValueError):
    """The manifest, the images or a reference file are not usable; the message says why."""


def build_reference(
    images_root: Path,
    manifest: pd.DataFrame,
    out_path: Path,
    splits: Sequence[str] = ("train", "val"),
    *,
    model_dir: Path | None = None,
) -> Path:
    """Compute the monitoring features of the manifest's images in ``splits`` and save them.

    Args:
        images_root: Folder the manifest's ``path`` column is relative to.
        manifest: Columns ``path``, ``label``, ``sha256``, ``split`` (the pipeline's split
            manifest).
        out_path: ``.parquet`` (recommended) or ``.csv``; a ``.json`` sidecar records provenance.
        splits: Which splits make up the reference (the data the champion learnt from).
        model_dir: Optional exported model; when given, its predicted class and score are added
            (columns ``prediction``, ``score``), so the class mix of live predictions can be
            compared with the model's own predictions instead of the true labels.

    Returns:
        ``out_path``.

    Raises:
        ReferenceProfileError: Missing columns, no image in ``splits``, or an unreadable image.
    """
    missing = {"path", "label", "sha256", "split"} - set(manifest.columns)
    if missing:
        raise ReferenceProfileError(
            f"the manifest lacks columns {sorted(missing)}; expected path, label, sha256, split"
        )
    chosen = manifest[manifest["split"].isin(list(splits))].reset_index(drop=True)
    if chosen.empty:
        raise ReferenceProfileError(
            f"the manifest has no image in splits {list(splits)} "
            f"(it has {sorted(manifest['split'].unique())})"
        )
    root = Path(images_root)
    rows: list[dict[str, float]] = []
    pixels: list[np.ndarray] = []
    for rel in chosen["path"]:
        file = root / str(rel)
        try:
            image = decode_image(file.read_bytes())
        except (OSError, InvalidImageError) as e:
            raise ReferenceProfileError(f"cannot read reference image {file}: {e}") from e
        array = np.asarray(image, dtype=np.uint8)
        rows.append(pixel_features(array))
        if model_dir is not None:
            pixels.append(array)
    table = pd.concat(
        [
            chosen[list(META_COLUMNS)].reset_index(drop=True),
            pd.DataFrame(rows, columns=list(FEATURE_COLUMNS)),
        ],
        axis=1,
    )
    if model_dir is not None:
        model = OnnxClassifier.load(Path(model_dir), device="cpu")
        predictions = model.predict_images(pixels, PREDICTION_BATCH)
        table["prediction"] = [p.label for p in predictions]
        table["score"] = [p.score for p in predictions]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".csv":
        table.to_csv(out_path, index=False)
    else:
        table.to_parquet(out_path, index=False)
    provenance = {
        "feature_version": FEATURE_VERSION,
        "rows": len(table),
        "splits": list(splits),
        "class_counts": {
            str(k): int(v) for k, v in table["label"].value_counts().sort_index().items()
        },
        "has_predictions": model_dir is not None,
    }
    out_path.with_suffix(out_path.suffix + ".json").write_text(json.dumps(provenance, indent=2))
    return out_path


def load_reference(path: Path) -> pd.DataFrame:
    """Read a reference written by :func:`build_reference` and check it has every feature.

    Raises:
        ReferenceProfileError: The file is missing, unreadable or lacks feature columns.
    """
    path = Path(path)
    if not path.is_file():
        raise ReferenceProfileError(
            f"reference profile {path} does not exist; build it with "
            "monitoring.reference.build_reference (the training pipeline logs it)"
        )
    try:
        table = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise ReferenceProfileError(f"cannot read reference profile {path}: {e}") from e
    lacking = [c for c in FEATURE_COLUMNS if c not in table.columns]
    if lacking:
        raise ReferenceProfileError(
            f"reference profile {path} lacks feature columns {lacking[:5]}; "
            "rebuild it with this version of monitoring.reference"
        )
    return table


def _find_reference(folder: Path) -> Path | None:
    """The shallowest ``*reference*.parquet`` (or ``.csv``) below ``folder``, or None."""
    found = [
        p for suffix in ("parquet", "csv") for p in Path(folder).rglob(f"*reference*.{suffix}")
    ]
    return min(found, key=lambda p: (len(p.parts), str(p))) if found else None


def model_reference(model_dir: Path) -> Path:
    """The reference profile a model carries: a registered version's ``reference/`` artifacts.

    The pipeline logs ``reference/reference.parquet`` inside the model (what ``make run``
    registers), so the champion's folder holds the profile of the images it was trained on.

    Raises:
        ReferenceProfileError: The folder holds no ``*reference*.parquet`` or ``.csv``.
    """
    found = _find_reference(model_dir)
    if found is None:
        raise ReferenceProfileError(
            f"the model at {model_dir} carries no reference profile (reference/reference.parquet); "
            "pass --reference with a profile file or MLflow URI, or use a registered model "
            "version (the pipeline logs the reference with it)"
        )
    return found


def resolve_reference(location: str | Path, download_dir: Path, tracking_uri: str) -> Path:
    """A local reference file for a path or an MLflow artifact URI.

    ``models:/garbage-classifier@champion``, ``runs:/<id>/reference`` and ``mlflow-artifacts:/``
    URIs are downloaded into ``download_dir`` by :func:`garbage.core.model_uri.download` from the
    MLflow server at ``tracking_uri`` (the config's ``Config.mlflow_tracking_uri``, never the
    environment); when the download is a folder, the reference inside it is used, as by
    :func:`model_reference`.

    Raises:
        ReferenceProfileError: Nothing downloadable at the URI, or no reference file in it.
    """
    text = str(location)
    if is_local(text):
        return Path(text)
    try:
        local = download(text, tracking_uri, download_dir)
    except ModelUriError as e:
        raise ReferenceProfileError(
            f"cannot download the reference profile from {text}: {e}"
        ) from e
    if local.is_file():
        return local
    found = _find_reference(local)
    if found is None:
        raise ReferenceProfileError(
            f"{text} holds no *reference*.parquet or .csv file; log the profile "
            "built by monitoring.reference.build_reference with the model version"
        )
    return found
