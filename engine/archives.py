"""Datasets packed in files: zips of class folders read safely, HDF5 written from them, zips written back.

A zip is read from its central directory without extracting anything to disk, and refused (naming the
field) when it holds what no honest dataset needs: entries that climb out (``..``) or are absolute
(zip-slip), symbolic links, encrypted entries, or more uncompressed bytes than the limits allow (zip
bombs, by total size and by per-entry ratio). Before the directory is parsed, the entry count and the
directory's size its end record declares are bounded (:func:`check_directory`, which reads only the file's
tail). What file managers add (``__MACOSX/``, ``.DS_Store``, ``Thumbs.db``, other hidden files) is ignored.

Two layouts are understood, under any number of wrapping folders:

* ``<root>/<class>/*.jpg``: the split is made here, seeded and stratified (:func:`split_entries`);
* ``<root>/train/<class>/...`` with ``<root>/test/<class>/...`` (or ``val/``): the split is kept.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import struct
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import cv2
import h5py
import numpy as np
from PIL import Image

from engine.exceptions import Cancelled, InvalidInput
from engine.hdf5 import open_hdf5
from engine.images import encode_png, open_image, to_rgb_array

ARCHIVE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# Folders that name a split; val/validation become the test split when there is no test/.
SPLIT_FOLDERS = {"train": "train", "training": "train", "test": "test", "testing": "test",
                 "val": "test", "valid": "test", "validation": "test"}
SPLITS = ("train", "test")
JUNK_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
MAX_CLASS_NAME = 100
# A central-directory record is 46 bytes plus the entry's path and extra fields (timestamps, zip64 sizes):
# a generous average, so that a directory bigger than max_entries of these lists more than its count says.
DIRECTORY_BYTES_PER_ENTRY = 256


@dataclass(frozen=True)
class ZipLimits:
    """What a zip may hold before it is treated as a bomb.

    Attributes:
        max_total_bytes: the sum of the entries' uncompressed sizes.
        max_ratio: uncompressed / compressed size of one entry (only entries above ``ratio_floor``).
        ratio_floor: entries smaller than this are never refused by ratio (tiny files compress oddly).
        max_entries: how many entries the zip may list (its end record's count, then the directory's).
    """

    max_total_bytes: int = 16 * 1024**3
    max_ratio: float = 100.0
    ratio_floor: int = 1024 * 1024
    max_entries: int = 500_000

    @property
    def max_directory_bytes(self) -> int:
        """The largest central directory ``max_entries`` honest entries need (the count alone can lie)."""
        return self.max_entries * DIRECTORY_BYTES_PER_ENTRY


@dataclass(frozen=True)
class ImageEntry:
    """One image of a zip: the member's name, its class and, in the split layout, its split."""

    member: str
    class_name: str
    split: str | None = None


@dataclass(frozen=True)
class ClassFolderZip:
    """The images of a zip of class folders, sorted by class then name.

    Attributes:
        layout: ``"class_folders"`` (split to be made) or ``"split_folders"`` (split kept).
        class_names: sorted class names.
        entries: the images.
        ignored: other members (text files, file-manager litter), for the answer.
    """

    layout: str
    class_names: list[str]
    entries: list[ImageEntry]
    ignored: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- zip safety


def check_member(info: zipfile.ZipInfo, field: str = "file") -> None:
    """Refuse one zip entry that is absolute, climbs out with ``..``, is a symlink or is encrypted."""
    name = info.filename
    if "\x00" in name:
        raise InvalidInput(f"'{field}': the zip entry {name!r} has a NUL character in its name", field)
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise InvalidInput(f"'{field}': the zip entry {name!r} is an absolute path; entries must be "
                           f"relative (this is how zip-slip attacks look)", field)
    if ".." in name.replace("\\", "/").split("/"):
        raise InvalidInput(f"'{field}': the zip entry {name!r} climbs out of the archive with '..' "
                           f"(zip-slip); refused", field)
    if stat.S_ISLNK(info.external_attr >> 16):
        raise InvalidInput(f"'{field}': the zip entry {name!r} is a symbolic link; zip the files themselves", field)
    if info.flag_bits & 0x1:
        raise InvalidInput(f"'{field}': the zip entry {name!r} is encrypted; send an unencrypted zip", field)


