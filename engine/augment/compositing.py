"""Paste RGBA cut-outs onto backgrounds at a random position and size that keep them wholly in frame."""

from __future__ import annotations

import numpy as np

from engine.augment import functional as F
from engine.exceptions import InvalidInput

Size = int | tuple[int, int]


def composite_on_background(
    obj_rgba: np.ndarray,
    background_rgb: np.ndarray,
    rng: np.random.Generator,
    out_size: Size,
    scale_range: tuple[float, float] = (0.5, 0.95),
    object_fraction: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Alpha-blend an RGBA object onto a background, placed at random but never cut by the frame.

    The background is resized (keeping its aspect ratio, cropped at random) to cover ``out_size``. The
    object is resized so that its longest side is a fraction of the frame's shorter side, drawn uniformly
    from ``scale_range`` (or exactly ``object_fraction``), then placed at a random position where it
    fits entirely.

    Args:
        obj_rgba: h×w×4 uint8 cut-out; alpha 0 is transparent.
        background_rgb: H×W×3 uint8 background of any size.
        rng: the only source of randomness.
        out_size: side of a square output, or ``(width, height)``.
        scale_range: ``(low, high)`` fractions in (0, 1].
        object_fraction: a fixed fraction in (0, 1] instead of a random one.

    Returns:
        ``(image, mask)``: out_height×out_width×3 uint8 and the bool mask of the object (alpha ≥ 128).
    """
    width, height = _size(out_size)
    _check_object(obj_rgba)
    fraction = object_fraction if object_fraction is not None else rng.uniform(*_fractions(scale_range))
    canvas = fit_background(background_rgb, width, height, rng)
    obj = scale_object(obj_rgba, max(1, round(fraction * min(width, height))))
    x, y = random_position(obj.shape, width, height, rng)
    return paste(canvas, obj, x, y)


def fit_background(
    background_rgb: np.ndarray, width: int, height: int, rng: np.random.Generator
) -> np.ndarray:
    """Resize a background to cover ``width``×``height`` (aspect kept); crop the excess at random."""
    bg_h, bg_w = background_rgb.shape[:2]
    ratio = max(width / bg_w, height / bg_h)
    new_w, new_h = max(width, round(bg_w * ratio)), max(height, round(bg_h * ratio))
    resized = F.resize(np.ascontiguousarray(background_rgb[:, :, :3]), new_w, new_h)
    x = int(rng.integers(new_w - width + 1))
    y = int(rng.integers(new_h - height + 1))
    return resized[y : y + height, x : x + width]


def scale_object(obj_rgba: np.ndarray, longest_side: int, premultiplied: bool = False) -> np.ndarray:
    """Resize an RGBA object so that its longest side is ``longest_side`` pixels."""
    return F.resize_longest(obj_rgba, longest_side, premultiplied=premultiplied)


def random_position(
    obj_shape: tuple[int, ...], width: int, height: int, rng: np.random.Generator
) -> tuple[int, int]:
    """Top-left corner at which an object of ``obj_shape`` lies wholly inside a ``width``×``height`` frame."""
    obj_h, obj_w = obj_shape[:2]
    assert obj_w <= width and obj_h <= height, "the object must be scaled to fit the frame first"
    return int(rng.integers(width - obj_w + 1)), int(rng.integers(height - obj_h + 1))


def paste(
    canvas_rgb: np.ndarray, obj_rgba: np.ndarray, x: int, y: int, premultiplied: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Alpha-blend ``obj_rgba`` at ``(x, y)``; return the new image and the object's bool mask."""
    image = F.alpha_blend(canvas_rgb, obj_rgba, x, y, premultiplied)
    mask = np.zeros(canvas_rgb.shape[:2], bool)
    mask[y : y + obj_rgba.shape[0], x : x + obj_rgba.shape[1]] = obj_rgba[:, :, 3] >= 128
    return image, mask


def crop_to_alpha(obj_rgba: np.ndarray) -> np.ndarray:
    """Trim fully transparent rows and columns, so sizes and positions refer to the visible object."""
    visible = obj_rgba[:, :, 3] > 0
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    if rows.size == 0:
        raise InvalidInput("the object is fully transparent", "object")
    return obj_rgba[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _size(out_size: Size) -> tuple[int, int]:
    width, height = (out_size, out_size) if isinstance(out_size, int | np.integer) else out_size
    if not (1 <= width <= 8192 and 1 <= height <= 8192):
        raise InvalidInput(f"'out_size' must be 1..8192 pixels a side, got {out_size!r}", "out_size")
    return int(width), int(height)


def _fractions(scale_range: tuple[float, float]) -> tuple[float, float]:
    low, high = scale_range
    if not 0.0 < low <= high <= 1.0:
        raise InvalidInput(
            f"'scale_range' must satisfy 0 < low <= high <= 1, got {scale_range!r}", "scale_range"
        )
    return low, high


def _check_object(obj_rgba: np.ndarray) -> None:
    if obj_rgba.ndim != 3 or obj_rgba.shape[2] != 4 or obj_rgba.dtype != np.uint8:
        raise InvalidInput(f"the object must be an h×w×4 uint8 RGBA array, got {obj_rgba.shape}", "object")
