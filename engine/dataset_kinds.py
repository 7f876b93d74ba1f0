"""The kinds of training data a run may read, declared without torch (the web process checks requests with them).

:func:`engine.datasets.register_dataset` gives each declared kind its builder; a kind is declared here once,
with the :class:`~engine.datasets.DatasetSpec` fields it needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def is_image_entry(entry: os.DirEntry) -> bool:
    """Whether a folder entry is an image this studio reads: a regular file (never a link, a FIFO or a device,
    which could make a reader wait forever or read what lies outside the folder), not hidden, with an image
    suffix."""
    return (entry.is_file(follow_symlinks=False) and not entry.name.startswith(".")
            and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The images of a class folder (:func:`is_image_entry`), in name order."""
    with os.scandir(folder) as entries:
        return sorted(Path(entry.path) for entry in entries if is_image_entry(entry))


def class_folders(root: str | os.PathLike) -> list[str]:
    """The class folders of an image-folder dataset, in class order: real folders (a link to a folder elsewhere is
    no class), not hidden."""
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))


DATASET_KINDS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType({
    "custom": ("trainset_dir", "testset_dir"),  # class folders of images
    "hdf5": ("hdf5_path",),  # an HDF5 file with train and test splits
    "newdata": ("newdata_dir",),  # the annotation feature's multi-label images
})


def list_dataset_kinds() -> dict[str, tuple[str, ...]]:
    """Return each dataset kind with the spec fields it requires."""
    return dict(sorted(DATASET_KINDS.items()))