def check_sizes(infos: list[zipfile.ZipInfo], limits: ZipLimits, field: str = "file") -> None:
    """Refuse zip bombs: too many entries, too many bytes in all, or an entry that expands too much."""
    if len(infos) > limits.max_entries:
        raise InvalidInput(f"'{field}': the zip lists {len(infos)} entries; the limit is {limits.max_entries}", field)
    total = sum(i.file_size for i in infos)
    if total > limits.max_total_bytes:
        raise InvalidInput(f"'{field}': the zip expands to {total / 1e9:.2f} GB; the limit is "
                           f"{limits.max_total_bytes / 1e9:.2f} GB (a zip bomb, or split the dataset)", field)
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > limits.ratio_floor and ratio > limits.max_ratio:
            raise InvalidInput(f"'{field}': the zip entry {info.filename!r} expands {ratio:.0f} times "
                               f"(limit {limits.max_ratio:.0f}); refused as a zip bomb", field)


def safe_members(zf: zipfile.ZipFile, limits: ZipLimits, field: str = "file") -> list[zipfile.ZipInfo]:
    """Every entry of ``zf`` after the safety checks (raises InvalidInput naming ``field`` otherwise)."""
    infos = zf.infolist()
    for info in infos:
        check_member(info, field)
    check_sizes(infos, limits, field)
    return infos


def open_zip(path: str | os.PathLike, field: str = "file") -> zipfile.ZipFile:
    """Open a zip file, refusing what is not one with a message naming ``field``."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InvalidInput(f"'{field}' is not a readable zip file ({exc})", field) from None


def declared_directory(path: str | os.PathLike, field: str = "file") -> tuple[int, int]:
    """``(entries, central directory bytes)`` as the zip's end record declares them.

    Only the file's tail is read (the end record and, for zip64, its locator), whatever the zip holds, so a
    request can afford it. The stdlib's own reader of that record does the parsing (zip64 and comments
    included); ``ZipFile`` itself reads the directory through it.

    Raises:
        InvalidInput: no end record (not a zip, or a truncated one), naming ``field``.
    """
    try:
        with open(path, "rb") as fh:
            end = zipfile._EndRecData(fh)
    except (OSError, ValueError, struct.error, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"'{field}' is not a readable zip file ({exc})", field) from None
    if end is None:
        raise InvalidInput(f"'{field}' is not a readable zip file (it has no end-of-central-directory record; "
                           "truncated?)", field)
    return int(end[zipfile._ECD_ENTRIES_TOTAL]), int(end[zipfile._ECD_SIZE])


def check_directory(path: str | os.PathLike, limits: ZipLimits, field: str = "file") -> int:
    """Refuse, from its end record alone, a zip listing more entries than ``limits`` allow; its entry count.

    The declared count can lie (``ZipFile`` reads the directory by its size, not its count), so the
    directory's size is bounded too, by :attr:`ZipLimits.max_directory_bytes`.

    Raises:
        InvalidInput: naming ``field``, the declared figures and the limit.
    """
    entries, size = declared_directory(path, field)
    if entries > limits.max_entries:
        raise InvalidInput(f"'{field}': the zip lists {entries:,} entries; the limit is {limits.max_entries:,} "
                           f"(split the dataset into several zips)", field)
    if size > limits.max_directory_bytes:
        raise InvalidInput(f"'{field}': the zip's directory takes {size:,} bytes, more than "
                           f"{limits.max_entries:,} entries need ({limits.max_directory_bytes:,} bytes); refused",
                           field)
    return entries


# ------------------------------------------------------------------------------------------- layouts


def _is_junk(parts: tuple[str, ...]) -> bool:
    return any(p.lower() in JUNK_NAMES or p.startswith(".") for p in parts)


def _strip_wrappers(paths: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Drop folders that wrap everything (a zipped folder), keeping a class folder above each file."""
    while paths and all(len(p) >= 3 for p in paths) and len({p[0] for p in paths}) == 1 \
            and paths[0][0].lower() not in SPLIT_FOLDERS:
        paths = [p[1:] for p in paths]
    return paths


