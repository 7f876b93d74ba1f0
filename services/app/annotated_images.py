"""Where the annotation platform's images live, and the labelled ones as training items.

Below both ``services.app.annotation`` (uploads and labels) and ``services.app.suggestions`` (the head
retrained on the labels): each reads the labelled images through here, so neither imports the other's
caller.
"""

from __future__ import annotations

from pathlib import Path

from services.platform.config import Config
from services.storage.rows import Image as ImageRow
from services.storage.store import ImageQuery, Store


def newdata_dir(config: Config) -> Path:
    """Return the ``newdata`` folder of the configuration."""
    return config.path("newdata")


def image_file(config: Config, row: ImageRow) -> Path:
    """Return the stored file of a catalog row."""
    return config.path(row["path"])


def labelled_items(config: Config, store: Store) -> list[tuple[Path, list[str]]]:
    """``(image file, labels)`` of every labelled image of the catalog whose file is there, by id."""
    rows = store.list_images(ImageQuery(labelled=True, order="id", limit=None))
    items = [(image_file(config, row), list(row.labels)) for row in rows]
    return [(path, labels) for path, labels in items if path.is_file()]
