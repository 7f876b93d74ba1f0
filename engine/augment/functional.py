"""Pure image functions behind the transforms: numpy/OpenCV in, same dtype out, no randomness.

Images are H×W×C arrays, uint8 (0..255) or float (0..1); a fourth channel is alpha and photometric
functions leave it alone. Masks are H×W arrays of any dtype and are only ever moved, never blended
(nearest-neighbour interpolation), so a label mask keeps its labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

FLIP_MODES = ("horizontal", "vertical", "both")
_FLIP_CODES = {"horizontal": 1, "vertical": 0, "both": -1}  # both = 180° rotation, not a transpose


# ------------------------------------------------------------------------------------------ photometric


def adjust_brightness(image: np.ndarray, delta: float) -> np.ndarray:
    """Add ``delta`` × full scale (−1..1) to every colour channel."""
    return _point_op(image, lambda x: x + delta)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Stretch colours away from (factor > 1) or towards (factor < 1) the image's mean grey level."""
    mean = float(_grey(image).mean()) / _full_scale(image.dtype)
    return _point_op(image, lambda x: mean + factor * (x - mean))


def adjust_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """Apply ``out = in ** gamma`` on the 0..1 scale (gamma < 1 brightens the shadows)."""
    return _point_op(image, lambda x: np.power(np.clip(x, 0.0, 1.0), gamma))


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend each pixel with its grey level: 0 gives grey, 1 the input, above 1 more vivid colours."""
    colour = _colour(image)
    grey = cv2.cvtColor(_grey(image), cv2.COLOR_GRAY2RGB)
    if colour.dtype == np.uint8:
        out = cv2.addWeighted(colour, factor, grey, 1.0 - factor, 0.0)  # saturates to 0..255
    else:
        out = _clip_cast(grey + factor * (colour.astype(np.float32) - grey), colour.dtype)
    return _with_alpha(out, image)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of standard deviation ``sigma`` pixels (kernel sized by OpenCV: about 6σ)."""
    if sigma <= 0:
        return image.copy()
    return _with_alpha(cv2.GaussianBlur(_colour(image), (0, 0), sigmaX=sigma), image)


def erase(image: np.ndarray, x: int, y: int, width: int, height: int, fill: np.ndarray | float) -> np.ndarray:
    """Return a copy with the rectangle ``(x, y, width, height)`` replaced by ``fill`` (scalar or array)."""
    out = image.copy()
    out[y : y + height, x : x + width] = fill
    return out


# -------------------------------------------------------------------------------------------- geometric


def flip(image: np.ndarray, mode: str) -> np.ndarray:
    """Mirror left-right (``horizontal``), top-bottom (``vertical``) or both (a 180° rotation)."""
    if mode not in _FLIP_CODES:
        raise ValueError(f"flip mode must be one of {FLIP_MODES}, got {mode!r}")
    return _any_dtype(lambda a: cv2.flip(a, _FLIP_CODES[mode]), image)


