"""Zips of labelled pictures as people make them (a file manager's folders and litter), for the dataset tests."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def class_images(classes: dict[str, int], size: int = 24, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Per class, ``n`` images whose colour says the class (so a model can learn them apart)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, (name, n) in enumerate(sorted(classes.items())):
        base = np.zeros((size, size, 3), np.uint8)
        base[..., k % 3] = 200
        out[name] = [np.clip(base.astype(int) + rng.integers(-30, 30, base.shape), 0, 255).astype(np.uint8)
                     for _ in range(n)]
    return out


def file_manager_zip(path: Path, images: dict[str, list[np.ndarray]], root: str | None = "photos",
                     split: str | None = None, encode=jpeg) -> Path:
    """A zip as macOS Finder makes it: a top folder, class folders, ``__MACOSX/`` and ``.DS_Store`` litter."""
    prefix = f"{root}/" if root else ""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        if root:
            zf.writestr(prefix, b"")
        zf.writestr(f"{prefix}.DS_Store", b"\0\0\0\1Bud1" + bytes(64))
        for name, pictures in images.items():
            folder = f"{prefix}{split + '/' if split else ''}{name}/"
            zf.writestr(folder, b"")
            zf.writestr(f"{folder}.DS_Store", b"\0\0\0\1Bud1" + bytes(64))
            for i, rgb in enumerate(pictures):
                zf.writestr(f"{folder}IMG_{i:04d}.jpg" if encode is jpeg else f"{folder}{i:04d}.png", encode(rgb))
                zf.writestr(f"__MACOSX/{folder}._IMG_{i:04d}.jpg", b"\0\5\26\7" + bytes(80))
    return path


def digits_zip(path: Path, classes=(0, 1, 2), per_class: int = 40, side: int = 32) -> Path:
    """Real handwritten digits (scikit-learn's), upscaled and saved as JPEGs at quality 85 in class folders."""
    digits = load_digits()
    images = {}
    for digit in classes:
        pictures = digits.images[digits.target == digit][:per_class]
        grey = [(p * 255 / 16).astype(np.uint8) for p in pictures]
        images[f"digit_{digit}"] = [np.repeat(cv2.resize(g, (side, side), interpolation=cv2.INTER_LINEAR)[..., None],
                                              3, axis=2) for g in grey]
    return file_manager_zip(path, images, root="digits")


def symlink_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("a", "b"):
            zf.writestr(f"{name}/x.png", png(np.zeros((4, 4, 3), np.uint8)))
        link = zipfile.ZipInfo("a/passwd.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    return path


def named_entry_zip(path: Path, hostile: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("a", "b"):
            zf.writestr(f"{name}/x.png", png(np.zeros((4, 4, 3), np.uint8)))
        zf.writestr(hostile, png(np.zeros((4, 4, 3), np.uint8)))
    return path


def ratio_bomb_zip(path: Path, megabytes: int = 20) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/x.png", png(np.zeros((4, 4, 3), np.uint8)))
        zf.writestr("b/huge.png", bytes(megabytes * 1024 * 1024))
    return path


def annotated_zip(path: Path, annotation_name: str, annotation_text: str, names=("beach", "street")) -> Path:
    """Images in an ``images/`` folder and one annotation file beside it, inside a top folder."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"shoot/{annotation_name}", annotation_text)
        zf.writestr("shoot/.DS_Store", bytes(32))
        for i, name in enumerate(names):
            zf.writestr(f"shoot/images/{name}.jpg", jpeg(np.full((16, 16, 3), 40 * i, np.uint8)))
    return path


def stored_zip(path: Path, megabytes: int, entry_mb: int = 8) -> Path:
    """A big zip of two class folders whose 'images' are random bytes (stored, so it cannot be a bomb)."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(megabytes // entry_mb):
            with zf.open(f"big/{'ab'[i % 2]}/{i:04d}.jpg", "w", force_zip64=True) as fh:
                for _ in range(entry_mb):
                    fh.write(rng.bytes(1024 * 1024))
    return path
