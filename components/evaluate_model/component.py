"""Evaluate the trained checkpoint on the test split."""

from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.image import component


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
    """Test-set metrics, confusion matrix and misclassified gallery; return test macro-F1.

    Args:
        config_json: The validated run config as JSON.
        run_id: The MLflow run of the training step.
        images: The class folders.
        manifest: The split manifest.
        model: The checkpoint folder (``best.pt``).
        metrics: Test accuracy, macro-F1 and per-class recall.
        confusion: The confusion matrix (shown by the KFP UI).
        report: The HTML report (shown by the KFP UI).
        evaluation: Every report file (metrics, predictions, plots).

    Returns:
        The test macro-F1.
    """
    import shutil
    from pathlib import Path

    from garbage.core.config import Config
    from garbage.training.steps import evaluate_step

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
