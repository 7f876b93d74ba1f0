"""Small labelled pictures made here: light circles, squares and triangles on a dark noisy background."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle")


def shape_image(shape: str, seed: int, side: int = 32) -> np.ndarray:
    """A light shape at a random place and size on a dark noisy background (RGB uint8)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (side, side, 3), dtype=np.uint8)
    r = int(rng.integers(side // 6, side // 3))
    cx, cy = (int(v) for v in rng.integers(r, side - r, 2))
    colour = tuple(int(c) for c in rng.integers(160, 256, 3))
    if shape == "circle":
        cv2.circle(img, (cx, cy), r, colour, -1)
    elif shape == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
    else:
        cv2.fillPoly(img, [np.array([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], np.int32)], colour)
    return img


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def data_url(img: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode()


def write_folder_dataset(data_dir: Path, train: str = "TRAIN_data_224", test: str = "TEST_data_224",
                         n_train: int = 6, n_test: int = 2, side: int = 32) -> None:
    """The legacy API's custom layout: ``<train>/<class>/*.png`` and ``<test>/<class>/*.png`` under DATA_DIR."""
    for split, n, offset in ((train, n_train, 0), (test, n_test, 1000)):
        for c, shape in enumerate(SHAPES):
            folder = data_dir / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (folder / f"{i}.png").write_bytes(png_bytes(shape_image(shape, offset + 100 * c + i, side)))


def noise_png(seed: int, side: int = 12) -> bytes:
    """A square of random RGBA noise as PNG (a stand-in cut-out)."""
    rgba = np.random.default_rng(seed).integers(0, 255, (side, side, 4), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    return buf.getvalue()