def read_class_folders(path: str | os.PathLike, limits: ZipLimits | None = None,
                       field: str = "file") -> ClassFolderZip:
    """List a zip of class folders (either layout) after the safety checks.

    Raises:
        InvalidInput: not a zip, an unsafe entry, a bomb, images outside class folders, an unclear layout,
            a bad class name or fewer than two classes (all naming ``field``).
    """
    limits = limits or ZipLimits()
    check_directory(path, limits, field)
    with open_zip(path, field) as zf:
        infos = safe_members(zf, limits, field)
    files = [i.filename for i in infos if not i.is_dir()]
    kept = [f for f in files if not _is_junk(PurePosixPath(f).parts)]
    images = [f for f in kept if PurePosixPath(f).suffix.lower() in ARCHIVE_IMAGE_SUFFIXES]
    ignored = sorted(set(kept) - set(images))
    if not images:
        raise InvalidInput(f"'{field}': the zip holds no images ({', '.join(ARCHIVE_IMAGE_SUFFIXES)}) "
                           f"in class folders", field)
    parts = dict(zip(images, _strip_wrappers([PurePosixPath(f).parts for f in images]), strict=True))
    entries = _entries(parts, field)
    return ClassFolderZip(_layout(entries), _class_names(entries, field), entries, ignored)


def _entries(parts: dict[str, tuple[str, ...]], field: str) -> list[ImageEntry]:
    loose = [m for m, p in parts.items() if len(p) < 2]
    if loose:
        raise InvalidInput(f"'{field}': images must be inside class folders (<class>/<image>); found "
                           f"{len(loose)} outside, e.g. {loose[:3]}", field)
    tops = {p[0].lower() for p in parts.values()}
    split_tops = tops & set(SPLIT_FOLDERS)
    if split_tops and (tops - set(SPLIT_FOLDERS) or "train" not in {SPLIT_FOLDERS[t] for t in split_tops}):
        raise InvalidInput(f"'{field}': the zip mixes split folders ({', '.join(sorted(split_tops))}) with "
                           f"other folders or has no train/ folder; use <class>/<image> or "
                           f"train/<class>/<image> with test/<class>/<image>", field)
    if not split_tops:
        entries = [ImageEntry(m, p[0]) for m, p in parts.items()]
    else:
        loose = [m for m, p in parts.items() if len(p) < 3]
        if loose:
            raise InvalidInput(f"'{field}': images directly in a split folder must be in class folders "
                               f"(train/<class>/<image>); e.g. {loose[:3]}", field)
        entries = [ImageEntry(m, p[1], SPLIT_FOLDERS[p[0].lower()]) for m, p in parts.items()]
    return sorted(entries, key=lambda e: (e.split or "", e.class_name, e.member))


def _layout(entries: list[ImageEntry]) -> str:
    return "split_folders" if entries[0].split is not None else "class_folders"


def _class_names(entries: list[ImageEntry], field: str) -> list[str]:
    names = sorted({e.class_name for e in entries})
    for name in names:
        if len(name) > MAX_CLASS_NAME or not name.isprintable():
            raise InvalidInput(f"'{field}': class folder {name[:40]!r} is not a usable class name "
                               f"(1-{MAX_CLASS_NAME} printable characters)", field)
    if len(names) < 2:
        raise InvalidInput(f"'{field}': a dataset needs at least two classes (one folder per class); "
                           f"found {len(names)}: {names}", field)
    if entries[0].split is not None and not any(e.split == "test" for e in entries):
        raise InvalidInput(f"'{field}': the zip has train/ but no test/ or val/ folder", field)
    return names


def split_entries(archive: ClassFolderZip, test_fraction: float, seed: int) -> dict[str, list[ImageEntry]]:
    """The train and test images: kept as the zip has them, or split per class (seeded, stratified).

    Each class with at least two images gives at least one to each split.
    """
    if archive.layout == "split_folders":
        return {s: [e for e in archive.entries if e.split == s] for s in SPLITS}
    assert 0 < test_fraction < 1, test_fraction
    rng = np.random.default_rng(seed)
    out: dict[str, list[ImageEntry]] = {"train": [], "test": []}
    for name in archive.class_names:
        members = [e for e in archive.entries if e.class_name == name]
        n_test = min(max(round(len(members) * test_fraction), 1), len(members) - 1) if len(members) > 1 else 0
        test_idx = set(rng.permutation(len(members))[:n_test].tolist())
        for i, entry in enumerate(members):
            out["test" if i in test_idx else "train"].append(entry)
    return out


