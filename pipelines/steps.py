"""KFP v2 components: thin wrappers over ``components.steps``.

Every component takes the validated config as JSON (validated once, by the CLI) and typed
artifacts; the work happens in the plain functions, which run unchanged in tests, under
``kfp.local`` and in the components image on a cluster. Imports live inside the functions because
KFP ships each function's source on its own.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import (
    HTML,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

from pipelines.images import COMPONENTS_IMAGE

component = dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)


@component
def fetch_data(config_json: str, images: Output[Dataset]) -> None:
    """Download (or copy) the archive, verify its sha256 and publish the image folders."""
    from pathlib import Path

    from components.config import Config
    from components.steps import fetch_step

    info = fetch_step(Config.model_validate_json(config_json), Path(images.path))
    images.metadata.update(info)


@component
def validate_data(
    config_json: str,
    images: Input[Dataset],
    table: Output[Dataset],
    report: Output[Markdown],
    summary: Output[Metrics],
) -> None:
    """Check every image; publish the kept-image table and a readable report; fail on errors."""
    import shutil
    from pathlib import Path

    from components.config import Config
    from components.steps import TABLE_FILENAME, validate_step

    out = Path(table.path)
    try:
        result = validate_step(Config.model_validate_json(config_json), Path(images.path), out)
    finally:
        if (out / "validation.md").exists():
            shutil.copyfile(out / "validation.md", report.path)
    for name, count in result["class_counts"].items():
        summary.log_metric(f"images_{name}", count)
    summary.log_metric("images_kept", result["num_kept"])
    summary.log_metric("label_conflicts", len(result["label_conflicts"]))
    table.metadata.update({"file": TABLE_FILENAME, "rows": result["num_kept"]})


@component
def split_data(config_json: str, table: Input[Dataset], manifest: Output[Dataset]) -> None:
    """Stratified, seeded train/val/test manifest with content hashes."""
    from pathlib import Path

    from components.config import Config
    from components.steps import TABLE_FILENAME, split_step

    summary = split_step(
        Config.model_validate_json(config_json),
        Path(table.path) / TABLE_FILENAME,
        Path(manifest.path),
    )
    manifest.metadata.update({s: sum(c.values()) for s, c in summary.items()})


@component
def train_model(
    config_json: str,
    images: Input[Dataset],
    manifest: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
) -> str:
    """Fine-tune the backbone (GPU with mixed precision when present); return the MLflow run id."""
    from pathlib import Path

    from components.config import Config
    from components.steps import train_step

    summary = train_step(
        Config.model_validate_json(config_json),
        Path(images.path),
        Path(manifest.path),
        Path(model.path),
    )
    model.metadata.update({"framework": "pytorch", "file": "best.pt", **summary})
    for key in ("best_val_macro_f1", "best_epoch", "train_images_per_second"):
        metrics.log_metric(key, summary[key])
    return summary["run_id"]


@component
def evaluate_model(
    config_json: str,
    run_id: str,
    images: Input[Dataset],
    manifest: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    evaluation: Output[Dataset],
) -> float:
    """Test-set metrics, confusion matrix and misclassified gallery; return test macro-F1."""
    import shutil
    from pathlib import Path

    from components.config import Config
    from components.steps import evaluate_step

    out = Path(evaluation.path)
    result = evaluate_step(
        Config.model_validate_json(config_json),
        Path(model.path) / "best.pt",
        Path(images.path),
        Path(manifest.path),
        out,
        run_id,
    )
    metrics.log_metric("test_accuracy", result["accuracy"])
    metrics.log_metric("test_macro_f1", result["macro_f1"])
    for name, values in result["per_class"].items():
        metrics.log_metric(f"test_recall_{name}", values["recall"])
    confusion.log_confusion_matrix(result["classes"], result["confusion_matrix"])
    shutil.copyfile(out / "report.html", report.path)
    return float(result["macro_f1"])


@component
def export_model(
    config_json: str,
    run_id: str,
    images: Input[Dataset],
    manifest: Input[Dataset],
    model: Input[Model],
    onnx_model: Output[Model],
) -> None:
    """ONNX with preprocessing in the graph, parity-checked against PyTorch."""
    from pathlib import Path

    from components.config import Config
    from components.steps import export_step

    metadata = export_step(
        Config.model_validate_json(config_json),
        Path(model.path) / "best.pt",
        Path(images.path),
        Path(manifest.path),
        Path(onnx_model.path),
        run_id,
    )
    onnx_model.metadata.update(
        {
            "framework": "onnx",
            "file": "model.onnx",
            "parity_max_abs_diff": metadata["parity_max_abs_diff"],
        }
    )


@component
def build_reference(
    images: Input[Dataset],
    manifest: Input[Dataset],
    onnx_model: Input[Model],
    reference: Output[Dataset],
) -> None:
    """Monitoring features (and the model's predictions) of the training and validation images."""
    from pathlib import Path

    from components.data.split import read_manifest
    from monitoring.reference import build_reference as build

    out = Path(reference.path) / "reference.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    build(
        Path(images.path), read_manifest(Path(manifest.path)), out, model_dir=Path(onnx_model.path)
    )
    reference.metadata.update({"file": out.name})


@component
def register_model(
    config_json: str,
    run_id: str,
    images: Input[Dataset],
    manifest: Input[Dataset],
    onnx_model: Input[Model],
    reference: Input[Dataset],
    decision: Output[Markdown],
    # KFP reads the outputs from a NamedTuple built in the signature: the source ships alone.
) -> NamedTuple("GateOutputs", [("promoted", bool), ("version", str), ("model_uri", str)]):  # type: ignore[valid-type]
    """Register in MLflow and promote through the gate; return whether it was promoted."""
    import shutil
    from pathlib import Path
    from typing import NamedTuple

    from components.config import Config
    from components.steps import register_step

    work = Path(decision.path + ".d")
    result = register_step(
        Config.model_validate_json(config_json),
        Path(onnx_model.path),
        Path(images.path),
        Path(manifest.path),
        work,
        run_id,
        reference=Path(reference.path),
    )
    shutil.copyfile(work / "decision.md", decision.path)
    decision.metadata.update({"promoted": result["promote"], "version": result["version"]})
    # The same functional NamedTuple as the return annotation, from which KFP reads the outputs.
    GateOutputs = NamedTuple(  # noqa: UP014
        "GateOutputs", [("promoted", bool), ("version", str), ("model_uri", str)]
    )
    return GateOutputs(bool(result["promote"]), str(result["version"]), str(result["model_uri"]))
