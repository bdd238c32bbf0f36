"""Export a trained checkpoint to ONNX with preprocessing in the graph, and check its parity.

The graph takes ``uint8 [N, H, W, 3]`` RGB pixels (the output of the shared preprocessing) and
returns ``logits`` and ``probabilities``; class names, input size and normalisation travel in the
ONNX metadata properties and in ``metadata.json`` beside the model, with the sha256 of every file
the model loads (``files``) and their combined ``digest``, which loading checks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from garbage.core.classifier import (
    INPUT_NAME,
    METADATA_FILENAME,
    MODEL_FILENAME,
    OUTPUT_LOGITS,
    OUTPUT_PROBABILITIES,
    ModelMetadata,
    OnnxClassifier,
    combined_digest,
    model_file_digests,
)
from garbage.core.names import MODEL_NAME
from garbage.training.train import load_checkpoint

PARITY_TOLERANCE = 1e-4
OPSET = 17


class ExportParityError(RuntimeError):
    """The ONNX model's logits differ from PyTorch's beyond the tolerance."""


class _WithProbabilities(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(pixels)
        return logits, torch.softmax(logits, dim=1)


def export_onnx(
    checkpoint: Path,
    out_dir: Path,
    parity_images: Sequence[np.ndarray] = (),
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out_dir/model.onnx`` and write ``metadata.json``.

    Args:
        checkpoint: A checkpoint written by the training core.
        out_dir: Destination folder (created).
        parity_images: Real ``uint8 [H, W, 3]`` inputs for the parity check, besides random ones.
        extra_metadata: More string-able facts to embed (e.g. training run id).

    Returns:
        The metadata written, including ``parity_max_abs_diff``, ``files`` (sha256 by file name)
        and ``digest``.

    Raises:
        ExportParityError: ONNX Runtime's logits differ from PyTorch's by more than 1e-4.
        CheckpointError: ``checkpoint`` is not one the training core wrote.
        ModelLoadError: The metadata breaks a limit that loading enforces (e.g. a class name).
    """
    model, state = load_checkpoint(checkpoint)
    height, width = state["image_height"], state["image_width"]
    out_dir.mkdir(parents=True, exist_ok=True)
    # A metadata.json left from an earlier export would describe another model.
    (out_dir / METADATA_FILENAME).unlink(missing_ok=True)
    model_path = out_dir / MODEL_FILENAME
    wrapper = _WithProbabilities(model).eval()
    example = torch.zeros(2, height, width, 3, dtype=torch.uint8)
    torch.onnx.export(
        wrapper,
        (example,),
        str(model_path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_LOGITS, OUTPUT_PROBABILITIES],
        dynamic_axes={
            INPUT_NAME: {0: "batch"},
            OUTPUT_LOGITS: {0: "batch"},
            OUTPUT_PROBABILITIES: {0: "batch"},
        },
        opset_version=OPSET,
        dynamo=False,
    )
    metadata: dict[str, Any] = {
        "name": MODEL_NAME,
        "classes": state["classes"],
        "image_height": height,
        "image_width": width,
        "input": f"{INPUT_NAME}: uint8 [batch, {height}, {width}, 3], RGB, resized with "
        "garbage.core.preprocessing (PIL bilinear); normalisation is inside the graph",
        "outputs": [OUTPUT_LOGITS, OUTPUT_PROBABILITIES],
        "norm_mean": state["norm_mean"],
        "norm_std": state["norm_std"],
        "backbone": state["model"]["backbone"],
        "epoch": state.get("epoch"),
        **(extra_metadata or {}),
    }
    graph = onnx.load(str(model_path))
    del graph.metadata_props[:]
    for key, value in metadata.items():
        entry = graph.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.save(graph, str(model_path))

    rng = np.random.default_rng(0)
    batch = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
    batch += [np.asarray(p, dtype=np.uint8) for p in parity_images]
    pixels = np.stack(batch)
    with torch.no_grad():
        expected = model(torch.from_numpy(pixels)).numpy()
    # Checked before its digests are recorded: a model that fails parity gets no metadata.json.
    actual = OnnxClassifier(model_path, device="cpu", allow_unverified=True).logits(pixels)
    diff = float(np.max(np.abs(expected - actual)))
    if diff > PARITY_TOLERANCE:
        raise ExportParityError(
            f"ONNX logits differ from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE:.0e}) on "
            f"{len(pixels)} images; the exported model is not used"
        )
    metadata["parity_max_abs_diff"] = diff
    metadata["parity_images"] = len(pixels)
    metadata["files"] = model_file_digests(model_path)
    metadata["digest"] = combined_digest(metadata["files"])
    ModelMetadata.from_dict(metadata, str(out_dir / METADATA_FILENAME))  # what loading accepts
    (out_dir / METADATA_FILENAME).write_text(json.dumps(metadata, indent=2))
    return metadata
