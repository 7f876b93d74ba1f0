"""Reading and checking HDF5 dataset files (:func:`inspect_hdf5`), without torch.

The web process checks a training request's HDF5 file with it (declared shapes, labels and class names,
all bounded before reading); :mod:`engine.datasets` builds the training datasets on top of it.
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import h5py._objects as h5py_objects
import numpy as np

from engine.exceptions import InvalidInput
from engine.hdf5 import chunk_bytes, declared_values, open_hdf5
from engine.images import DEFAULT_MAX_PIXELS

HDF5_NAME_KEYS = ("class_names", "classes")
# The test split may be stored under either name; X_test wins when both exist.
HDF5_SPLITS = {"train": ("train",), "test": ("test", "val")}
CHANNEL_COUNTS = (1, 3, 4)
MAX_CLASS_NAME = 200
# The pixel range of non-uint8 images is judged on evenly spaced images, within these bounds, so that a
# request stays quick on a file of any size; stray values elsewhere are clipped when the item is read.
SAMPLE_IMAGES, SAMPLE_BYTES = 256, 64 << 20
HDF5_READ_SECONDS = 60.0  # checking a file's header, labels and sample; far more means a damaged file
# Bounds on what a file declares, checked before anything is read: a few KB of HDF5 can declare arrays of
# any size (chunks never written read as zeros). Labels are read whole: 20 M values are ~0.5 GB at the
# peak of their conversion. One image, and one chunk of images (reading any element decodes its whole
# chunk), may take 256 MB: a 50 M pixel RGBA uint8 image is 200 MB.
MAX_LABEL_VALUES = 20_000_000
MAX_IMAGE_READ_BYTES = 256 << 20
# Memory for the images write_canonical_hdf5 copies at a time.
COPY_BUFFER_BYTES = 64 << 20
LABEL_BYTES = 8  # the int64 label per image of the canonical layout
_HOW_TO_SAVE = (
    "Write it with h5py as X_train, y_train, X_test (or X_val), y_test (or y_val): images N x H x W (x C) "
    "uint8, labels integer class indices, and the class names as an attribute, "
    "e.g. f.attrs['class_names'] = ['cat', 'dog']"
)


@dataclass(frozen=True)
class Hdf5Summary:
    """What an HDF5 dataset file holds, as read (and checked) by :func:`inspect_hdf5`.

    Attributes:
        class_names: the classes (labels, when multi-label) in output order.
        multi_label: the labels are multi-hot rows (independent labels per image).
        split_sizes: images per split, ``{"train": n, "test": n}``.
        class_counts: ``{split: {class name: images carrying it}}``.
        image_shape: ``(height, width, channels)`` of the training images as the models see them.
        image_dtype: the stored dtype of the training images (``uint8``, ``float32``, ...).
        channels_first: the images are stored N x C x H x W.
        sources: the image dataset read for each split, e.g. ``{"train": "X_train", "test": "X_val"}``.
        class_names_from: where the names came from: ``"attribute 'class_names'"``,
            ``"dataset 'classes'"``, ... or ``"labels"`` when the file names no classes.
        canonical_bytes: the size of the file :func:`write_canonical_hdf5` writes from it (uint8 pixels
            and an int64 label per image), computed from the declared shapes.
    """

    class_names: list[str]
    multi_label: bool
    split_sizes: dict[str, int]
    class_counts: dict[str, dict[str, int]]
    image_shape: tuple[int, int, int]
    image_dtype: str
    channels_first: bool
    sources: dict[str, str]
    class_names_from: str
    canonical_bytes: int = 0


@dataclass(frozen=True)
class _ImageFormat:
    """How to turn one stored image into H x W (x C) uint8."""

    channels_first: bool
    scale: float  # floats are multiplied by it: 255 for [0, 1], 1 for [0, 255]
    shape: tuple[int, int, int]  # height, width, channels
    dtype: str


@dataclass(frozen=True)
class _Hdf5Split:
    images: str  # the image dataset's name in the file
    image_format: _ImageFormat
    targets: np.ndarray  # int64 class indices (N,), or float32 0/1 rows (N x L) when multi-label


@dataclass(frozen=True)
class _Hdf5Layout:
    summary: Hdf5Summary
    splits: dict[str, _Hdf5Split]


def inspect_hdf5(path: str | os.PathLike, max_bytes: int | None = None) -> Hdf5Summary:
    """Read and check an HDF5 dataset file, as written by this project or by hand with h5py/numpy.

    Accepted, per split (``X_train``/``y_train`` and ``X_test``/``y_test``, or ``X_val``/``y_val`` as the
    test split when there is no ``X_test``):

    * images N x H x W (grey) or N x H x W x C with C in 1, 3, 4; channels-first N x C x H x W when
      unambiguous (C in 1, 3, 4 and the last side not); uint8, other integers within 0..255, or floats
      in [0, 1] or [0, 255] (judged on a sample of the images; converted to uint8 one image at a time);
    * labels as integers or integer-valued floats (N or N x 1), as class-name strings, as one-hot rows
      (a single-label dataset) or as multi-hot 0/1 rows N x L (a multi-label dataset).

    Class names come from a ``class_names`` (or ``classes``) attribute, holding a JSON list or a list or
    array of ``str``/``bytes``, else from a dataset of that name. A file that names no classes gets the
    labels it actually uses, in increasing order, as names: labels {0, 1, 7} make the three classes
    "0", "1" and "7" (and 7 becomes output 2), never eight classes of which five are empty. Multi-hot
    rows without names keep the columns that are set at least once, named by their column number.

    The pixel range of non-uint8 images is judged on up to 256 evenly spaced images; when an item is
    read later, values outside it are clipped and NaN becomes 0, so training never stops on them. The
    file is read in a forked child within ``HDF5_READ_SECONDS``: libhdf5 can loop forever on a damaged
    file, and must not hang the caller.

    Nothing is read from a file that would make the reader open other files (external links, external
    storage, virtual datasets: :func:`engine.hdf5.open_hdf5`), and the declared shapes are bounded before
    any read: labels by ``MAX_LABEL_VALUES``, one image and one chunk of images by ``MAX_IMAGE_READ_BYTES``,
    and the whole, as this studio stores it (``canonical_bytes``), by ``max_bytes`` when given.

    Args:
        path: the ``.hdf5``/``.h5`` file.
        max_bytes: refuse a file whose images and labels take more than this once decoded (the importer's
            budget); None: no such bound (training reads one image at a time).

    Returns:
        The file's summary: classes, splits, counts, image shape and label kind.

    Raises:
        InvalidInput: (field ``hdf5_path``) the file is missing or unreadable, refers to other files,
            declares more than the bounds, a split or a class name is missing or malformed, images and
            labels disagree in number, labels are NaN, negative, fractional or beyond the class names,
            pixels are out of range, or fewer than two classes are present; the message says what is
            wrong and how to fix it.
    """
    layout = _open_hdf5(path)
    _check_budget(Path(path), layout, max_bytes)
    return layout.summary


def read_split_image(path: str | os.PathLike, split: str, index: int) -> np.ndarray:
    """Image ``index`` of a split (``"train"`` or ``"test"``) of a file :func:`inspect_hdf5` accepts, as
    H x W (x C) uint8, exactly as training reads it.

    Raises:
        InvalidInput: the file is refused (field ``hdf5_path``), or has no such split or index (field ``index``).
    """
    layout = _open_hdf5(path)
    source = layout.splits.get(split)
    if source is None or not 0 <= index < len(source.targets):
        raise InvalidInput(f"{Path(path).name!r} has no image {index} in its {split!r} split", field="index")
    with open_hdf5(path, field="hdf5_path") as handle:
        return _image_uint8(np.asarray(handle[source.images][index]), source.image_format)


def _refusal(path: Path, problem: str, fix: str = _HOW_TO_SAVE) -> InvalidInput:
    # The file's name only: clients know paths relative to DATA_DIR, never the server's.
    return InvalidInput(f"HDF5 file {path.name!r}: {problem}. {fix}", field="hdf5_path")


def _open_hdf5(path: str | os.PathLike, seconds: float | None = None) -> _Hdf5Layout:
    path = Path(path)
    if not path.is_file():
        raise _refusal(path, "does not exist", "Put it in DATA_DIR/datasets or upload it")
    stat = path.stat()
    # One request checks a file several times (the page's summary, prepare, the duplicate check): the
    # isolated read is done once per version of the file.
    outcome, value = _read_isolated_once(str(path.resolve()), stat.st_mtime_ns, stat.st_size,
                                         HDF5_READ_SECONDS if seconds is None else seconds)
    if outcome == "ok":
        return value
    if outcome == "refused":
        raise InvalidInput(value, field="hdf5_path")
    raise _refusal(path, value, "The file is probably damaged: write it again, or check it with h5dump")


# Read files in a time-limited child where a fork is safe. Off only where no process may start (the suite's
# in-process tier, whose files are small and well-formed or refused before libhdf5 could spin).
READ_IN_A_CHILD = True


@functools.lru_cache(maxsize=16)
def _read_isolated_once(path: str, _mtime_ns: int, _size: int, seconds: float) -> tuple[str, Any]:
    return _read_isolated(Path(path), seconds)


def _read_isolated(path: Path, seconds: float) -> tuple[str, Any]:
    """Read the file in a forked child, with a time limit.

    libhdf5 can spin forever or crash on a damaged file (seen: a flipped byte in a string attribute's
    heap), holding h5py's global lock; in a child neither the caller nor its other threads are stuck.

    Only a process's main thread forks (a worker's job, a command). Elsewhere the file is read here: a fork
    copies one thread of many, and under an event loop (the API's gevent worker, whose request handlers
    are greenlets or pool threads) the child would resume the loop's other greenlets, which exit on seeing
    a new parent (seen: the child quit before answering). The web processes read only files that an import
    job already checked this way, or that this studio wrote.
    """
    forkable = (READ_IN_A_CHILD and threading.current_thread() is threading.main_thread()
                and not multiprocessing.current_process().daemon)
    if "fork" not in multiprocessing.get_all_start_methods() or not forkable:
        return _read_outcome(path)
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_send_outcome, args=(path, send), name="hdf5-reader")
    with h5py_objects.phil:  # no other thread is inside libhdf5 at the fork, so the child cannot deadlock
        child.start()
    send.close()
    try:
        if not receive.poll(seconds):
            return "failed", f"took over {seconds:g} s to read"
        return receive.recv()
    except EOFError:
        child.join(5)
        return "failed", f"made the reader crash (exit code {child.exitcode})"
    finally:
        receive.close()
        child.join(1)
        if child.is_alive():
            child.kill()
            child.join()


def _send_outcome(path: Path, send: Any) -> None:
    send.send(_read_outcome(path))
    send.close()


# h5py reports damaged files, unknown compression filters and odd types in all of these.
_READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError)


def _read_outcome(path: Path) -> tuple[str, Any]:
    """``("ok", layout)``, ``("refused", message)`` or ``("failed", problem)``: plain values that pickle."""
    try:
        handle = open_hdf5(path)  # refuses files that would make it read other files
    except InvalidInput as exc:
        return "refused", str(exc)
    except (OSError, ValueError) as exc:
        return "refused", str(_refusal(path, f"is not an HDF5 file ({exc})"))
    except _READ_ERRORS as exc:
        return "failed", f"could not be read ({type(exc).__name__}: {exc})"
    try:
        with handle as f:
            return "ok", _read_layout(f, path)
    except InvalidInput as exc:
        return "refused", str(exc)
    except _READ_ERRORS as exc:
        return "failed", f"could not be read ({type(exc).__name__}: {exc})"


def _read_layout(f: h5py.File, path: Path) -> _Hdf5Layout:
    names = _find_splits(f, path)
    for x, y in names.values():
        _check_declared(f[x], f[y], path, x, y)
    formats = {split: _image_format(f[x], path, x) for split, (x, _) in names.items()}
    labels = {split: _read_labels(f[y], path, y, len(f[x])) for split, (x, y) in names.items()}
    given, names_from = _read_class_names(f, path)
    class_names, targets, multi_label = _resolve_classes(path, given, labels)
    splits = {split: _Hdf5Split(names[split][0], formats[split], targets[split]) for split in names}
    summary = Hdf5Summary(
        class_names=class_names,
        multi_label=multi_label,
        split_sizes={split: len(t) for split, t in targets.items()},
        class_counts={split: _class_counts(t, class_names) for split, t in targets.items()},
        image_shape=formats["train"].shape,
        image_dtype=formats["train"].dtype,
        channels_first=formats["train"].channels_first,
        sources={split: names[split][0] for split in names},
        class_names_from=names_from,
        canonical_bytes=sum(len(s.targets) * (math.prod(s.image_format.shape) + LABEL_BYTES)
                            for s in splits.values()),
    )
    return _Hdf5Layout(summary, splits)


def _check_declared(images: h5py.Dataset, labels: h5py.Dataset, path: Path, x: str, y: str) -> None:
    """Refuse declared shapes that reading would turn into gigabytes of memory (before anything is read)."""
    if declared_values(labels) > MAX_LABEL_VALUES:
        raise _refusal(path, f"{y} declares {declared_values(labels):,} label values (shape {labels.shape}); "
                       f"a file may hold at most {MAX_LABEL_VALUES:,}", "Store one class index per image")
    per_image = math.prod(images.shape[1:]) * images.dtype.itemsize
    for what, size in (("one image", per_image), ("one chunk", chunk_bytes(images))):
        if size > MAX_IMAGE_READ_BYTES:
            raise _refusal(path, f"{what} of {x} declares {size / 2**20:,.0f} MB (shape {images.shape}, chunks "
                           f"{images.chunks}, {images.dtype}); the reader takes at most "
                           f"{MAX_IMAGE_READ_BYTES >> 20} MB", "Store smaller uint8 images, chunked a few at a time")


def _check_budget(path: Path, layout: _Hdf5Layout, max_bytes: int | None) -> None:
    """Refuse a file whose declared images and labels, decoded, exceed ``max_bytes``."""
    if max_bytes is None or layout.summary.canonical_bytes <= max_bytes:
        return
    shapes = " and ".join(f"{split.images} as {len(split.targets):,} x {' x '.join(map(str, split.image_format.shape))}"
                          for split in layout.splits.values())
    raise _refusal(path, f"it declares {shapes} pixels, {layout.summary.canonical_bytes / 2**20:,.0f} MB once decoded, "
                   f"over the limit of {max_bytes / 2**20:,.0f} MB",
                   "Import fewer or smaller images (the limit is the server's dataset size limit)")


def _find_splits(f: h5py.File, path: Path) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for split, candidates in HDF5_SPLITS.items():
        for name in candidates:
            if f"X_{name}" in f and f"y_{name}" in f:
                found[split] = (f"X_{name}", f"y_{name}")
                break
        else:
            wanted = " or ".join(f"X_{n}/y_{n}" for n in candidates)
            held = ", ".join(sorted(f.keys())[:20]) or "nothing"
            raise _refusal(path, f"has no {split} split {wanted} (it holds: {held})")
    for x, y in found.values():
        for key in (x, y):
            if not isinstance(f[key], h5py.Dataset):
                raise _refusal(path, f"{key} is a group, not an array")
    return found


def _image_format(images: h5py.Dataset, path: Path, key: str) -> _ImageFormat:
    shape, kind = images.shape, images.dtype.kind
    if kind not in "uif" or images.dtype.names:
        raise _refusal(path, f"{key} holds {images.dtype} values, not pixels",
                       "Store images as uint8 (0..255) or as floats in [0, 1]")
    channels_first = _channels_first(shape, path, key)
    height, width, channels = (
        (shape[2], shape[3], shape[1]) if channels_first else (shape[1], shape[2], shape[3] if len(shape) == 4 else 1)
    )
    if shape[0] == 0 or height == 0 or width == 0:
        raise _refusal(path, f"{key} is empty (shape {shape})")
    if height * width > DEFAULT_MAX_PIXELS:
        raise _refusal(path, f"{key} images are {height} x {width}, over {DEFAULT_MAX_PIXELS:,} pixels",
                       "Resize the images before storing them")
    scale = _pixel_scale(images, path, key)
    return _ImageFormat(channels_first, scale, (int(height), int(width), int(channels)), str(images.dtype))


def _channels_first(shape: tuple[int, ...], path: Path, key: str) -> bool:
    if len(shape) == 3:
        return False
    if len(shape) != 4:
        raise _refusal(path, f"{key} has shape {shape}; images must be N x H x W or N x H x W x C",
                       "Reshape flat rows to N x H x W (e.g. X.reshape(-1, 8, 8)) before storing them")
    if shape[3] in CHANNEL_COUNTS:
        return False
    if shape[1] in CHANNEL_COUNTS:
        return True
    raise _refusal(path, f"{key} has shape {shape}: neither its last axis nor its second is 1, 3 or 4 channels",
                   "Store images as N x H x W x C with C = 1 (grey), 3 (RGB) or 4 (RGBA)")


def _pixel_scale(images: h5py.Dataset, path: Path, key: str) -> float:
    """Read a few images (all of them for a small file) and tell how to bring their pixels to 0..255."""
    count = len(images)
    per_image = max(1, images.dtype.itemsize * int(np.prod(images.shape[1:])))
    wanted = 2 if images.dtype == np.uint8 else min(SAMPLE_IMAGES, max(1, SAMPLE_BYTES // per_image))
    low, high = np.inf, -np.inf
    for index in np.unique(np.linspace(0, count - 1, min(count, wanted)).round().astype(np.int64)):
        image = np.asarray(images[int(index)])  # also proves that the chunks decode (compression filters)
        if image.dtype.kind == "f" and not np.isfinite(image).all():
            raise _refusal(path, f"{key} holds NaN or infinite pixels (image {index})",
                           "Replace them (e.g. np.nan_to_num) before storing")
        low, high = min(low, float(image.min())), max(high, float(image.max()))
    if images.dtype == np.uint8:
        return 1.0
    if images.dtype.kind == "f" and low >= -1e-3 and high <= 1 + 1e-3:
        return 255.0
    if low >= -1e-3 and high <= 255 + 1e-3:
        return 1.0
    raise _refusal(
        path, f"{key} pixels range from {low:g} to {high:g}; they must lie in [0, 1] or [0, 255]",
        "Store the pixels before normalisation, as uint8 or as floats in [0, 1]",
    )


def _image_uint8(image: np.ndarray, image_format: _ImageFormat) -> np.ndarray:
    """One stored image as H x W (x C) uint8 (floats scaled, everything clipped to 0..255)."""
    if image_format.channels_first:
        image = np.moveaxis(image, 0, -1)
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind == "f":
        image = np.nan_to_num(image.astype(np.float32) * image_format.scale, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _read_labels(labels: h5py.Dataset, path: Path, key: str, count: int) -> np.ndarray:
    """Labels as int64 (N,) class indices, int64 (N x L) 0/1 rows, or str (N,) names; checked."""
    raw = np.asarray(labels[()])
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim not in (1, 2):
        raise _refusal(path, f"{key} has shape {raw.shape}; labels must be N class indices or N x L 0/1 rows")
    if len(raw) != count:
        raise _refusal(path, f"{key} has {len(raw)} labels for {count} images",
                       "Store exactly one label (or label row) per image")
    if raw.dtype.kind in "SUO" and raw.ndim == 1:
        return _label_strings(raw, path, key)
    if raw.dtype.kind not in "biuf":
        raise _refusal(path, f"{key} holds {raw.dtype} values", "Store labels as integer class indices")
    values = raw.astype(np.float64)
    if not np.isfinite(values).all():
        raise _refusal(path, f"{key} holds NaN or infinite labels", "Give every image a valid class index")
    if (values != np.round(values)).any():
        bad = values[values != np.round(values)][0]
        raise _refusal(path, f"{key} holds the fractional label {bad:g}", "Labels must be whole class indices")
    if (values < 0).any():
        raise _refusal(path, f"{key} holds the negative label {values.min():g}", "Class indices start at 0")
    if raw.ndim == 2 and (values > 1).any():
        raise _refusal(path, f"{key} has rows of {raw.shape[1]} values that are not all 0 or 1",
                       "Store one class index per image, or one-hot / multi-hot rows of 0 and 1")
    return values.astype(np.int64)


def _label_strings(raw: np.ndarray, path: Path, key: str) -> np.ndarray:
    try:
        return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in raw.tolist()], dtype=object)
    except UnicodeDecodeError:
        raise _refusal(path, f"{key} holds names that are not UTF-8 text") from None


def _read_class_names(f: h5py.File, path: Path) -> tuple[list[str] | None, str]:
    for key in HDF5_NAME_KEYS:
        if key in f.attrs:
            return _class_names(f.attrs[key], path, f"attribute {key!r}"), f"attribute {key!r}"
    for key in HDF5_NAME_KEYS:
        if key in f and isinstance(f[key], h5py.Dataset):
            if declared_values(f[key]) > MAX_LABEL_VALUES:
                raise _refusal(path, f"dataset {key!r} declares {declared_values(f[key]):,} class names")
            return _class_names(f[key][()], path, f"dataset {key!r}"), f"dataset {key!r}"
    return None, "labels"


def _class_names(value: Any, path: Path, where: str) -> list[str]:
    """Class names from a JSON string, a list/array of str or bytes, or a JSON object {index: name}."""
    fix = "Store them as a list of strings, e.g. f.attrs['class_names'] = ['cat', 'dog'], or as a JSON list"
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _refusal(path, f"the class names in {where} are the text {value[:60]!r}, not a list", fix) from None
    if isinstance(value, dict):
        value = _names_by_index(value, path, where, fix)
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if not isinstance(value, list):
        raise _refusal(path, f"the class names in {where} are not a list", fix)
    names = [_class_name(v, path, where, fix) for v in value]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise _refusal(path, f"the class names in {where} repeat {twice[:5]}", "Give each class its own name")
    return names


def _names_by_index(mapping: dict, path: Path, where: str, fix: str) -> list:
    try:
        by_index = {int(k): v for k, v in mapping.items()}
    except (TypeError, ValueError):
        raise _refusal(path, f"the class names in {where} are an object whose keys are not indices", fix) from None
    if sorted(by_index) != list(range(len(by_index))):
        raise _refusal(path, f"the class names in {where} are numbered {sorted(by_index)[:10]}, not 0..n-1", fix)
    return [by_index[i] for i in range(len(by_index))]


def _class_name(value: Any, path: Path, where: str, fix: str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = str(int(value))
    if not isinstance(value, str):
        raise _refusal(path, f"the class names in {where} include {value!r}, which is not text", fix)
    # Names become folder names when a dataset is exported or predictions are shown.
    if not value.strip() or len(value) > MAX_CLASS_NAME or value in (".", "..") or any(
        c in value for c in "/\\\x00"
    ) or not value.isprintable():
        raise _refusal(path, f"the class names in {where} include {value[:60]!r}",
                       f"Class names must be 1-{MAX_CLASS_NAME} printable characters without / or \\")
    return value


def _resolve_classes(
    path: Path, given: list[str] | None, labels: dict[str, np.ndarray]
) -> tuple[list[str], dict[str, np.ndarray], bool]:
    """Class names and per-split targets (indices, or 0/1 float rows when multi-label)."""
    named = [v.dtype == object for v in labels.values()]
    if any(named) and not all(named):
        raise _refusal(path, "one split labels images by name and the other by number",
                       "Use the same kind of labels in every split")
    if all(named):
        names, targets = _classes_from_strings(path, given, labels)
        return _checked(path, names, targets, False)
    widths = {v.shape[1] for v in labels.values() if v.ndim == 2}
    if len(widths) > 1:
        raise _refusal(path, f"the label rows of the splits have different widths {sorted(widths)}",
                       "Give every split one column per class")
    if widths and any(v.ndim == 2 and (v.sum(axis=1) != 1).any() for v in labels.values()):
        return _checked(path, *_multi_hot(path, given, labels, widths.pop()), True)
    if widths and given is not None and widths != {len(given)}:
        raise _refusal(path, f"the one-hot rows have {widths.pop()} columns for {len(given)} class names",
                       "Give one column per class name")
    indices = {split: v.argmax(axis=1) if v.ndim == 2 else v for split, v in labels.items()}
    names, targets = _classes_from_indices(path, given, indices)
    return _checked(path, names, targets, False)


def _classes_from_strings(path, given, labels):
    present = sorted(set().union(*(set(v.tolist()) for v in labels.values())))
    names = list(given) if given is not None else present
    unknown = sorted(set(present) - set(names))
    if unknown:
        raise _refusal(path, f"labels {unknown[:10]} are not among the class names",
                       "Add them to the class names, or relabel those images")
    index = {name: i for i, name in enumerate(names)}
    return names, {split: np.array([index[v] for v in values], np.int64) for split, values in labels.items()}


def _classes_from_indices(path, given, indices):
    if given is not None:
        top = max(int(v.max()) for v in indices.values())
        if top >= len(given):
            raise _refusal(path, f"label {top} has no class name (the {len(given)} names cover 0..{len(given) - 1})",
                           "Add the missing names, or relabel those images")
        return list(given), indices
    present = np.unique(np.concatenate(list(indices.values())))
    return [str(int(v)) for v in present], {s: np.searchsorted(present, v).astype(np.int64) for s, v in indices.items()}


def _multi_hot(path, given, labels, width):
    if any(v.ndim != 2 for v in labels.values()):
        raise _refusal(path, "the train labels are multi-hot rows but the test labels are class indices",
                       "Store multi-hot 0/1 rows in every split")
    if given is not None:
        if len(given) != width:
            raise _refusal(path, f"the multi-hot rows have {width} columns for {len(given)} class names",
                           "Give one column per class name")
        return list(given), {s: v.astype(np.float32) for s, v in labels.items()}
    used = np.flatnonzero(np.any(np.concatenate(list(labels.values())), axis=0))
    return [str(int(c)) for c in used], {s: v[:, used].astype(np.float32) for s, v in labels.items()}


def _checked(path, names, targets, multi_label):
    if len(names) < 2:
        raise _refusal(path, f"has {len(names)} class{'' if len(names) == 1 else 'es'} ({', '.join(names)})",
                       "A classifier needs at least two classes")
    train = targets["train"]
    seen = int((train.sum(axis=0) > 0).sum()) if multi_label else len(np.unique(train))
    if seen < (1 if multi_label else 2):
        raise _refusal(path, f"its training images show {seen} of the {len(names)} classes",
                       "Give the training split images of at least two classes")
    return names, targets, multi_label


def _class_counts(targets: np.ndarray, names: list[str]) -> dict[str, int]:
    counts = targets.sum(axis=0) if targets.ndim == 2 else np.bincount(targets, minlength=len(names))
    return {name: int(n) for name, n in zip(names, counts, strict=True)}


# ----------------------------------------------------------------------------------------- datasets
