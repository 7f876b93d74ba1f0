"""Expand RGBA cut-outs into an augmented HDF5 dataset (the legacy API's ``/api/v1/generate``).

How a configuration becomes samples
-----------------------------------
Each split (train, then test) is built the same way, with its own backgrounds, angle list and
transform list. For every class (sorted by name; the label is the index in that order), every object
of the class, and then:

* every **angle** of ``{0} ∪ angles`` (``test_angles`` for the test split): the cut-out rotated on
  a canvas grown to hold it, never clipped;
* every **flip** of ``{none} ∪ {horizontal if flip_horizontally, vertical if flip_vertically, both if
  flip_both}`` (``both`` is a 180° rotation);
* every **scale** of ``scales`` (the object's longest side in pixels on a ``scale_reference``-pixel
  frame, i.e. the fraction ``scale / scale_reference`` of the output side), or one random size (50-95 %
  of the frame) when ``scales`` is empty;
* ``number_backgrounds`` **composites**, each on a background of the split (distinct while there are
  enough), with a random crop of the background and a random position that keeps the object wholly
  in frame;

and every composite gives **views**: the whole frame, plus one per ``center_crop_windows`` window
when ``apply_center_crop``, plus one per ``occlusion_window``-square crop every ``occlusion_stride``
pixels when ``apply_occlusion`` (the legacy API's name for sliding-window crops). Window sizes are measured
on the ``image_size`` frame; crops are cut from a sharper, larger render, then resized to
``image_size``. Finally the split's photometric **transforms** (``training_transforms`` or
``testing_transforms``, by registry name, plus ``random_erasing`` on training samples when
``apply_random_erasing``) are applied to each view with random parameters.

So, per object: ``samples = angles × flips × scales × number_backgrounds × views``.
``test_fraction``, when set, keeps a seeded subset of the test composites so that the test split is
about that fraction of the whole. Every composite draws its randomness from its own generator seeded
with ``(seed, split, composite index)``, so the same configuration and inputs give the same file,
and :func:`preview_samples` shows exactly the samples the job writes.

The file holds ``X_train``, ``y_train``, ``X_test``, ``y_test`` (uint8 N×H×W×3 images, int64 labels),
written in chunks through a fixed-size buffer (memory stays flat), with attributes ``class_names``,
``config`` (both JSON), ``train_backgrounds`` and ``test_backgrounds``. It is written under a temporary
name and moved into place at the end; on error or cancellation the temporary file is removed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
from PIL import Image

from engine.augment import functional as F
from engine.augment.compositing import crop_to_alpha, random_position, scale_object
from engine.augment.transforms import Compose, create_transform, list_transforms
from engine.exceptions import Cancelled, InvalidInput
from engine.hdf5 import open_hdf5
from engine.images import MAX_IMAGE_SIDE, open_image

SPLITS = ("train", "test")
FLIPS = ("horizontal", "vertical", "both")
BUFFER_SAMPLES = 64  # samples held in memory before each write to the HDF5 file
RANDOM_SCALE_RANGE = (0.5, 0.95)  # object size when no scales are given, as a fraction of the frame
MAX_CROP_ZOOM = 4  # crops are cut from a render at most this many times larger than image_size
MAX_WINDOWS = 256
_BACKGROUND_CACHE = 64  # decoded backgrounds kept in memory
# Inclusive ranges of the numeric options (of each item, for lists). The request model
# (services/app/generate.py) declares its fields' bounds from this table; GenerationConfig checks them again
# for programmatic callers.
OPTION_RANGES: dict[str, tuple[float, float]] = {
    "number_backgrounds": (1, 100),
    "scales": (8, MAX_IMAGE_SIDE),
    "angles": (-360.0, 360.0),
    "test_angles": (-360.0, 360.0),
    "occlusion_window": (0, MAX_IMAGE_SIDE),
    "occlusion_stride": (0, MAX_IMAGE_SIDE),
    "center_crop_windows": (0, MAX_IMAGE_SIDE),
    "image_size": (32, 1024),
    "seed": (0, 2**63 - 1),
    "scale_reference": (64, MAX_IMAGE_SIDE),
}


@dataclass(frozen=True)
class GenerationConfig:
    """Options of a generation job (the legacy API's ``/generate`` body, correctly spelled), validated on creation.

    Values are typed (text is parsed at the edge, by the request model); lists may be any sequence and
    become tuples, whole numbers become floats where a float is expected. Invalid values raise
    :class:`InvalidInput` whose ``field`` names the option. See the module docstring for how the
    options expand into samples.
    """

    number_backgrounds: int = 1
    training_transforms: tuple[str, ...] = ("brightness", "contrast", "color")
    testing_transforms: tuple[str, ...] = ()
    scales: tuple[int, ...] = ()
    flip_vertically: bool = False
    flip_horizontally: bool = False
    flip_both: bool = False
    angles: tuple[float, ...] = ()
    test_angles: tuple[float, ...] = ()
    apply_occlusion: bool = False
    occlusion_window: int = 0
    occlusion_stride: int = 0
    apply_center_crop: bool = False
    center_crop_windows: tuple[int, ...] = ()
    apply_random_erasing: bool = False
    image_size: int = 224
    test_fraction: float | None = None
    seed: int = 0
    scale_reference: int = 512

    def __post_init__(self):
        for field, normalise in _NORMALISERS.items():
            object.__setattr__(self, field, normalise(getattr(self, field), field))
        self._check_sizes()
        self._check_windows()

    def _check_sizes(self) -> None:
        for scale in self.scales:
            if scale > self.scale_reference:
                message = (
                    f"scale {scale} exceeds 'scale_reference' ({self.scale_reference}): it would not fit"
                )
                raise InvalidInput(message, "scales")

    def _check_windows(self) -> None:
        size = self.image_size
        if self.apply_center_crop:
            if not self.center_crop_windows:
                raise InvalidInput(
                    "'center_crop_windows' must list window sizes when cropping", "center_crop_windows"
                )
            for window in self.center_crop_windows:
                _check_range(window, "center_crop_windows", 8, size)
        if self.apply_occlusion:
            _check_range(self.occlusion_window, "occlusion_window", 8, size)
            _check_range(self.occlusion_stride, "occlusion_stride", 1, size)
            if len(self.sliding_windows()) > MAX_WINDOWS:
                message = f"window and stride give more than {MAX_WINDOWS} crops per composite"
                raise InvalidInput(message, "occlusion_stride")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready values (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in _fields(self).items()
        }

    def angle_list(self, split: str) -> list[float]:
        """0° first, then the split's angles, without repeats."""
        return list(dict.fromkeys([0.0, *(self.angles if split == "train" else self.test_angles)]))

    def flip_list(self) -> list[str | None]:
        """``None`` (no flip) first, then each enabled flip."""
        enabled = (self.flip_horizontally, self.flip_vertically, self.flip_both)
        return [None, *(mode for mode, on in zip(FLIPS, enabled, strict=True) if on)]

    def scale_list(self) -> list[int | None]:
        """The scales, or ``[None]`` for one random size per composite."""
        return list(self.scales) or [None]

    def sliding_windows(self) -> list[tuple[int, int]]:
        """Top-left corners of the sliding-window crops on the ``image_size`` frame (empty when off)."""
        if not self.apply_occlusion:
            return []
        shape = (self.image_size, self.image_size)
        return F.sliding_window_origins(shape, self.occlusion_window, self.occlusion_stride)

    def views_per_composite(self) -> int:
        """1 (the whole frame) + centre crops + sliding-window crops."""
        crops = len(self.center_crop_windows) if self.apply_center_crop else 0
        return 1 + crops + len(self.sliding_windows())

    def transform_names(self, split: str) -> list[str]:
        """Registry names of the photometric transforms applied to each view of ``split``."""
        if split == "test":
            return list(self.testing_transforms)
        return [*self.training_transforms, *(["random_erasing"] if self.apply_random_erasing else [])]


# ---------------------------------------------------------------------------------- config validation


def _fields(config: GenerationConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _check_range(value: float, field: str, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidInput(f"'{field}' must be in {low}..{high}, got {value}", field)


def _as_number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InvalidInput(f"'{field}' must be a number, got {value!r}", field)
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInput(f"'{field}' must be a finite number, got {value!r}", field)
    return number


def _as_int(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        number = _as_number(value, field)  # a whole float (2.0, as JSON may carry it) is an integer too
        if number != int(number):
            raise InvalidInput(f"'{field}' must be a whole number, got {value!r}", field)
        value = int(number)
    _check_range(int(value), field, low, high)
    return int(value)


def _as_bool(value: Any, field: str) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise InvalidInput(f"'{field}' must be a boolean (true or false), got {value!r}", field)


def _as_list(value: Any, field: str) -> list:
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidInput(f"'{field}' must be a list, got {value!r}", field)
    return list(value)


def _ints(low: int, high: int) -> Callable[[Any, str], int]:
    return lambda value, field: _as_int(value, field, low, high)


def _int_list(low: int, high: int) -> Callable[[Any, str], tuple[int, ...]]:
    return lambda value, field: tuple(_as_int(v, field, low, high) for v in _as_list(value, field))


def _angle_list(value: Any, field: str) -> tuple[float, ...]:
    angles = tuple(_as_number(v, field) for v in _as_list(value, field))
    for angle in angles:
        _check_range(angle, field, *OPTION_RANGES[field])
    return angles


def _transform_list(value: Any, field: str) -> tuple[str, ...]:
    names = tuple(_as_list(value, field))
    known = list_transforms()
    for name in names:
        if name not in known:
            raise InvalidInput(f"unknown transform {name!r} in '{field}'; known: {', '.join(known)}", field)
    return names


def _test_fraction(value: Any, field: str) -> float | None:
    if value is None:
        return None
    fraction = _as_number(value, field)
    if not 0.0 < fraction < 1.0:
        raise InvalidInput(f"'{field}' must be between 0 and 1 (exclusive), got {value!r}", field)
    return fraction


_NORMALISERS: dict[str, Callable[[Any, str], Any]] = {
    "number_backgrounds": _ints(*OPTION_RANGES["number_backgrounds"]),
    "training_transforms": _transform_list,
    "testing_transforms": _transform_list,
    "scales": _int_list(*OPTION_RANGES["scales"]),
    "flip_vertically": _as_bool,
    "flip_horizontally": _as_bool,
    "flip_both": _as_bool,
    "angles": _angle_list,
    "test_angles": _angle_list,
    "apply_occlusion": _as_bool,
    "occlusion_window": _ints(*OPTION_RANGES["occlusion_window"]),
    "occlusion_stride": _ints(*OPTION_RANGES["occlusion_stride"]),
    "apply_center_crop": _as_bool,
    "center_crop_windows": _int_list(*OPTION_RANGES["center_crop_windows"]),
    "apply_random_erasing": _as_bool,
    "image_size": _ints(*OPTION_RANGES["image_size"]),
    "test_fraction": _test_fraction,
    "seed": _ints(*OPTION_RANGES["seed"]),
    "scale_reference": _ints(*OPTION_RANGES["scale_reference"]),
}


# ------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class _Composite:
    """One composite to render: which object, how it is turned, and on which background."""

    split: str
    index: int  # position in the split's sequence of composites: seeds its random generator
    label: int
    object_path: Path
    angle: float
    flip: str | None
    scale: int | None
    background: Path


def count_samples(config: GenerationConfig, n_objects: int) -> dict[str, int]:
    """Number of samples each split will hold for ``n_objects`` objects (all classes together)."""
    per_object = {split: _kept_per_object(config, split) * config.views_per_composite() for split in SPLITS}
    return {split: per_object[split] * n_objects for split in SPLITS}


def _composites_per_object(config: GenerationConfig, split: str) -> int:
    variants = len(config.angle_list(split)) * len(config.flip_list()) * len(config.scale_list())
    return variants * config.number_backgrounds


def _kept_per_object(config: GenerationConfig, split: str) -> int:
    full = _composites_per_object(config, split)
    if split == "train" or config.test_fraction is None:
        return full
    wanted = _composites_per_object(config, "train") * config.test_fraction / (1.0 - config.test_fraction)
    return int(min(full, max(1, round(wanted))))


def _entries(objects: dict[str, list[Path]]) -> tuple[list[str], list[tuple[int, Path]]]:
    """Class names (sorted) and ``(label, path)`` of every object, class by class."""
    if not objects:
        raise InvalidInput(
            "no objects to augment: the object library (or the chosen classes) is empty", "classes"
        )
    names = sorted(objects)
    entries = []
    for label, name in enumerate(names):
        paths = [Path(p) for p in objects[name]]
        if not paths:
            raise InvalidInput(f"class {name!r} has no objects", "classes")
        entries.extend((label, path) for path in paths)
    return names, entries


def _plan(config: GenerationConfig, entries, backgrounds: list[Path], split: str) -> Iterator[_Composite]:
    """Every composite of a split, in file order (see the module docstring)."""
    per_object, kept = _composites_per_object(config, split), _kept_per_object(config, split)
    variants = [
        (angle, flip, scale)
        for angle in config.angle_list(split)
        for flip in config.flip_list()
        for scale in config.scale_list()
    ]
    index = 0
    for object_number, (label, path) in enumerate(entries):
        chosen = _chosen_composites(config, split, object_number, per_object, kept)
        order = _background_order(config, split, object_number, len(backgrounds))
        for local in chosen:
            angle, flip, scale = variants[local // config.number_backgrounds]
            background = backgrounds[order[local % len(order)]]
            yield _Composite(split, index, label, path, angle, flip, scale, background)
            index += 1


def _chosen_composites(config, split, object_number, per_object, kept) -> list[int]:
    if kept == per_object:
        return list(range(per_object))
    rng = np.random.default_rng([config.seed, SPLITS.index(split), object_number, 1])
    return sorted(rng.choice(per_object, size=kept, replace=False).tolist())


def _background_order(config, split, object_number, n_backgrounds) -> list[int]:
    """A seeded shuffle of the split's backgrounds, walked in turn so an object's composites differ."""
    rng = np.random.default_rng([config.seed, SPLITS.index(split), object_number, 2])
    return rng.permutation(n_backgrounds).tolist()


# ------------------------------------------------------------------------------------------ rendering


def _sprite(premultiplied_rgba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`functional.blend_into` needs, computed once per cached cut-out."""
    return cv2.cvtColor(premultiplied_rgba, cv2.COLOR_RGBA2RGB), F.inverse_alpha(premultiplied_rgba)


class _Renderer:
    """Turns composites into finished samples, caching what composites of one object share."""

    def __init__(self, config: GenerationConfig):
        self.config = config
        self.zoom = self._crop_zoom()
        self.canvas = config.image_size * self.zoom
        self.pipelines = {
            split: Compose([create_transform(n) for n in config.transform_names(split)]) for split in SPLITS
        }
        self._object_path: Path | None = None
        self._source = self._turn = np.zeros((1, 1, 4), np.uint8)
        self._turn_key: tuple | None = None
        self._scaled: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._backgrounds: OrderedDict[Path, np.ndarray] = OrderedDict()

    def _crop_zoom(self) -> int:
        """Render larger when crops are asked for, so a small window is not a blurry enlargement."""
        windows = list(self.config.center_crop_windows) if self.config.apply_center_crop else []
        windows += [self.config.occlusion_window] if self.config.apply_occlusion else []
        if not windows:
            return 1
        return int(min(MAX_CROP_ZOOM, math.ceil(self.config.image_size / min(windows))))

    def render(self, composite: _Composite) -> list[np.ndarray]:
        """The finished ``image_size`` views of one composite (whole frame first)."""
        rng = np.random.default_rng([self.config.seed, SPLITS.index(composite.split), composite.index])
        frame = self._composite(composite, rng)
        pipeline = self.pipelines[composite.split]
        return [pipeline(view, None, rng)[0] for view in self._views(frame)]

    def _composite(self, composite: _Composite, rng: np.random.Generator) -> np.ndarray:
        frame = self._background(composite.background, rng)  # a fresh array: blended in place
        colour, inverse = self._object(composite, rng)
        x, y = random_position(colour.shape, self.canvas, self.canvas, rng)
        F.blend_into(frame, colour, inverse, x, y)
        return frame

    def _views(self, frame: np.ndarray) -> Iterator[np.ndarray]:
        size, zoom = self.config.image_size, self.zoom
        yield frame if frame.shape[0] == size else F.resize(frame, size, size)
        if self.config.apply_center_crop:
            for window in self.config.center_crop_windows:
                box = F.center_crop_box(frame.shape, window * zoom)
                yield F.resize(F.crop(frame, *box), size, size)
        for x, y in self.config.sliding_windows():
            side = self.config.occlusion_window * zoom
            yield F.resize(F.crop(frame, x * zoom, y * zoom, side, side), size, size)

    def _object(self, composite: _Composite, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The turned and scaled cut-out, ready to blend: premultiplied colour and inverse alpha."""
        turned = self._turned(composite)
        if composite.scale is None:
            side = round(rng.uniform(*RANDOM_SCALE_RANGE) * self.canvas)
            return _sprite(scale_object(turned, max(1, side), premultiplied=True))
        if composite.scale not in self._scaled:
            side = round(composite.scale / self.config.scale_reference * self.canvas)
            self._scaled[composite.scale] = _sprite(scale_object(turned, max(1, side), premultiplied=True))
        return self._scaled[composite.scale]

    def _turned(self, composite: _Composite) -> np.ndarray:
        """The cut-out rotated and flipped. The plan walks each (object, angle, flip) in one run, so
        only the current one is cached, with its scaled copies: memory does not grow with the plan."""
        if composite.object_path != self._object_path:
            self._source = self._load_object(composite.object_path)
            self._object_path, self._turn_key = composite.object_path, None
        key = (composite.angle, composite.flip)
        if key != self._turn_key:
            turned = (
                F.rotate(self._source, composite.angle, premultiplied=True)
                if composite.angle
                else self._source
            )
            turned = F.flip(turned, composite.flip) if composite.flip else turned
            self._turn, self._turn_key, self._scaled = crop_to_alpha(turned), key, {}
        return self._turn

    def _load_object(self, path: Path) -> np.ndarray:
        try:
            image = open_image(Path(path).read_bytes(), field="objects")
        except OSError as exc:
            raise InvalidInput(f"cannot read object {path}: {exc}", "objects") from exc
        # premultiplied once here, so every rotation and resize after it is a plain 4-channel resample
        rgba = F.premultiply(crop_to_alpha(np.asarray(image.convert("RGBA"))))
        # nothing larger than the canvas is ever pasted, so huge cut-outs are shrunk once
        if max(rgba.shape[:2]) > self.canvas:
            return F.resize_longest(rgba, self.canvas, premultiplied=True)
        return rgba

    def _background(self, path: Path, rng: np.random.Generator) -> np.ndarray:
        """A random square crop (70-100 % of the shorter side), randomly mirrored, at canvas size."""
        source = self._cached_background(path)
        short = min(source.shape[:2])
        side = max(1, round(short * rng.uniform(0.7, 1.0)))
        x = int(rng.integers(source.shape[1] - side + 1))
        y = int(rng.integers(source.shape[0] - side + 1))
        crop = F.resize(source[y : y + side, x : x + side], self.canvas, self.canvas)
        return F.flip(crop, "horizontal") if rng.random() < 0.5 else crop

    def _cached_background(self, path: Path) -> np.ndarray:
        if path in self._backgrounds:
            self._backgrounds.move_to_end(path)
            return self._backgrounds[path]
        try:
            rgb = np.asarray(open_image(Path(path).read_bytes(), field="backgrounds").convert("RGB"))
        except OSError as exc:
            raise InvalidInput(f"cannot read background {path}: {exc}", "backgrounds") from exc
        # keep only what the crops need: the shorter side at 1.4× the canvas (crops are ≥ 70 % of it)
        limit = math.ceil(self.canvas / 0.7)
        if min(rgb.shape[:2]) > limit:
            ratio = limit / min(rgb.shape[:2])
            rgb = F.resize(rgb, max(1, round(rgb.shape[1] * ratio)), max(1, round(rgb.shape[0] * ratio)))
        self._backgrounds[path] = rgb
        if len(self._backgrounds) > _BACKGROUND_CACHE:
            self._backgrounds.popitem(last=False)
        return rgb


# -------------------------------------------------------------------------------------------- writing


class _SplitWriter:
    """Appends samples of one split to resizable datasets through a fixed-size buffer."""

    def __init__(self, h5: h5py.File, split: str, image_size: int):
        shape = (image_size, image_size, 3)
        self.images = h5.create_dataset(
            f"X_{split}", shape=(0, *shape), maxshape=(None, *shape), dtype=np.uint8, chunks=(1, *shape)
        )
        self.labels = h5.create_dataset(
            f"y_{split}", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,)
        )
        self.buffer = np.empty((BUFFER_SAMPLES, *shape), np.uint8)
        self.buffer_labels = np.empty(BUFFER_SAMPLES, np.int64)
        self.filled = 0

    def add(self, image: np.ndarray, label: int) -> bool:
        """Buffer one sample; return True when the buffer was written out."""
        self.buffer[self.filled] = image
        self.buffer_labels[self.filled] = label
        self.filled += 1
        if self.filled == BUFFER_SAMPLES:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        start, count = self.images.shape[0], self.filled
        if count == 0:
            return
        self.images.resize(start + count, axis=0)
        self.labels.resize(start + count, axis=0)
        self.images[start : start + count] = self.buffer[:count]
        self.labels[start : start + count] = self.buffer_labels[:count]
        self.filled = 0


def generate_dataset(
    config: GenerationConfig,
    objects: dict[str, list[Path]],
    train_backgrounds: list[Path],
    test_backgrounds: list[Path],
    out_path: Path,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Write the augmented dataset described by ``config`` to a new HDF5 file.

    Args:
        config: the generation options.
        objects: class name -> paths of RGBA PNG cut-outs.
        train_backgrounds: backgrounds of the training split.
        test_backgrounds: backgrounds of the test split (must not share a file with the training ones).
        out_path: the file to create; it must not exist yet.
        on_progress: called as ``on_progress(samples_done, samples_total)`` after each written chunk.
        should_stop: polled between composites; when it returns True the job stops with :class:`Cancelled`.

    Returns:
        ``{"path", "image_size", "class_names", "counts": {split: {class: n}}, "totals": {split: n}}``.

    Raises:
        InvalidInput: no objects, a class without objects, a split without backgrounds, overlapping
            background sets, an unreadable file or an existing ``out_path``.
        Cancelled: ``should_stop()`` turned true; no file is left behind.
    """
    class_names, entries = _entries(objects)
    backgrounds = _check_backgrounds(train_backgrounds, test_backgrounds)
    out_path = Path(out_path)
    if out_path.exists():
        raise InvalidInput(f"{out_path.name} already exists; datasets are never overwritten", "name")
    totals = count_samples(config, len(entries))
    temp = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex}.tmp")
    try:
        counts = _write(temp, config, class_names, entries, backgrounds, totals, on_progress, should_stop)
        _publish(temp, out_path)
    finally:
        temp.unlink(missing_ok=True)
    return {
        "path": str(out_path),
        "image_size": config.image_size,
        "class_names": class_names,
        "counts": counts,
        "totals": totals,
    }


def _check_backgrounds(train: list[Path], test: list[Path]) -> dict[str, list[Path]]:
    sets = {"train": [Path(p) for p in train], "test": [Path(p) for p in test]}
    for split, paths in sets.items():
        if not paths:
            raise InvalidInput(f"there are no {split} backgrounds", "backgrounds")
    shared = {p.resolve() for p in sets["train"]} & {p.resolve() for p in sets["test"]}
    if shared:
        names = ", ".join(sorted(p.name for p in shared))
        raise InvalidInput(f"backgrounds used for both train and test: {names}", "backgrounds")
    return sets


def _write(path, config, class_names, entries, backgrounds, totals, on_progress, should_stop) -> dict:
    renderer = _Renderer(config)
    counts = {split: dict.fromkeys(class_names, 0) for split in SPLITS}
    total, done = sum(totals.values()), 0
    with h5py.File(path, "w") as h5:
        _write_attributes(h5, config, class_names, backgrounds)
        for split in SPLITS:
            writer = _SplitWriter(h5, split, config.image_size)
            for composite in _plan(config, entries, backgrounds[split], split):
                if should_stop is not None and should_stop():
                    raise Cancelled("dataset generation was stopped")
                for image in renderer.render(composite):
                    counts[split][class_names[composite.label]] += 1
                    done += 1
                    if writer.add(image, composite.label) and on_progress is not None:
                        on_progress(done, total)
            writer.flush()
    assert done == total, f"wrote {done} samples, planned {total}"
    if on_progress is not None:
        on_progress(done, total)
    return counts


def _write_attributes(h5: h5py.File, config, class_names, backgrounds) -> None:
    h5.attrs["class_names"] = json.dumps(class_names)
    h5.attrs["config"] = json.dumps(config.to_dict(), sort_keys=True)
    h5.attrs["image_size"] = config.image_size
    for split in SPLITS:
        h5.attrs[f"{split}_backgrounds"] = json.dumps([p.name for p in backgrounds[split]])


def _publish(temp: Path, final: Path) -> None:
    """Move the finished file into place without ever replacing a file that appeared meanwhile."""
    try:
        os.link(temp, final)  # fails if ``final`` exists: two jobs never overwrite each other
    except FileExistsError as exc:
        raise InvalidInput(f"{final.name} already exists; datasets are never overwritten", "name") from exc
    except OSError:  # file systems without hard links
        if final.exists():
            raise InvalidInput(
                f"{final.name} already exists; datasets are never overwritten", "name"
            ) from None
        os.replace(temp, final)


# --------------------------------------------------------------------------------- preview and export


def preview_samples(
    config: GenerationConfig,
    objects: dict[str, list[Path]],
    backgrounds: list[Path],
    split: str = "train",
    count: int = 12,
) -> list[tuple[np.ndarray, str]]:
    """Render ``count`` samples spread over the plan, exactly as :func:`generate_dataset` writes them.

    Returns:
        ``(image, class name)`` pairs: whole-frame views of evenly spaced composites of ``split``.
    """
    if split not in SPLITS:
        raise InvalidInput(f"'split' must be one of {SPLITS}, got {split!r}", "split")
    class_names, entries = _entries(objects)
    backgrounds = [Path(p) for p in backgrounds]
    if not backgrounds:
        raise InvalidInput(f"there are no {split} backgrounds", "backgrounds")
    total = _kept_per_object(config, split) * len(entries)
    wanted = set(np.linspace(0, total - 1, num=min(count, total)).round().astype(int).tolist())
    renderer = _Renderer(config)
    out = []
    for composite in _plan(config, entries, backgrounds, split):
        if composite.index in wanted:
            out.append((renderer.render(composite)[0], class_names[composite.label]))
    return out


def export_image_folders(h5_path: Path, out_dir: Path) -> dict[str, dict[str, int]]:
    """Write a dataset's images as PNG files: ``<out_dir>/<split>/<class>/<split>_<index>.png``.

    The folders are filled under a temporary name and renamed at the end; an existing non-empty
    ``out_dir`` is refused, never overwritten.

    Returns:
        Number of images written per split and class.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InvalidInput(f"{out_dir} already exists and is not empty", "out_dir")
    temp = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex}.tmp")
    try:
        counts = _export(Path(h5_path), temp)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(temp, out_dir)
    finally:
        if temp.exists():
            shutil.rmtree(temp)
    return counts


def _export(h5_path: Path, root: Path) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    with open_hdf5(h5_path) as h5:
        names = json.loads(h5.attrs["class_names"])
        for split in SPLITS:
            counts[split] = dict.fromkeys(names, 0)
            for name in names:
                (root / split / name).mkdir(parents=True, exist_ok=True)
            images, labels = h5[f"X_{split}"], h5[f"y_{split}"][:]
            for start in range(0, len(labels), BUFFER_SAMPLES):
                block = images[start : start + BUFFER_SAMPLES]
                for offset, image in enumerate(block):
                    name = names[int(labels[start + offset])]
                    Image.fromarray(image).save(root / split / name / f"{split}_{start + offset:06d}.png")
                    counts[split][name] += 1
    return counts
