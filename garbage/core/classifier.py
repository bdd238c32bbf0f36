"""Run an exported ONNX classifier: the batch-prediction and serving backend (no torch needed).

The model folder holds ``model.onnx`` (uint8 ``[N, H, W, 3]`` in; ``logits`` and
``probabilities`` out) whose metadata properties carry the class names and input size;
``metadata.json`` beside it repeats them for people and tools.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort

from garbage.core.preprocessing import (
    DEFAULT_ALLOWED_FORMATS,
    DEFAULT_MAX_PIXELS,
    preprocess_bytes,
    resize_array,
)

MODEL_FILENAME = "model.onnx"
METADATA_FILENAME = "metadata.json"
INPUT_NAME = "image"
OUTPUT_LOGITS = "logits"
OUTPUT_PROBABILITIES = "probabilities"


T = TypeVar("T")


class ModelLoadError(RuntimeError):
    """No usable ONNX model at the given location."""


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter), read lazily."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def predict_in_batches(
    run: Callable[[np.ndarray], np.ndarray], pixels: Iterable[np.ndarray], batch_size: int = 32
) -> np.ndarray:
    """The one batched-prediction loop: ``run`` on ``batch_size`` images at a time, in order.

    Args:
        run: A model: ``uint8 [N, H, W, 3]`` in, one row per image out (an ONNX session's
            probabilities, a PyTorch checkpoint's).
        pixels: ``uint8 [H, W, 3]`` images of the model's input size, consumed lazily.
        batch_size: Images per call of ``run``.

    Returns:
        The rows of every call, stacked: ``[N, C]`` (``[0, 0]`` for no image).
    """
    rows = [run(np.stack(chunk)) for chunk in batched(pixels, batch_size)]
    return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)


@dataclass(frozen=True)
class Prediction:
    """One image's result."""

    label: str
    score: float
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form: ``{"label", "score", "probabilities"}``."""
        return {"label": self.label, "score": self.score, "probabilities": self.probabilities}


def find_model_file(location: Path) -> Path:
    """Return ``model.onnx`` in ``location`` or in a sub-folder of it (MLflow, KServe layouts)."""
    location = Path(location)
    if location.is_file() and location.suffix == ".onnx":
        return location
    if not location.is_dir():
        raise ModelLoadError(f"model location {location} does not exist")
    direct = location / MODEL_FILENAME
    if direct.is_file():
        return direct
    found = sorted(location.rglob(MODEL_FILENAME))
    if not found:
        raise ModelLoadError(
            f"no {MODEL_FILENAME} under {location}; export a model with `garbage pipeline run` "
            "or point --model at an exported model folder"
        )
    return found[0]


def default_providers(device: str = "auto") -> list[str]:
    """ONNX Runtime execution providers for ``auto``/``cpu``/``cuda``, best first."""
    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise ModelLoadError(f"device=cuda but ONNX Runtime offers only {available}")
    return ["CPUExecutionProvider"]


class OnnxClassifier:
    """An exported garbage classifier, ready to predict on bytes or pixels."""

    def __init__(self, model_file: Path, device: str = "auto", intra_op_threads: int | None = None):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        # Worker threads busy-wait between the operators of one call (no wake-up latency per
        # operator) and stop spinning when the call returns, so that between calls they leave
        # the CPUs to request decoding instead of burning them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            self.session = ort.InferenceSession(
                str(model_file), sess_options=options, providers=default_providers(device)
            )
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"cannot load ONNX model {model_file}: {e}") from e
        props = self.session.get_modelmeta().custom_metadata_map
        try:
            self.classes: list[str] = json.loads(props["classes"])
            self.height = int(props["image_height"])
            self.width = int(props["image_width"])
        except (KeyError, ValueError) as e:
            raise ModelLoadError(f"{model_file} lacks the garbage-classifier metadata: {e}") from e
        self.metadata = {k: props[k] for k in props}
        self.model_file = Path(model_file)

    @classmethod
    def load(
        cls, location: Path, device: str = "auto", intra_op_threads: int | None = None
    ) -> OnnxClassifier:
        """Load from a model folder, an MLflow artifact folder or an ``.onnx`` file."""
        return cls(find_model_file(location), device=device, intra_op_threads=intra_op_threads)

    @property
    def providers(self) -> list[str]:
        """Execution providers in use."""
        return self.session.get_providers()

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, C]`` for ``uint8`` images ``[N, H, W, 3]`` of the model's size."""
        return self.session.run([OUTPUT_PROBABILITIES], {INPUT_NAME: pixels})[0]

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """Logits ``[N, C]`` for ``uint8`` images ``[N, H, W, 3]`` of the model's size."""
        return self.session.run([OUTPUT_LOGITS], {INPUT_NAME: pixels})[0]

    def preprocess(
        self,
        data: bytes,
        allowed_formats: Sequence[str] = DEFAULT_ALLOWED_FORMATS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> np.ndarray:
        """Encoded bytes to the model's ``uint8 [H, W, 3]`` input (the shared preprocessing)."""
        return preprocess_bytes(
            data, self.height, self.width, allowed_formats=allowed_formats, max_pixels=max_pixels
        )

    def fit_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Resize one ``uint8 [h, w, 3]`` array to the model's input size."""
        return resize_array(pixels, self.height, self.width)

    def to_predictions(self, probabilities: np.ndarray) -> list[Prediction]:
        """Turn a probability matrix into labelled predictions."""
        results = []
        for row in probabilities:
            best = int(np.argmax(row))
            results.append(
                Prediction(
                    label=self.classes[best],
                    score=float(row[best]),
                    probabilities={c: float(p) for c, p in zip(self.classes, row, strict=True)},
                )
            )
        return results

    def predict_images(
        self, images: Iterable[np.ndarray], batch_size: int = 32
    ) -> list[Prediction]:
        """Classify decoded ``uint8 [h, w, 3]`` images of any size, ``batch_size`` at a time."""
        fitted = (self.fit_pixels(image) for image in images)
        return self.to_predictions(predict_in_batches(self.predict_pixels, fitted, batch_size))

    def predict_bytes(self, images: Iterable[bytes], batch_size: int = 32) -> list[Prediction]:
        """Classify encoded images, ``batch_size`` at a time."""
        return self.predict_images((self.preprocess(b) for b in images), batch_size)
