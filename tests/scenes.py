"""Pictures whose true answer is known: a coloured disc on a grainy, shaded background, and its mask."""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
from PIL import Image

# The legacy API's own box, around a disc that sits wholly inside it.
LEGACY_BOX = {"x1": "37", "x2": "220", "y1": "35", "y2": "179"}
CENTRE, RADIUS = (128, 107), 55
SIZE = (320, 240)  # width, height


def scene(colour=(200, 40, 40), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 320×240 RGB picture of a disc on a grainy, shaded grey background, and the disc's true mask."""
    width, height = SIZE
    rng = np.random.default_rng(seed)
    shade = np.linspace(200, 240, width, dtype=np.float32)[None, :, None]
    image = np.clip(shade + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    cv2.circle(mask, CENTRE, RADIUS, 1, -1)
    image[mask.astype(bool)] = np.clip(np.asarray(colour) + rng.normal(0, 8, (mask.sum(), 3)), 0, 255)
    return image, mask.astype(bool)


def encode(image: np.ndarray, fmt: str = "JPEG", data_url: bool = True) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, quality=95)
    text = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"data:image/{fmt.lower()};base64,{text}" if data_url else text
