"""Photos whose tags anyone would agree on: seeded crops of ``skimage.data`` photos, saved as ordinary JPEGs.

``person`` (the astronaut, the cameraman), ``motorcycle`` (both views of the stereo motorcycle) and
``grass`` (skimage's grass texture, tinted as a lawn): visually distinct, so a head on pretrained features
separates them honestly from a handful of examples.
"""

from __future__ import annotations

import io

import numpy as np
import skimage.data
from PIL import Image

LABELS = ("person", "motorcycle", "grass")


def _sources(label: str) -> list[np.ndarray]:
    if label == "person":
        return [skimage.data.astronaut(), np.stack([skimage.data.camera()] * 3, axis=-1)]
    if label == "motorcycle":
        left, right, _ = skimage.data.stereo_motorcycle()
        return [left, right]
    grey = skimage.data.grass().astype(np.float32)[..., None] / 255
    lawn = np.float32((30, 60, 20)) + grey * np.float32((90, 110, 50))
    return [lawn.astype(np.uint8)]


def photo(label: str, index: int, size: tuple[int, int] = (200, 150), quality: int = 85) -> bytes:
    """A JPEG of ``label``: crop ``index`` (seeded: 70-95 % of the photo, maybe mirrored), resized to ``size``."""
    sources = _sources(label)
    image = sources[index % len(sources)]
    rng = np.random.default_rng(1000 * LABELS.index(label) + index)
    h, w = image.shape[:2]
    scale = rng.uniform(0.7, 0.95)
    ch, cw = int(h * scale), int(w * scale)
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = image[top:top + ch, left:left + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.Resampling.BILINEAR).save(out, "JPEG",
                                                                                            quality=quality)
    return out.getvalue()


def tagged_photos(per_label: int, start: int = 0) -> list[tuple[str, bytes, list[str]]]:
    """``(file name, JPEG bytes, [label])`` for ``per_label`` photos of each label, labels interleaved."""
    return [(f"{label}_{i}.jpg", photo(label, i), [label])
            for i in range(start, start + per_label) for label in LABELS]