# --------------------------------------------------------------------------------------- decoding


def image_size_of(zf: zipfile.ZipFile, member: str) -> tuple[int, int] | None:
    """``(height, width)`` from the image's header (cheap: only its first bytes are inflated), or None."""
    try:
        with zf.open(member) as fh, Image.open(fh) as img:
            width, height = img.size
    except Exception:  # Pillow raises many types for what is not an image
        return None
    return height, width


def decode_member(zf: zipfile.ZipFile, member: str, max_pixels: int) -> np.ndarray:
    """Decode one zip member as an RGB uint8 image (EXIF orientation applied); InvalidInput if it is none."""
    return to_rgb_array(open_image(zf.read(member), member, max_pixels))


def fit_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize to ``(height, width)``: area when shrinking, bilinear when enlarging; unchanged when equal."""
    if image.shape[:2] == tuple(shape):
        return image
    shrink = shape[0] <= image.shape[0] and shape[1] <= image.shape[1]
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def common_shape(shapes: Iterable[tuple[int, int] | None], fallback: int) -> tuple[int, int]:
    """The one shape all images share, else a ``fallback`` square (the images are then resized)."""
    found: set[tuple[int, int]] = set()
    for shape in shapes:
        if shape is not None:
            found.add(shape)
            if len(found) > 1:  # no need to read the other headers
                break
    return next(iter(found)) if len(found) == 1 else (fallback, fallback)


# ----------------------------------------------------------------------------------------- HDF5 out


class Hdf5Writer:
    """Write ``X_<split>`` (N x H x W x 3 uint8, grown as images come) and ``y_<split>`` to one file.

    The file has the legacy API's layout plus the ``class_names`` attribute (JSON), as the reader expects.
    """

    def __init__(self, path: str | os.PathLike, class_names: list[str], shape: tuple[int, int],
                 attrs: dict[str, Any] | None = None):
        self.h5 = h5py.File(path, "w")
        self.h5.attrs["class_names"] = json.dumps(class_names)
        for key, value in (attrs or {}).items():
            self.h5.attrs[key] = json.dumps(value)
        self.counts = {s: 0 for s in SPLITS}
        for split in SPLITS:
            self.h5.create_dataset(f"X_{split}", (0, *shape, 3), np.uint8, maxshape=(None, *shape, 3),
                                   chunks=(1, *shape, 3))
            self.h5.create_dataset(f"y_{split}", (0,), np.int64, maxshape=(None,), chunks=(4096,))

    def append(self, split: str, image: np.ndarray, label: int) -> None:
        n = self.counts[split]
        images, labels = self.h5[f"X_{split}"], self.h5[f"y_{split}"]
        images.resize(n + 1, axis=0)
        labels.resize(n + 1, axis=0)
        images[n], labels[n] = image, label
        self.counts[split] = n + 1

    def close(self) -> None:
        self.h5.close()


@dataclass
class ImportReport:
    """What :func:`write_zip_as_hdf5` did: counts per split and class, and the images it could not read."""

    counts: dict[str, dict[str, int]]
    bad_images: list[str]
    shape: tuple[int, int]


def write_zip_as_hdf5(zip_path: str | os.PathLike, out_path: str | os.PathLike, archive: ClassFolderZip,
                      splits: dict[str, list[ImageEntry]], image_size: int | None = None,
                      max_pixels: int = 50_000_000, skip_bad_images: bool = False,
                      attrs: dict[str, Any] | None = None, free_bytes: int | None = None,
                      on_progress: Callable[[int, int], None] | None = None,
                      should_stop: Callable[[], bool] | None = None,
                      before_write: Callable[[int, tuple[int, int]], None] | None = None) -> ImportReport:
    """Decode the images of ``splits`` and write them to ``out_path`` (the caller publishes the file).

    Images keep their size when they all share one and ``image_size`` is None; otherwise every image is
    resized to an ``image_size`` square (224 by default). The output's size (:func:`hdf5_bytes`) is known
    before any image is decoded (with ``image_size``, before any is read at all) and checked first.

    Args:
        free_bytes: refuse output that would not fit in this much disk.
        before_write: called with ``(images, (height, width))`` once the output's size is known and
            before anything is written; it raises to refuse (a budget, a disk reservation).

    Raises:
        InvalidInput: images that do not decode (all named, field ``file``) unless ``skip_bad_images``;
            decoded pixels that would need more than ``free_bytes`` (field ``image_size``).
        Cancelled: ``should_stop()`` turned true.
    """
    total = sum(len(v) for v in splits.values())
    index = {name: i for i, name in enumerate(archive.class_names)}
    with open_zip(zip_path) as zf:
        shape = (image_size, image_size) if image_size else common_shape(_header_sizes(zf, splits, should_stop), 224)
        _check_space(hdf5_bytes(total, shape), free_bytes, shape)
        if before_write is not None:
            before_write(total, shape)
        bad: list[str] = []
        writer = Hdf5Writer(out_path, archive.class_names, shape, attrs)
        try:
            for done, (split, entry) in enumerate(_walk(splits), start=1):
                if should_stop is not None and should_stop():
                    raise Cancelled("the import was stopped")
                try:
                    image = decode_member(zf, entry.member, max_pixels)
                except InvalidInput:
                    bad.append(entry.member)
                else:
                    writer.append(split, fit_to(image, shape), index[entry.class_name])
                if on_progress is not None:
                    on_progress(done, total)
        finally:
            writer.close()
    refuse_bad_images(bad, skip_bad_images, total)
    return ImportReport(_counts(out_path, archive.class_names), bad, shape)


def _header_sizes(zf: zipfile.ZipFile, splits: dict[str, list[ImageEntry]],
                  should_stop: Callable[[], bool] | None) -> Iterator[tuple[int, int] | None]:
    for n, (_split, entry) in enumerate(_walk(splits)):
        if should_stop is not None and n % 256 == 0 and should_stop():  # headers are cheap: ask now and then
            raise Cancelled("the import was stopped")
        yield image_size_of(zf, entry.member)


def hdf5_bytes(images: int, shape: tuple[int, int]) -> int:
    """What :class:`Hdf5Writer` stores for ``images`` images of ``shape``: RGB pixels and int64 labels."""
    return images * (shape[0] * shape[1] * 3 + 8)


def _check_space(needed: int, free: int | None, shape: tuple[int, int]) -> None:
    # The HDF5 file holds decoded pixels: far more than the JPEGs of the zip.
    if free is not None and needed * 1.1 > free:
        raise InvalidInput(f"the images decoded at {shape[0]}x{shape[1]} need about {needed / 1e9:.1f} GB; only "
                           f"{free / 1e9:.1f} GB are free (choose a smaller image_size)", "image_size")


def _walk(splits: dict[str, list[ImageEntry]]) -> Iterator[tuple[str, ImageEntry]]:
    for split in SPLITS:
        for entry in splits[split]:
            yield split, entry


def refuse_bad_images(bad: list[str], skip: bool, total: int) -> None:
    """Refuse images that do not decode (all named, field ``file``) unless skipped and some are left."""
    if bad and (not skip or len(bad) == total):
        shown = ", ".join(bad[:50]) + (f" and {len(bad) - 50} more" if len(bad) > 50 else "")
        hint = "" if len(bad) == total else "; send skip_bad_images=true to import the others"
        raise InvalidInput(f"'file': {len(bad)} of {total} images do not decode: {shown}{hint}", "file")


def _counts(path: str | os.PathLike, class_names: list[str]) -> dict[str, dict[str, int]]:
    with open_hdf5(path) as h5:
        return {s: dict(zip(class_names, np.bincount(h5[f"y_{s}"][:], minlength=len(class_names)).tolist(),
                            strict=True)) for s in SPLITS}


def split_counts(path: str | os.PathLike, class_names: list[str]) -> dict[str, dict[str, int]]:
    """Images per split and class of an HDF5 dataset in the legacy API's layout (reads only the labels)."""
    return _counts(path, class_names)


