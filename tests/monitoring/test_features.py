"""Per-image features react to the changes they are meant to catch, and only to those."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from garbage.core.preprocessing import decode_image
from monitoring.features import (
    EMBEDDING_COLUMNS,
    FEATURE_COLUMNS,
    pixel_features,
    projection_matrix,
)


@pytest.fixture(scope="module")
def photo(dev_dataset) -> Image.Image:
    root, manifest = dev_dataset
    return decode_image((root / manifest["path"].iloc[0]).read_bytes())


def features_of(image: Image.Image) -> dict[str, float]:
    return pixel_features(np.asarray(image.convert("RGB"), dtype=np.uint8))


def test_every_feature_is_a_finite_number(photo: Image.Image) -> None:
    values = features_of(photo)
    assert list(values) == list(FEATURE_COLUMNS)
    assert all(np.isfinite(v) for v in values.values())
    assert (values["width"], values["height"]) == photo.size


def test_features_are_deterministic_and_the_projection_fixed(photo: Image.Image) -> None:
    assert features_of(photo) == features_of(photo.copy())
    assert projection_matrix().shape == (128, len(EMBEDDING_COLUMNS))
    assert float(projection_matrix()[0, 0]) == pytest.approx(float(projection_matrix()[0, 0]))


def test_brightness_and_colour_cast(photo: Image.Image) -> None:
    base = features_of(photo)
    brighter = features_of(ImageEnhance.Brightness(photo).enhance(1.5))
    assert brighter["brightness"] > base["brightness"] + 20
    warm = np.asarray(photo).astype(np.float32) * np.array([1.25, 1.0, 0.75])
    cast = pixel_features(np.clip(warm, 0, 255).astype(np.uint8))
    assert cast["red_green"] > base["red_green"] + 10
    assert cast["yellow_blue"] > base["yellow_blue"] + 10


def test_blur_noise_and_jpeg_artefacts(photo: Image.Image) -> None:
    base = features_of(photo)
    blurred = features_of(photo.filter(ImageFilter.GaussianBlur(2)))
    assert blurred["sharpness"] < base["sharpness"] - 1
    rng = np.random.default_rng(0)
    noisy = np.clip(np.asarray(photo) + rng.normal(0, 20, np.asarray(photo).shape), 0, 255).astype(
        np.uint8
    )
    assert pixel_features(noisy)["noise"] > base["noise"] * 2
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=8)
    assert features_of(decode_image(buffer.getvalue()))["blockiness"] > base["blockiness"] * 1.5


def test_size_is_recorded_but_pixel_statistics_are_scale_free(photo: Image.Image) -> None:
    big = photo.resize((photo.width * 4, photo.height * 4), Image.Resampling.BICUBIC)
    a, b = features_of(photo), features_of(big)
    assert b["width"] == 4 * a["width"]
    assert b["brightness"] == pytest.approx(a["brightness"], abs=2)
    assert b["saturation"] == pytest.approx(a["saturation"], abs=0.02)


def test_rejects_non_rgb_arrays() -> None:
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        pixel_features(np.zeros((10, 10), dtype=np.uint8))
