"""Curating the object library: objects moved to another class.

Saving (once per identical cut) and deleting are services/app/segment.py's; this module adds what the Objects
page needs on top, keeping the catalog's rule that no row ever points at a missing file.
"""

from __future__ import annotations

from pathlib import Path

from engine.files import atomic_write_bytes
from services.app.rules import Actor, action
from services.app.segment import get_object, object_file, objects_dir, validate_class_name
from services.platform.config import Config
from services.storage.store import Store


@action("objects.move")
def move(actor: Actor, object_id: str, class_name: str) -> dict:
    """File an object under another class (see :func:`move_object`); returns its row after the move.

    Raises:
        UnknownObject: no object has this id.
        InvalidInput: ``class_name`` is not a usable class name (field ``class_name``).
    """
    return move_object(actor.config, actor.store, object_id, class_name)


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
