"""The ONNX Runtime classifier's own behaviour (predictions are covered with the export)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from garbage.core.classifier import OnnxClassifier


def test_threads_stop_spinning_when_a_call_returns(tiny_model_dir: Path) -> None:
    """Between calls the session leaves the CPUs to the rest of the process (a server decodes)."""
    classifier = OnnxClassifier.load(tiny_model_dir, device="cpu", intra_op_threads=2)
    for _ in range(5):
        classifier.predict_pixels(np.zeros((4, 64, 64, 3), dtype=np.uint8))
    cpu = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - cpu < 0.02  # spinning on after the call costs about 0.04 s