# ------------------------------------------------------------------------------------------ zip out


def write_hdf5_as_zip(h5_path: str | os.PathLike, out_path: str | os.PathLike, class_names: list[str],
                      root: str, on_progress: Callable[[int, int], None] | None = None) -> int:
    """Write ``<root>/train|test/<class>/<index>.png`` for every image of an HDF5 dataset; returns the count.

    PNG is lossless, so importing the zip again gives the same pixels, labels and split (greyscale images,
    written as grey PNGs, come back as RGB: the zip importer decodes every image to three channels).
    """
    written = 0
    with open_hdf5(h5_path) as h5, zipfile.ZipFile(out_path, "w", zipfile.ZIP_STORED) as zf:
        total = sum(len(h5[f"y_{s}"]) for s in SPLITS if f"y_{s}" in h5)
        for split in SPLITS:
            if f"X_{split}" not in h5:
                continue
            images, labels = h5[f"X_{split}"], h5[f"y_{split}"][:]
            for i, label in enumerate(labels):
                zf.writestr(f"{root}/{split}/{class_names[int(label)]}/{i:06d}.png", _png(np.asarray(images[i])))
                written += 1
                if on_progress is not None:
                    on_progress(written, total)
    return written


def _png(image: np.ndarray) -> bytes:
    """One stored image as PNG: greyscale (H x W, or H x W x 1 as imported HDF5 keeps it) as an 8-bit grey PNG."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]  # Pillow has no mode for H x W x 1
    return encode_png(image)


def thumbnail_picks(labels: np.ndarray, class_names: list[str], per_class: int = 4,
                    seed: int = 0) -> list[dict[str, Any]]:
    """A few seeded row indices per class of one split, for thumbnails: ``[{"class", "index"}]``."""
    rng = np.random.default_rng(seed)
    picks = []
    for label, name in enumerate(class_names):
        rows = np.flatnonzero(labels == label)
        for index in sorted(rng.permutation(rows)[:per_class].tolist()):
            picks.append({"class": name, "index": int(index)})
    return picks


# ------------------------------------------------------------------------------ multi-label annotations

MAX_ANNOTATION_BYTES = 64 * 1024 * 1024
ID_COLUMNS = ("id", "id_name", "image", "image_id", "filename", "file_name", "file", "path", "name")
LIST_COLUMNS = ("labels", "label", "tags", "categories")


@dataclass(frozen=True)
class AnnotatedZip:
    """Images with multi-label annotations from one CSV or COCO JSON file in the same zip.

    Attributes:
        annotation_file: the member holding the annotations.
        items: ``(image member, labels)`` of every annotated image found in the zip.
        missing: annotation rows whose image is not in the zip.
        unannotated: images of the zip that no row mentions (left out).
    """

    annotation_file: str
    items: list[tuple[str, list[str]]]
    missing: list[str]
    unannotated: list[str]

    @property
    def labels(self) -> list[str]:
        return sorted({label for _, labels in self.items for label in labels})


def find_annotation_file(path: str | os.PathLike, suffixes: tuple[str, ...], limits: ZipLimits | None = None,
                         field: str = "file") -> str | None:
    """The one label file (ending in one of ``suffixes``) at the top of a zip (under wrapping folders), or None.

    The label files' endings are the dataset formats' (``engine.formats``): this module keeps no list of them.
    """
    limits = limits or ZipLimits()
    check_directory(path, limits, field)
    with open_zip(path, field) as zf:
        infos = safe_members(zf, limits, field)
    files = [i.filename for i in infos if not i.is_dir() and not _is_junk(PurePosixPath(i.filename).parts)]
    top = min((len(PurePosixPath(f).parts) for f in files), default=0)
    found = [f for f in files if len(PurePosixPath(f).parts) == top
             and PurePosixPath(f).suffix.lower() in suffixes]
    if len(found) > 1:
        raise InvalidInput(f"'{field}': the zip has {len(found)} annotation files at its top ({found[:5]}); "
                           f"send one ({', '.join(suffixes)})", field)
    return found[0] if found else None


def read_annotated_zip(path: str | os.PathLike, parse: Callable[[str, str], list[tuple[str, list[str]]]],
                       suffixes: tuple[str, ...], limits: ZipLimits | None = None,
                       field: str = "file") -> AnnotatedZip:
    """Read the label file of a zip with ``parse`` and match its rows to the zip's images (by path, name or stem).

    Args:
        parse: ``(text, field) -> [(image key, labels)]`` (:func:`parse_csv`, :func:`parse_coco`).
        suffixes: the endings of the label file looked for at the zip's top.

    Raises:
        InvalidInput: an unsafe zip, no or an unreadable label file, an ambiguous image name,
            or no row matching an image (all naming ``field``).
    """
    member = find_annotation_file(path, suffixes, limits, field)
    if member is None:
        raise InvalidInput(f"'{field}': the zip has no {' or '.join(suffixes)} annotation file at its top", field)
    with open_zip(path, field) as zf:
        info = zf.getinfo(member)
        if info.file_size > MAX_ANNOTATION_BYTES:
            raise InvalidInput(f"'{field}': {member} is larger than {MAX_ANNOTATION_BYTES // 2**20} MB", field)
        text = zf.read(member).decode("utf-8-sig", errors="replace")
        images = [i.filename for i in zf.infolist() if not i.is_dir()
                  and not _is_junk(PurePosixPath(i.filename).parts)
                  and PurePosixPath(i.filename).suffix.lower() in ARCHIVE_IMAGE_SUFFIXES]
    return _match(member, parse(text, field), images, field)


def parse_csv(text: str, field: str = "file") -> list[tuple[str, list[str]]]:
    """``(image key, labels)`` rows of a CSV: ``Id`` then one 0/1 column per label (this project's export),
    or an id column and a ``labels`` column of names separated by ``;``, ``|`` or spaces."""
    table = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if len(table) < 2 or len(table[0]) < 2:
        raise InvalidInput(f"'{field}': the CSV needs a header (an id column, then labels) and rows", field)
    header = [h.strip() for h in table[0]]
    if len(header) == 2 and header[1].lower() in LIST_COLUMNS:
        return [(row[0].strip(), [s for s in re.split(r"[;|\s]+", row[1].strip()) if s] if len(row) > 1 else [])
                for row in table[1:]]
    rows = []
    for number, row in enumerate(table[1:], start=2):
        cells = [c.strip() for c in row[1:]]
        if any(c not in ("0", "1", "") for c in cells):
            raise InvalidInput(f"'{field}': CSV line {number} has values other than 0/1 in the label columns "
                               f"(or use two columns: id, labels)", field)
        rows.append((row[0].strip(), [label for label, c in zip(header[1:], cells, strict=False) if c == "1"]))
    return rows


def parse_coco(text: str, field: str = "file") -> list[tuple[str, list[str]]]:
    """``(file_name, labels)`` per image of COCO JSON: the categories its annotations name (boxes ignored)."""
    try:
        coco = json.loads(text)
        names = {c["id"]: str(c["name"]) for c in coco["categories"]}
        labels: dict[Any, set[str]] = {img["id"]: set() for img in coco["images"]}
        for ann in coco.get("annotations", []):
            labels[ann["image_id"]].add(names[ann["category_id"]])
        return [(str(img["file_name"]), sorted(labels[img["id"]])) for img in coco["images"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"'{field}': not COCO JSON with images, categories and annotations "
                           f"({type(exc).__name__}: {exc})", field) from None


def _match(member: str, rows: list[tuple[str, list[str]]], images: list[str], field: str) -> AnnotatedZip:
    index: dict[str, set[str]] = {}
    for image in images:
        pure = PurePosixPath(image)
        for key in {image, pure.name, pure.stem, *("/".join(pure.parts[i:]) for i in range(len(pure.parts)))}:
            index.setdefault(key, set()).add(image)
    items, missing, used = [], [], set()
    for key, labels in rows:
        found = index.get(key.replace("\\", "/").lstrip("./"), set())
        if len(found) > 1:
            raise InvalidInput(f"'{field}': {key!r} matches several images ({sorted(found)[:3]}); "
                               f"use paths in the annotation file", field)
        if not found:
            missing.append(key)
            continue
        image = found.pop()
        used.add(image)
        items.append((image, labels))
    if not items:
        raise InvalidInput(f"'{field}': no row of {member} names an image of the zip (e.g. {missing[:3]})", field)
    return AnnotatedZip(member, items, missing, sorted(set(images) - used))
