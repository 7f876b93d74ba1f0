"""JPEG photo scenes with a known mask, for the GrabCut tests and ``bench/bench_grabcut.py``.

A rounded shape cut out of a ``skimage.data`` photo, with a lens-like soft edge, on a tinted
``skimage.data`` texture (gravel, grass, brick), a plain grey or a procedural background; saved as JPEG the
way Pillow does by default (4:2:0 chroma) and decoded back.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import skimage.data
from PIL import Image

from engine.augment.backgrounds import list_background_kinds, make_background

# skimage texture, and the dark and light colours its grey levels are stretched between
TEXTURES = {
    "gravel": ("gravel", (60, 55, 50), (170, 160, 150)),
    "grey-gravel": ("gravel", (0, 0, 0), (255, 255, 255)),
    "grass": ("grass", (30, 60, 20), (120, 170, 70)),
    "brick": ("brick", (70, 35, 30), (190, 120, 100)),
}
BACKGROUNDS = (*TEXTURES, "plain", "noise")


def background(kind: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A float32 RGB backdrop: a tinted skimage texture tiled at its own scale (as fine as in a photo of
    gravel at any size), plain grey with noise, or a procedural background (``engine.augment.backgrounds``)."""
    if kind in list_background_kinds():
        side = max(width, height)
        return make_background(kind, side, int(rng.integers(1000)))[:height, :width].astype(np.float32)
    if kind == "plain":
        plain = np.empty((height, width, 3), np.float32)
        plain[:] = (200, 205, 210)
        plain += np.linspace(-20, 20, width, dtype=np.float32)[None, :, None]
        return plain + rng.normal(0, 3, (height, width, 1)).astype(np.float32)
    name, dark, light = TEXTURES[kind]
    grey = getattr(skimage.data, name)().astype(np.float32) / 255
    grey = np.tile(grey, (-(-height // grey.shape[0]), -(-width // grey.shape[1])))[:height, :width]
    return np.float32(dark) + grey[..., None] * (np.float32(light) - np.float32(dark))


def composite(width: int, height: int, photo: str = "chelsea", backdrop: str = "gravel", seed: int = 0):
    """A lossless composite: ``(rgb uint8, true mask, box)``; the box is the object's plus width/25."""
    shape = np.zeros((height, width), np.uint8)
    cx, cy = width // 2, height // 2
    cv2.ellipse(shape, (cx, int(cy * 1.1)), (int(width * 0.2), int(height * 0.28)), 15, 0, 360, 255, -1)
    ear = [[cx - width * 0.05, height * 0.15], [cx + width * 0.12, height * 0.22], [cx + width * 0.08, cy],
           [cx - width * 0.1, cy]]
    cv2.fillPoly(shape, [np.array(ear, np.int32)], 255)
    alpha = cv2.GaussianBlur(shape.astype(np.float32) / 255, (0, 0), max(0.7, width / 1500))[..., None]
    fill = cv2.resize(getattr(skimage.data, photo)(), (width, height), interpolation=cv2.INTER_AREA)
    back = background(backdrop, width, height, np.random.default_rng(seed))
    image = np.clip(fill.astype(np.float32) * alpha + back * (1 - alpha), 0, 255).astype(np.uint8)
    truth = alpha[..., 0] > 0.5
    ys, xs = np.nonzero(truth)
    pad = width // 25
    box = (int(xs.min()) - pad, int(ys.min()) - pad, int(xs.max()) + 1 + pad, int(ys.max()) + 1 + pad)
    return image, truth, box


def jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    """JPEG as Pillow writes it by default (4:2:0 chroma subsampling)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def through_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """The pixels a user's JPEG decodes to."""
    return np.asarray(Image.open(io.BytesIO(jpeg_bytes(image, quality))).convert("RGB")).copy()


def with_shadow(width: int, height: int):
    """The coffee composite with a brown ring (a shadow) round the object, as JPEG q85.

    The ring's colour is nowhere outside the box, so a box alone keeps it: a halo only a stroke removes.
    Returns ``(JPEG bytes, true mask, box, ring mask, a background stroke through the ring's left half,
    stroke width)``.
    """
    image, truth, box = composite(width, height, "coffee", "gravel")
    r = max(3, width // 40)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    ring = cv2.dilate(truth.view(np.uint8), disc).astype(bool) & ~truth
    image[ring] = (image[ring] * 0.3 + np.array([110, 60, 40]) * 0.7).astype(np.uint8)
    contour = max(cv2.findContours(truth.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], key=len)
    points = contour[:, 0, :].astype(float)
    centre = points.mean(axis=0)
    outward = (points - centre) / np.linalg.norm(points - centre, axis=1, keepdims=True)
    middle = points + outward * (r / 2 + 0.5)  # the middle of the ring
    middle = np.roll(middle, -int(np.argmax(middle[:, 0])), axis=0)  # start on the right
    left = middle[:, 0] < centre[0]
    first = int(np.argmax(left))
    last = first + int(np.argmin(left[first:]))
    stroke = middle[first:last][:: max(1, width // 100)].tolist()
    return jpeg_bytes(image, 85), truth, box, ring, stroke, max(2, r // 2)
