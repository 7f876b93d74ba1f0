"""Curating the object library: the same cut saved once, objects moved to another class.

Saving and deleting are services/app/segment.py's; this module adds what the Objects and Segment pages need
on top, keeping the catalog's rule that no row ever points at a missing file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine.files import atomic_write_bytes
from services.app.segment import get_object, object_file, objects_dir, save_object, validate_class_name
from services.platform.config import Config
from services.storage.store import Store


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def same_cut(config: Config, store: Store, class_name: str, png: bytes, source: str | None) -> dict | None:
    """The object of ``class_name`` from ``source`` whose pixels are ``png`` exactly, if one is saved."""
    wanted = _digest(png)
    for row in store.list_objects(class_name=class_name, source=source, limit=None):
        try:
            if _digest(object_file(config, row).read_bytes()) == wanted:
                return row
        except OSError:
            continue
    return None


def save_once(config: Config, store: Store, class_name: str, png: bytes, **fields) -> tuple[dict, bool]:
    """Save a cut-out unless the very same cut of the same source is already in the class.

    Returns:
        ``(row, created)``: the new row and True, or the existing row and False.
    """
    class_name = validate_class_name(class_name, "class_name")
    existing = same_cut(config, store, class_name, png, fields.get("source"))
    if existing is not None:
        return existing, False
    return save_object(config, store, class_name, png, **fields), True


def move_object(config: Config, store: Store, object_id: str, class_name: str) -> dict:
    """File an object under another class: the file is copied, the row updated, then the old file removed."""
    row = get_object(store, object_id)
    class_name = validate_class_name(class_name, "class_name")
    if class_name == row["class_name"]:
        return row
    old = object_file(config, row)
    folder = objects_dir(config) / class_name
    assert folder.resolve().parent == objects_dir(config).resolve(), folder  # the name was validated above
    folder.mkdir(parents=True, exist_ok=True)
    new = folder / old.name
    atomic_write_bytes(new, old.read_bytes())
    store.update_object(object_id, class_name=class_name, path=Path(new).relative_to(config.data_dir).as_posix())
    old.unlink(missing_ok=True)
    return get_object(store, object_id)
