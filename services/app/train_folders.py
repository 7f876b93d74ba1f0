"""What the pages offer as training data: HDF5 files in ``DATA_DIR/datasets`` and class-folder trees in DATA_DIR.

Cheap by design (a few entries per folder are looked at), and free of torch: the pages and the request's
checks (``services.app.train_request``) call it.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.dataset_kinds import IMAGE_SUFFIXES
from services.platform.config import Config
from services.storage.store import Store

HDF5_SUFFIXES = (".hdf5", ".h5")
# The product's own folders in DATA_DIR: none is a dataset a person put there, so none is ever offered or accepted.
STORE_FOLDERS = frozenset({"newdata", "objects", "checkpoints", "datasets", "bgs", "redis", "logs", "uploads",
                           "exports"})


def available_hdf5(config: Config, store: Store | None = None) -> list[str]:
    """HDF5 dataset files, relative to ``DATA_DIR/datasets``: the folder's and the datasets catalog's."""
    base = config.path("datasets")
    names = {p.name for p in base.glob("*") if p.suffix.lower() in HDF5_SUFFIXES and p.is_file()}
    for row in (store.list_datasets() if store is not None else ()):
        path = config.path(row["path"]).resolve()
        if path.is_file() and path.is_relative_to(base.resolve()):
            names.add(path.relative_to(base.resolve()).as_posix())
    return sorted(names)


def image_folder_candidates(config: Config, depth: int = 2, limit: int = 200) -> list[str]:
    """Folders under DATA_DIR laid out as class folders of images (``<dir>/<class>/*.png``)."""
    found: list[str] = []
    frontier = [config.data_dir]
    for _ in range(depth):
        frontier = [c for d in frontier for c in _subdirs(d) if _within(config, c) and not store_folder(config, c)]
        frontier = frontier[:limit]
        found += [d.relative_to(config.data_dir).as_posix() for d in frontier if _holds_class_folders(d)]
    return sorted(found)


def _within(config: Config, path: Path) -> bool:
    """Whether ``path``, links followed, stays inside DATA_DIR (a link may lead anywhere)."""
    return path.resolve().is_relative_to(config.data_dir.resolve())


def store_folder(config: Config, path: Path) -> bool:
    """Whether ``path`` is in one of the product's own folders (or a dot folder) of DATA_DIR."""
    parts = path.resolve().relative_to(config.data_dir.resolve()).parts
    return bool(parts) and (parts[0] in STORE_FOLDERS or any(p.startswith(".") for p in parts))


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    except OSError:
        return []


def _holds_class_folders(folder: Path) -> bool:
    # Looking at a few files per class is enough to tell; big trees must not slow the page down.
    for sub in _subdirs(folder)[:50]:
        with os.scandir(sub) as entries:
            for _, entry in zip(range(20), entries, strict=False):
                if entry.name.lower().endswith(IMAGE_SUFFIXES):
                    return True
    return False
