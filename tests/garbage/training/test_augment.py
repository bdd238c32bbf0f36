"""Batch augmentation: shapes, ranges, reproducibility, and that each transform does its job."""

from __future__ import annotations

import torch

from garbage.training.augment import AugmentSpec, augment_batch

NEUTRAL = AugmentSpec(hflip=False, vflip=False, rotation_degrees=0, scale_min=1.0, color_jitter=0)


def halves(n: int = 64, height: int = 32, width: int = 48) -> torch.Tensor:
    """Images black on the left half, white on the right."""
    images = torch.zeros(n, height, width, 3, dtype=torch.uint8)
    images[:, :, width // 2 :] = 255
    return images


def test_output_has_the_requested_size_and_stays_in_pixel_range() -> None:
    out = augment_batch(halves(), (24, 40), AugmentSpec(color_jitter=0.5))
    assert out.shape == (64, 24, 40, 3)
    assert out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255


def test_the_same_seed_gives_the_same_batch_and_another_seed_another() -> None:
    def run(seed: int) -> torch.Tensor:
        return augment_batch(
            halves(8), (32, 48), AugmentSpec(), torch.Generator().manual_seed(seed)
        )

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_without_a_spec_images_are_only_resized() -> None:
    images = halves(2)
    assert torch.equal(augment_batch(images, (32, 48), None), images.float())
    assert augment_batch(images, (16, 24), None).shape == (2, 16, 24, 3)


def test_horizontal_flips_mirror_about_half_the_images() -> None:
    spec = AugmentSpec(**{**NEUTRAL.__dict__, "hflip": True})
    out = augment_batch(halves(), (32, 48), spec, torch.Generator().manual_seed(0))
    mirrored = out[:, :, :24].mean((1, 2, 3)) > out[:, :, 24:].mean((1, 2, 3))
    assert 0.3 < mirrored.float().mean() < 0.7
    unflipped = augment_batch(halves(), (32, 48), NEUTRAL, torch.Generator().manual_seed(0))
    assert (unflipped[:, :, :24].mean((1, 2, 3)) < unflipped[:, :, 24:].mean((1, 2, 3))).all()


def test_crops_zoom_in_and_rotation_turns_the_image() -> None:
    cropped = augment_batch(
        halves(),
        (32, 48),
        AugmentSpec(**{**NEUTRAL.__dict__, "scale_min": 0.3}),
        torch.Generator().manual_seed(0),
    )
    # A crop off the centre shows more of one half than the other.
    balance = (cropped.mean((1, 2, 3)) - 127.5).abs()
    assert balance.max() > 30
    turned = augment_batch(
        halves(),
        (32, 48),
        AugmentSpec(**{**NEUTRAL.__dict__, "rotation_degrees": 45}),
        torch.Generator().manual_seed(0),
    )
    # A rotated vertical edge: the top row and the bottom row split at different columns.
    top = (turned[:, 0, :, 0] > 127).float().sum(1)
    bottom = (turned[:, -1, :, 0] > 127).float().sum(1)
    assert (top - bottom).abs().max() > 6


def test_colour_jitter_changes_brightness_per_image() -> None:
    grey = torch.full((32, 8, 8, 3), 128, dtype=torch.uint8)
    out = augment_batch(
        grey,
        (8, 8),
        AugmentSpec(**{**NEUTRAL.__dict__, "color_jitter": 0.4}),
        torch.Generator().manual_seed(0),
    )
    means = out.mean((1, 2, 3))
    assert means.std() > 5
    assert ((means > 128 * 0.55) & (means < 128 * 1.45)).all()
