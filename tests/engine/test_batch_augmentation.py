"""Train-time augmentation of whole batches (``engine.datasets.augment_batch``), on scikit-learn's real digits:
each image is copied, mirrored only where the policy says so, shifted by whole pixels within the policy's reach,
and a seeded generator gives the same batch twice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.datasets import augment_batch
from engine.run_config import AUGMENT_POLICIES
from tests.digits import digit_images


def batch(n: int = 200, scale: int = 4) -> torch.Tensor:
    images, _ = digit_images(scale=scale, rgb=True)  # 32 x 32 handwritten digits
    return torch.from_numpy(images[:n]).permute(0, 3, 1, 2).float().div(255)


def shift_of(original: torch.Tensor, moved: torch.Tensor, reach: int) -> tuple[bool, int, int] | None:
    """The (mirrored, dy, dx) that turns ``original`` into ``moved`` away from the reflected border, if any."""
    height, width = original.shape[-2:]
    inner = (slice(None), slice(reach, height - reach), slice(reach, width - reach))
    for mirrored in (False, True):
        source = original.flip(-1) if mirrored else original
        for dy in range(-reach, reach + 1):
            for dx in range(-reach, reach + 1):
                if torch.equal(moved[inner], torch.roll(source, (-dy, -dx), (-2, -1))[inner]):
                    return mirrored, dy, dx
    return None


def test_shift_moves_each_image_by_whole_pixels_within_reach_and_never_mirrors():
    images = batch(100)
    out = augment_batch(images, AUGMENT_POLICIES["shift"], torch.Generator().manual_seed(0))
    found = [shift_of(a, b, 3) for a, b in zip(images, out, strict=True)]
    assert all(f is not None for f in found), "every output is its input, moved by whole pixels"
    assert not any(mirrored for mirrored, _, _ in found)  # a plain shift is tried first
    shifts = {(dy, dx) for _, dy, dx in found}
    assert len(shifts) > 20 and max(max(abs(dy), abs(dx)) for dy, dx in shifts) == 3  # 10 % of 32 px


def test_shift_and_flip_mirrors_about_half_the_images():
    images = batch()
    out = augment_batch(images, AUGMENT_POLICIES["shift+flip"], torch.Generator().manual_seed(1))
    found = [shift_of(a, b, 3) for a, b in zip(images, out, strict=True)]
    assert all(f is not None for f in found)
    mirrored = sum(f[0] for f in found)
    assert 70 <= mirrored <= 130, mirrored  # binomial(200, 0.5): 100 ± 15 at 2 sigma


def test_a_flip_alone_is_an_exact_mirror():
    images = batch(20)
    out = augment_batch(images, {"hflip": 1.0, "max_shift": 0.0})
    assert torch.equal(out, images.flip(-1))


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    images, spec = batch(64), AUGMENT_POLICIES["shift+flip"]
    first = augment_batch(images, spec, torch.Generator().manual_seed(5))
    assert torch.equal(first, augment_batch(images, spec, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, augment_batch(images, spec, torch.Generator().manual_seed(6)))


@pytest.mark.parametrize("shape", [(3, 1, 8, 8), (2, 3, 17, 31)])
def test_odd_shapes_and_one_channel_keep_their_shape_and_pixels(shape):
    images = torch.from_numpy(np.random.default_rng(0).random(shape, dtype=np.float32))
    out = augment_batch(images, AUGMENT_POLICIES["shift+flip"], torch.Generator().manual_seed(2))
    assert out.shape == images.shape
    # Nearest sampling copies pixels: every output value is one of its image's input values.
    for a, b in zip(images, out, strict=True):
        assert torch.isin(b, a).all()
