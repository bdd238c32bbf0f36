"""The ONNX Runtime classifier and the one batched-prediction loop."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from support import jpeg_bytes

from garbage.core.classifier import OnnxClassifier, predict_in_batches
from garbage.core.preprocessing import decode_image


def test_threads_stop_spinning_when_a_call_returns(tiny_model_dir: Path) -> None:
    """Between calls the session leaves the CPUs to the rest of the process (a server decodes)."""
    classifier = OnnxClassifier.load(tiny_model_dir, device="cpu", intra_op_threads=2)
    for _ in range(5):
        classifier.predict_pixels(np.zeros((4, 64, 64, 3), dtype=np.uint8))
    cpu = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - cpu < 0.02  # spinning on after the call costs about 0.04 s


def test_the_batched_loop_calls_the_model_batch_size_images_at_a_time_in_order() -> None:
    calls: list[int] = []

    def model(pixels: np.ndarray) -> np.ndarray:
        calls.append(len(pixels))
        return pixels[:, 0, 0, :1].astype(np.float32)  # each image's own first value

    images = (np.full((2, 2, 3), i, dtype=np.uint8) for i in range(7))  # read lazily
    rows = predict_in_batches(model, images, batch_size=3)
    assert calls == [3, 3, 1]
    assert rows[:, 0].tolist() == list(range(7))
    assert predict_in_batches(model, [], batch_size=3).shape == (0, 0)


def test_images_of_any_size_are_fitted_and_labelled_like_bytes_are(tiny_model_dir: Path) -> None:
    classifier = OnnxClassifier.load(tiny_model_dir, device="cpu")
    encoded = [jpeg_bytes((40 * i, 90, 200), size=(120 + 10 * i, 90), seed=i) for i in range(5)]
    decoded = [np.asarray(decode_image(data)) for data in encoded]
    by_pixels = classifier.predict_images(decoded, batch_size=2)
    by_bytes = classifier.predict_bytes(encoded, batch_size=4)
    assert [p.label for p in by_pixels] == [p.label for p in by_bytes]
    assert np.allclose([p.score for p in by_pixels], [p.score for p in by_bytes], atol=1e-6)
    assert all(set(p.probabilities) == set(classifier.classes) for p in by_pixels)
