"""Evaluate a checkpoint on a split: metrics JSON, confusion-matrix plot, misclassified gallery."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from garbage.core.classifier import predict_in_batches
from garbage.core.preprocessing import decode_image, to_model_input
from garbage.training.metrics import classification_metrics
from garbage.training.train import load_checkpoint

_GALLERY_MAX = 24


def predict_images(
    checkpoint: Path, images_root: Path, paths: Sequence[str], batch_size: int = 64
) -> tuple[np.ndarray, list[str]]:
    """Probabilities ``[N, C]`` of the checkpoint on the listed images, and its class names."""
    model, state = load_checkpoint(checkpoint)
    height, width = state["image_height"], state["image_width"]

    @torch.no_grad()
    def run(pixels: np.ndarray) -> np.ndarray:
        return torch.softmax(model(torch.from_numpy(pixels)), dim=1).numpy()

    images = (
        to_model_input(decode_image((images_root / p).read_bytes()), height, width) for p in paths
    )
    return predict_in_batches(run, images, batch_size), list(state["classes"])


def plot_confusion_matrix(
    matrix: np.ndarray, classes: Sequence[str], path: Path, title: str = "Confusion matrix (test)"
) -> Path:
    """Save a labelled confusion-matrix heat map (counts, row-normalised colours) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=120)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if shares[i, j] > 0.5 else "black",
                fontsize=9,
            )
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_misclassified(images_root: Path, errors: pd.DataFrame, path: Path) -> Path:
    """Save a gallery of up to 24 misclassified images, titled true -> predicted (score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = errors.sort_values("score", ascending=False).head(_GALLERY_MAX)
    cols = 6
    rows = max(1, int(np.ceil(len(shown) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.1), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, shown.itertuples(), strict=False):
        ax.imshow(decode_image((images_root / row.path).read_bytes()))
        ax.set_title(f"{row.label} → {row.predicted}\n{row.score:.2f}", fontsize=8)
    if shown.empty:
        axes.flat[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle(f"Misclassified test images ({len(errors)} in all; most confident first)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _png_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def render_html(metrics: dict[str, Any], confusion_png: Path, gallery_png: Path) -> str:
    """A self-contained HTML report (shown in the KFP UI)."""
    rows = "".join(
        f"<tr><td>{name}</td><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>"
        f"<td>{m['f1']:.3f}</td><td>{m['support']}</td></tr>"
        for name, m in metrics["per_class"].items()
    )
    return (
        "<html><head><meta charset='utf-8'><title>Evaluation</title></head><body>"
        f"<h1>Test accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}</h1>"
        "<table border='1' cellpadding='4'><tr><th>class</th><th>precision</th><th>recall</th>"
        f"<th>F1</th><th>support</th></tr>{rows}</table>"
        f"<h2>Confusion matrix</h2>{_png_tag(confusion_png)}"
        f"<h2>Misclassified images</h2>{_png_tag(gallery_png)}</body></html>"
    )


def evaluate_checkpoint(
    checkpoint: Path, images_root: Path, manifest: pd.DataFrame, out_dir: Path, split: str = "test"
) -> dict[str, Any]:
    """Evaluate on one split of the manifest and write the report files into ``out_dir``.

    Writes ``metrics.json``, ``predictions.csv``, ``confusion_matrix.png``, ``misclassified.png``
    and ``report.html``.

    Returns:
        The metrics: accuracy, macro-F1, per-class precision/recall/F1/support, confusion matrix.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = manifest[manifest["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"the manifest has no {split!r} images")
    probabilities, classes = predict_images(checkpoint, images_root, list(rows["path"]))
    index = {c: i for i, c in enumerate(classes)}
    predicted = probabilities.argmax(axis=1)
    metrics = classification_metrics([index[label] for label in rows["label"]], predicted, classes)
    metrics["split"] = split
    metrics["num_images"] = len(rows)
    metrics["classes"] = classes
    predictions = rows[["path", "label", "sha256"]].assign(
        predicted=[classes[i] for i in predicted], score=probabilities.max(axis=1)
    )
    predictions.to_csv(out_dir / "predictions.csv", index=False)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    confusion = plot_confusion_matrix(
        np.array(metrics["confusion_matrix"]), classes, out_dir / "confusion_matrix.png"
    )
    gallery = plot_misclassified(
        images_root,
        predictions[predictions["label"] != predictions["predicted"]],
        out_dir / "misclassified.png",
    )
    (out_dir / "report.html").write_text(render_html(metrics, confusion, gallery))
    return metrics
