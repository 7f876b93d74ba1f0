"""scikit-learn's 1,797 real 8x8 handwritten digits (shipped inside the wheel), loaded once for the suite."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import h5py
import numpy as np

DIGITS_FILE = "digits-8x8.hdf5"


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images, data.target


def digit_images(scale: int = 1, rgb: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The digits as uint8 images (N x 8s x 8s, or N x 8s x 8s x 3 with ``rgb``) and their labels 0..9."""
    images, labels = _digits()
    pixels = (images * (255 / 16)).round().astype(np.uint8)
    if scale > 1:
        pixels = np.kron(pixels, np.ones((scale, scale), np.uint8))
    if rgb:
        pixels = np.repeat(pixels[..., None], 3, axis=3)
    return pixels, labels.copy()


def write_digits_hdf5(path: Path, train: slice = slice(0, 1400), test: slice = slice(1400, None),
                      scale: int = 1) -> None:
    """The digits in the legacy API's HDF5 layout (RGB ``X``/``y`` per split, ``class_names`` attribute as JSON)."""
    images, labels = digit_images(scale, rgb=True)
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        f["X_train"], f["y_train"] = images[train], labels[train]
        f["X_test"], f["y_test"] = images[test], labels[test]
        f.attrs["class_names"] = json.dumps([str(d) for d in range(10)])
    tmp.replace(path)


def ensure_digits_hdf5(data_dir: Path) -> Path:
    """``DATA_DIR/datasets/digits-8x8.hdf5``, written the first time a test of the stack asks for it."""
    path = data_dir / "datasets" / DIGITS_FILE
    if not path.exists():
        write_digits_hdf5(path)
    return path


def digits_test_images() -> tuple[np.ndarray, np.ndarray]:
    images, labels = digit_images(rgb=True)
    return images[1400:], labels[1400:]


def digits_body(**change) -> dict:
    return {"model_name": "convnetb", "dataset": "hdf5", "hdf5_path": DIGITS_FILE, "num_classes": "10",
            "batch_size": "64", "learning_rate": "0.05", "num_epochs": "5", "image_size": "16",
            "convert_grey": "1", "lr_decay": "0", "is_transform": "0", "num_workers": "0", "seed": "3", **change}