def rotate(image: np.ndarray, angle: float, nearest: bool = False, premultiplied: bool = False) -> np.ndarray:
    """Rotate counter-clockwise by ``angle`` degrees on a canvas grown to hold every corner (no clipping).

    New pixels are 0 (transparent for RGBA). RGBA images are resampled with premultiplied alpha, so
    edges do not pick up a dark fringe from the transparent surroundings; pass ``premultiplied=True``
    when the input already is. ``nearest`` is for masks.
    """
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_w = int(math.ceil(width * cos + height * sin - 1e-6))
    new_h = int(math.ceil(width * sin + height * cos - 1e-6))
    matrix[0, 2] += (new_w - width) / 2.0
    matrix[1, 2] += (new_h - height) / 2.0
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR

    def warp(array: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(array, matrix, (new_w, new_h), flags=flags, borderValue=0)

    return _keep_channels(_rgba_safe(warp, image, nearest or premultiplied), image)


def resize(
    image: np.ndarray, width: int, height: int, nearest: bool = False, premultiplied: bool = False
) -> np.ndarray:
    """Resize to ``width``×``height``.

    Nearest-neighbour for masks; otherwise area averaging when shrinking by more than 2× (no aliasing)
    and bilinear for everything else (faster, and as good for small factors). RGBA as in :func:`rotate`.
    """
    if (width, height) == (image.shape[1], image.shape[0]):
        return image.copy()
    if nearest:
        flags = cv2.INTER_NEAREST
    else:
        flags = (
            cv2.INTER_AREA if 2 * width < image.shape[1] or 2 * height < image.shape[0] else cv2.INTER_LINEAR
        )
    out = _rgba_safe(
        lambda a: cv2.resize(a, (width, height), interpolation=flags), image, nearest or premultiplied
    )
    return _keep_channels(out, image)


def resize_longest(
    image: np.ndarray, size: int, nearest: bool = False, premultiplied: bool = False
) -> np.ndarray:
    """Resize keeping the aspect ratio so that the longest side is ``size`` pixels."""
    height, width = image.shape[:2]
    ratio = size / max(height, width)
    return resize(image, max(1, round(width * ratio)), max(1, round(height * ratio)), nearest, premultiplied)


def premultiply(rgba: np.ndarray) -> np.ndarray:
    """uint8 RGBA with colour multiplied by alpha: resampling it bleeds no colour from transparent pixels."""
    alpha = rgba[:, :, 3:4].astype(np.uint16)
    colour = (rgba[:, :, :3].astype(np.uint16) * alpha + 127) // 255
    return np.dstack([colour.astype(np.uint8), rgba[:, :, 3]])


def unpremultiply(rgba: np.ndarray) -> np.ndarray:
    """Inverse of :func:`premultiply` (colour of fully transparent pixels becomes 0)."""
    alpha = rgba[:, :, 3:4].astype(np.float32)
    colour = np.where(alpha > 0, rgba[:, :, :3] * (255.0 / np.maximum(alpha, 1.0)), 0.0)
    return np.dstack([np.clip(np.rint(colour), 0, 255).astype(np.uint8), rgba[:, :, 3]])


def crop(image: np.ndarray, x: int, y: int, width: int, height: int) -> np.ndarray:
    """Return a copy of the ``width``×``height`` window whose top-left corner is ``(x, y)``."""
    return image[y : y + height, x : x + width].copy()


def center_crop_box(shape: tuple[int, ...], window: int) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` of the centred square window (shrunk to the image if the image is smaller)."""
    height, width = shape[:2]
    side_w, side_h = min(window, width), min(window, height)
    return (width - side_w) // 2, (height - side_h) // 2, side_w, side_h


def sliding_window_origins(shape: tuple[int, ...], window: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners ``(x, y)`` of ``window``-square crops every ``stride`` pixels, row by row.

    Only windows wholly inside the image are returned; an image smaller than the window yields one
    window at the origin (clipped by :func:`crop`).
    """
    height, width = shape[:2]
    xs = range(0, max(0, width - window) + 1, stride)
    ys = range(0, max(0, height - window) + 1, stride)
    return [(x, y) for y in ys for x in xs]


# ------------------------------------------------------------------------------------------- compositing


def alpha_blend(
    canvas: np.ndarray, obj_rgba: np.ndarray, x: int, y: int, premultiplied: bool = False
) -> np.ndarray:
    """Return a copy of the RGB uint8 ``canvas`` with ``obj_rgba`` blended in at top-left ``(x, y)``.

    The object must lie wholly inside the canvas; ``premultiplied`` says its colour is already × alpha.
    """
    rgba = obj_rgba if premultiplied else premultiply(obj_rgba)
    out = canvas.copy()
    blend_into(out, cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB), inverse_alpha(rgba), x, y)
    return out


def inverse_alpha(rgba: np.ndarray) -> np.ndarray:
    """``255 − alpha`` repeated over three channels: the share of the background that shows through."""
    return cv2.merge([255 - rgba[:, :, 3]] * 3)


def blend_into(canvas: np.ndarray, colour: np.ndarray, inverse: np.ndarray, x: int, y: int) -> None:
    """In place: ``canvas = colour + canvas × inverse / 255`` over the object's rectangle at ``(x, y)``.

    ``colour`` is premultiplied RGB and ``inverse`` comes from :func:`inverse_alpha`; both are uint8 and
    OpenCV does the arithmetic with rounding and saturation, without temporaries of a wider type.
    """
    height, width = colour.shape[:2]
    assert 0 <= x and 0 <= y and x + width <= canvas.shape[1] and y + height <= canvas.shape[0]
    region = canvas[y : y + height, x : x + width]
    region[:] = cv2.add(cv2.multiply(region, inverse, scale=1.0 / 255.0), colour)


# --------------------------------------------------------------------------------------------- helpers


def _full_scale(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def _colour(image: np.ndarray) -> np.ndarray:
    """The colour channels (RGB of RGBA), contiguous so OpenCV accepts them."""
    return np.ascontiguousarray(image[:, :, :3]) if image.ndim == 3 and image.shape[2] == 4 else image


def _with_alpha(colour: np.ndarray, original: np.ndarray) -> np.ndarray:
    if original.ndim == 3 and original.shape[2] == 4:
        return np.dstack([colour, original[:, :, 3]])
    return colour.reshape(original.shape)


def _grey(image: np.ndarray) -> np.ndarray:
    colour = _colour(image)
    if colour.ndim == 2 or colour.shape[2] == 1:
        return colour.reshape(colour.shape[:2])
    return cv2.cvtColor(colour if colour.dtype == np.uint8 else colour.astype(np.float32), cv2.COLOR_RGB2GRAY)


def _clip_cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    top = _full_scale(dtype)
    if np.issubdtype(dtype, np.integer):
        values = np.rint(values)
    return np.clip(values, 0, top).astype(dtype)


def _point_op(image: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``fn`` (on the 0..1 scale) to every colour value; uint8 goes through a 256-entry table."""
    colour = _colour(image)
    if colour.dtype == np.uint8:
        table = _clip_cast(fn(np.arange(256, dtype=np.float32) / 255.0) * 255.0, np.uint8)
        out = cv2.LUT(colour, table)
    else:
        top = _full_scale(colour.dtype)
        out = _clip_cast(fn(colour.astype(np.float32) / top) * top, colour.dtype)
    return _with_alpha(out, image)


def _rgba_safe(op: Callable[[np.ndarray], np.ndarray], image: np.ndarray, plain: bool) -> np.ndarray:
    """Run a resampling ``op``; straight RGBA goes premultiplied, so transparent pixels add no colour.

    ``plain`` runs ``op`` on the channels as they are (masks, already premultiplied images).
    """
    if plain:
        return _any_dtype(op, image)
    if image.ndim != 3 or image.shape[2] != 4:
        return op(image)
    if image.dtype == np.uint8:
        return unpremultiply(op(premultiply(image)))
    top = _full_scale(image.dtype)
    alpha = image[:, :, 3:4].astype(np.float32) / top
    premultiplied = np.dstack([image[:, :, :3].astype(np.float32) * alpha, alpha * top])
    warped = op(premultiplied)
    new_alpha = warped[:, :, 3:4] / top
    colour = np.where(new_alpha > 1e-6, warped[:, :, :3] / np.maximum(new_alpha, 1e-6), 0.0)
    return _clip_cast(np.dstack([colour, warped[:, :, 3:4]]), image.dtype)


def _any_dtype(op: Callable[[np.ndarray], np.ndarray], array: np.ndarray) -> np.ndarray:
    """Run a nearest-neighbour OpenCV ``op`` on dtypes OpenCV lacks (bool, int64 labels) losslessly."""
    if array.dtype in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        return op(array)
    if array.dtype == np.bool_:
        return op(array.view(np.uint8)).astype(bool)
    return op(array.astype(np.float64)).astype(array.dtype)  # exact for labels below 2**53


def _keep_channels(out: np.ndarray, original: np.ndarray) -> np.ndarray:
    """OpenCV drops a trailing channel axis of 1; put it back so shapes stay H×W×C."""
    if original.ndim == 3 and out.ndim == 2:
        return out[:, :, None]
    return out
