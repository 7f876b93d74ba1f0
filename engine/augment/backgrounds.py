"""Backgrounds: procedural textures we may redistribute, and the train/test sets they are kept in.

A background directory holds ``train/`` and ``test/`` sub-folders of images. A background belongs to
exactly one of them, so a test sample is never drawn on a background seen in training;
:func:`list_backgrounds` enforces it by file content, not only by name. New backgrounds are placed by
:func:`assign_split`, a hash of their bytes, so the same picture always lands in the same set.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from engine.exceptions import InvalidInput
from engine.images import decode_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SPLITS = ("train", "test")
DEFAULT_TEST_FRACTION = 0.25

Generator = Callable[[int, np.random.Generator], np.ndarray]
_KINDS: dict[str, Generator] = {}


@dataclass(frozen=True)
class BackgroundSets:
    """Background image paths of each split (sorted, disjoint)."""

    train: list[Path]
    test: list[Path]


def _kind(name: str) -> Callable[[Generator], Generator]:
    def register(fn: Generator) -> Generator:
        _KINDS[name] = fn
        return fn

    return register


# --------------------------------------------------------------------------------- procedural textures


def list_background_kinds() -> list[str]:
    """Names of the procedural texture generators."""
    return list(_KINDS)


def make_background(kind: str, size: int, seed: int) -> np.ndarray:
    """A ``size``×``size`` RGB uint8 texture of the given kind; the same seed gives the same pixels."""
    if kind not in _KINDS:
        raise InvalidInput(f"unknown background kind {kind!r}; known: {', '.join(_KINDS)}", "kind")
    rng = np.random.default_rng([seed, list(_KINDS).index(kind)])
    return _KINDS[kind](size, rng)


def make_default_backgrounds(
    bgs_dir: Path, seed: int = 0, n_train: int = 18, n_test: int = 6, size: int = 512
) -> BackgroundSets:
    """Write the shipped procedural backgrounds as JPEGs under ``bgs_dir/train`` and ``bgs_dir/test``.

    Kinds take turns, so both sets hold a mix; each picture has its own seed, so no two are alike.

    Returns:
        The paths written, per split.
    """
    kinds = list_background_kinds()
    written: dict[str, list[Path]] = {split: [] for split in SPLITS}
    for index in range(n_train + n_test):
        split = "train" if index < n_train else "test"
        kind = kinds[index % len(kinds)]
        path = Path(bgs_dir) / split / f"{kind}_{index:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = make_background(kind, size, seed * 1000 + index)
        Image.fromarray(pixels).save(path, format="JPEG", quality=88, optimize=True)
        written[split].append(path)
    return BackgroundSets(train=written["train"], test=written["test"])


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    first = rng.uniform(30, 230, size=3)
    second = np.clip(first + rng.uniform(-90, 90, size=3), 0, 255)
    return first.astype(np.float32), second.astype(np.float32)


def _blend(t: np.ndarray, colours: tuple[np.ndarray, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Map a 0..1 field to an RGB image between two colours, with a little grain against JPEG banding."""
    low, high = colours
    image = low + t[:, :, None] * (high - low)
    image += rng.normal(0.0, 2.0, size=t.shape)[:, :, None].astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _coordinates(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    return np.meshgrid(axis, axis)


@_kind("gradient")
def _linear_gradient(size: int, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    x, y = _coordinates(size)
    t = (x * np.cos(angle) + y * np.sin(angle)) / np.sqrt(2) * 0.5 + 0.5
    return _blend(t, _two_colours(rng), rng)


@_kind("radial")
def _radial_gradient(size: int, rng: np.random.Generator) -> np.ndarray:
    cx, cy = rng.uniform(-0.6, 0.6, size=2)
    x, y = _coordinates(size)
    t = np.clip(np.hypot(x - cx, y - cy) / 2.0, 0.0, 1.0)
    return _blend(t, _two_colours(rng), rng)


@_kind("noise")
def _value_noise(size: int, rng: np.random.Generator) -> np.ndarray:
    """Octaves of smoothly interpolated random grids (value noise), like paper, plaster or clouds."""
    field = np.zeros((size, size), np.float32)
    cells, amplitude = int(rng.integers(3, 7)), 1.0
    for _ in range(5):
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        field += amplitude * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        cells, amplitude = cells * 2, amplitude * 0.5
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    return _blend(field, _two_colours(rng), rng)


@_kind("tiles")
def _tiles(size: int, rng: np.random.Generator) -> np.ndarray:
    """Bricks or tiles: offset rows of rectangles with jittered colour, separated by grout."""
    tile_h = int(rng.integers(size // 16, size // 5))
    tile_w = int(tile_h * rng.uniform(1.0, 3.0))
    grout = max(2, tile_h // 10)
    base, mortar = _two_colours(rng)
    image = np.empty((size, size, 3), np.float32)
    image[:] = mortar
    for row, top in enumerate(range(0, size, tile_h)):
        offset = (tile_w // 2) * (row % 2)
        for left in range(-offset, size, tile_w):
            colour = np.clip(base + rng.normal(0, 12, size=3), 0, 255)
            image[top : top + tile_h - grout, max(0, left) : max(0, left + tile_w - grout)] = colour
    image += rng.normal(0.0, 4.0, size=(size, size, 1)).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@_kind("stripes")
def _stripes(size: int, rng: np.random.Generator) -> np.ndarray:
    angle, frequency = rng.uniform(0, np.pi), rng.uniform(3, 14)
    x, y = _coordinates(size)
    t = 0.5 + 0.5 * np.sin(np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle)))
    return _blend(t, _two_colours(rng), rng)


@_kind("checker")
def _checker(size: int, rng: np.random.Generator) -> np.ndarray:
    squares = int(rng.integers(4, 16))
    x, y = _coordinates(size)
    t = ((np.floor((x + 1) * squares / 2) + np.floor((y + 1) * squares / 2)) % 2).astype(np.float32)
    return _blend(cv2.GaussianBlur(t, (0, 0), 1.0), _two_colours(rng), rng)


# ------------------------------------------------------------------------------------- train/test sets


def list_backgrounds(bgs_dir: Path) -> BackgroundSets:
    """The images under ``bgs_dir/train`` and ``bgs_dir/test``, sorted by name.

    Raises:
        InvalidInput: the same picture (by content) is in both sets.
    """
    sets = {split: _images_in(Path(bgs_dir) / split) for split in SPLITS}
    train_digests = {content_digest(path): path for path in sets["train"]}
    for path in sets["test"]:
        twin = train_digests.get(content_digest(path))
        if twin is not None:
            raise InvalidInput(
                f"background {path.name} is in both sets (same picture as {twin.name})", "backgrounds"
            )
    return BackgroundSets(train=sets["train"], test=sets["test"])


def assign_split(data: bytes, test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    """``"test"`` for about ``test_fraction`` of pictures, ``"train"`` otherwise, decided by their bytes."""
    return "test" if _hash_fraction(hashlib.sha256(data).digest()) < test_fraction else "train"


def split_backgrounds(paths: Iterable[Path], test_fraction: float = DEFAULT_TEST_FRACTION) -> BackgroundSets:
    """Split a flat list of backgrounds into disjoint train and test sets by content hash.

    Identical pictures land on the same side. With two or more distinct pictures, both sets get at least
    one (the picture whose hash is closest to the other side is moved).
    """
    if not 0.0 < test_fraction < 1.0:
        raise InvalidInput(f"'test_fraction' must be between 0 and 1, got {test_fraction}", "test_fraction")
    scored = sorted((_hash_fraction(bytes.fromhex(content_digest(Path(p)))), Path(p)) for p in paths)
    test = [path for score, path in scored if score < test_fraction]
    train = [path for score, path in scored if score >= test_fraction]
    if len({score for score, _ in scored}) >= 2:
        if not test:
            test = [train.pop(0)]
        elif not train:
            train = [test.pop()]
    return BackgroundSets(train=sorted(train), test=sorted(test))


def load_background(path: Path) -> np.ndarray:
    """Read a background as an RGB uint8 array (any format Pillow reads, EXIF orientation applied)."""
    return decode_image(Path(path).read_bytes(), field="background")


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def content_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, remembered while its size and modification time stay the same.

    Listing backgrounds checks every picture by content; without the memo each listing re-reads them all.
    """
    stat = Path(path).stat()
    return _digest_of(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4096)
def _digest_of(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _hash_fraction(digest: bytes) -> float:
    return int.from_bytes(digest[:8], "big") / 2.0**64
