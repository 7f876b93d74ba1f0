"""The annotation platform: uploads, ``/imginfo``, labels, label sets and exports.

Shared by the API (``services/web/routes/annotate.py``) and the Annotate page, so both behave the same.
An image's catalog row is written after its file is in place, so a crash can leave a file without a row but
never a row without a file. The row's ``labels`` are the truth; ``newdata/labels/<id_name>.json`` is an
export derived from it (the training data and the transfer command line read it), written under the
catalog's write lock in the same transaction, and never read back here.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from engine import labels as labelsets
from engine.exceptions import Conflict, InvalidInput, NotFound
from engine.exif import ExifInfo, read_exif
from engine.images import encode_png, open_image, to_rgb_array
from services.app import suggestions
from services.app.annotated_images import labelled_items, newdata_dir
from services.app.rules import Actor, Forbidden, action, may
from services.platform.config import Config
from services.storage.rows import Image as ImageRow
from services.storage.store import ImageQuery, Store

log = logging.getLogger(__name__)

_NOT_ID = re.compile(r"[^A-Za-z0-9_.-]+")
# Columns of an image's public view (the row minus its storage path).
VIEW_COLUMNS = ("id_name", "width", "height", "uploaded_by", "uploaded_at", "exif_date", "gps", "latitude",
                "longitude", "altitude", "predict_tags", "labels", "labelled_by", "labelled_at")


class UnknownImage(NotFound):
    """No image has this id (the API answers 404)."""

    field = "id_name"


class ImageExists(Conflict):
    """An image with this id is already stored and overwriting was not asked for (the API answers 409)."""

    field = "id_name"


class NotYourImage(Forbidden):
    """An annotator tried to replace an image another user uploaded (the API answers 403)."""

    field = "id_name"



@dataclass(frozen=True)
class Inspection:
    """What an upload is, learnt before anything is written.

    Attributes:
        ext: the extension of the format Pillow detected (never the file name's).
        width: width after the EXIF orientation is applied.
        height: height after the EXIF orientation is applied.
        exif: the EXIF date and GPS position.
        predict_tags: labels the annotation model suggests, over its per-label thresholds ([] without one).
        predict_scores: that model's score of every label ({} without one).
    """

    ext: str
    width: int
    height: int
    exif: ExifInfo
    predict_tags: list[str] = field(default_factory=list)
    predict_scores: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- names


def default_id_name(filename: str) -> str:
    """Suggest an id for an uploaded file name: its stem with unusable characters replaced by ``_``.

    Args:
        filename: the name as the browser sent it (may hold a folder path or non-ASCII letters).

    Returns:
        A valid id (``"image"`` when nothing usable is left).
    """
    stem = Path(filename.replace("\\", "/")).stem
    clean = _NOT_ID.sub("_", stem).lstrip(".")[: labelsets.MAX_ID_LENGTH]
    return clean or "image"


# ---------------------------------------------------------------------------------------- uploads


def inspect_image(config: Config, store: Store, data: bytes, field: str = "file") -> Inspection:
    """Decode an upload, read its EXIF and ask the model for tags, without writing anything.

    Raises:
        InvalidInput: empty bytes, not an image (whatever its name says), or a format not stored.
        ImageTooLarge: more pixels than ``config.max_image_pixels``.
    """
    if not data:
        raise InvalidInput(f"'{field}' is empty: send the image's bytes", field)
    img = open_image(data, field, config.max_image_pixels)
    ext = labelsets.extension_for_format(_detected_format(data))
    found = _suggested_tags(config, store, img)
    return Inspection(ext, img.width, img.height, read_exif(data, config.max_image_pixels), found["tags"],
                      found["scores"])


def _detected_format(data: bytes) -> str | None:
    """Return Pillow's format name; open_image's EXIF-transposed copy no longer carries it."""
    with Image.open(io.BytesIO(data)) as img:  # reads the header only
        return img.format


def _suggested_tags(config: Config, store: Store, img: Image.Image) -> dict:
    """Ask the annotation model; a broken model must not cost the user an upload."""
    try:
        return suggestions.suggest(config, store, to_rgb_array(img))
    except Exception:  # noqa: BLE001 - suggestions are advisory; the log keeps the cause
        log.exception("tag suggestion failed; storing the upload without suggestions")
        return {"tags": [], "scores": {}}


@dataclass(frozen=True)
class Upload:
    """An image to store.

    Attributes:
        id_name: the image id.
        data: the file's bytes.
        overwrite: replace an image stored under the same id.
        inspection: a previous :func:`inspect_image` of ``data`` (the page has one already).
    """

    id_name: str
    data: bytes
    overwrite: bool = False
    inspection: Inspection | None = None


@action("images.upload")
def upload_image(actor: Actor, upload: Upload) -> ImageRow:
    """Store an upload as ``actor``'s image and catalog it (see :func:`store_upload`, which says what is refused)."""
    return store_upload(actor.config, actor.store, upload.id_name, upload.data, actor.username, upload.overwrite,
                        upload.inspection)


def store_upload(config: Config, store: Store, id_name: str, data: bytes, uploaded_by: str | None,
                 overwrite: bool = False, inspection: Inspection | None = None) -> ImageRow:
    """Store an uploaded image under ``id_name`` and catalog it.

    Overwriting replaces the image and clears its confirmed labels (they described the old pixels), so it
    goes back to the unlabelled queue.

    Args:
        config: the configuration (DATA_DIR, pixel limit).
        store: the catalog.
        id_name: the image id (validated before it becomes a file name).
        data: the file's bytes, stored exactly as uploaded (EXIF kept).
        uploaded_by: the uploader's user name; replacing an image another user uploaded needs a role of
            the rule ``images.replace`` (every door that stores images, the API, the Annotate page and the annotated-zip
            import, holds this rule because it lives here).
        overwrite: replace an image stored under the same id.
        inspection: a previous :func:`inspect_image` of ``data`` (the page has one already).

    Returns:
        The catalog row as written.

    Raises:
        InvalidInput: a bad id (field ``id_name``) or a bad file (field ``file``).
        ImageExists: the id is taken and ``overwrite`` is false.
        NotYourImage: ``overwrite`` of another user's image by an annotator.
    """
    id_name = labelsets.validate_id_name(id_name)
    if overwrite:
        check_may_replace(store, id_name, uploaded_by)
    folder = newdata_dir(config)
    if not overwrite and (labelsets.find_image(folder, id_name) or store.get_image(id_name)):
        raise ImageExists(f"an image with id_name '{id_name}' exists; send overwrite=1 to replace it")
    inspection = inspection or inspect_image(config, store, data)
    try:
        path = labelsets.save_image_atomic(folder, id_name, data, inspection.ext, overwrite)
    except FileExistsError:  # another upload took the id between the check and the write
        raise ImageExists(f"an image with id_name '{id_name}' exists; send overwrite=1 to replace it") from None
    row = _image_row(config, id_name, path, inspection, uploaded_by)
    # An overwrite replaces the whole row: its labels are gone with the old pixels, and so is their export.
    store.put_image(row, then=lambda: labelsets.annotation_path(folder, id_name).unlink(missing_ok=True))
    return row


def check_may_replace(store: Store, id_name: str, username: str | None) -> None:
    """Refuse to replace another user's image unless ``username``'s role may (``images.replace``).

    The role is read from the catalog, so a user demoted since their page opened is held to their new role.

    Raises:
        NotYourImage: naming ``id_name``.
    """
    existing = store.get_image(id_name)
    if existing is None or existing["uploaded_by"] == username:
        return
    user = store.get_user(username) if username is not None else None
    if not may("images.replace", user):
        raise NotYourImage(f"image '{id_name}' was uploaded by another user; an annotator may overwrite only "
                           "their own uploads")


def _image_row(config: Config, id_name: str, path: Path, inspection: Inspection,
               uploaded_by: str | None) -> ImageRow:
    exif = inspection.exif
    return ImageRow(id_name=id_name, path=str(path.relative_to(config.data_dir)), width=inspection.width,
                    height=inspection.height, uploaded_by=uploaded_by, uploaded_at=time.time(),
                    exif_date=exif.date, gps=exif.gps, latitude=exif.latitude, longitude=exif.longitude,
                    altitude=exif.altitude, predict_tags=list(inspection.predict_tags))


# ----------------------------------------------------------------------------------------- reading


def get_image(store: Store, id_name: str) -> ImageRow:
    """Return the catalog row of an image.

    Raises:
        InvalidInput: ``id_name`` is not a valid id.
        UnknownImage: no image has this id.
    """
    row = store.get_image(labelsets.validate_id_name(id_name))
    if row is None:
        raise UnknownImage(f"no image with id_name '{id_name}'")
    return row


def imginfo(store: Store, id_name: str) -> dict:
    """Return the legacy API's ``/imginfo`` answer plus confirmed ``labels`` and signed ``latitude``/``longitude``."""
    row = get_image(store, id_name)
    return {"image_id": row.id_name, "predict_tags": row.predict_tags or [], "data_information": row.exif_date,
            "GPS_information": row.gps, "labels": row.labels, "latitude": row.latitude, "longitude": row.longitude}


@action("images.read")
def read_image(actor: Actor, id_name: str) -> dict:
    """An image's information as the legacy ``/imginfo`` answers it (see :func:`imginfo`)."""
    return imginfo(actor.store, id_name)


def image_view(row: ImageRow) -> dict:
    """Return the public fields of a catalog row (everything but the storage path)."""
    return {key: getattr(row, key) for key in VIEW_COLUMNS}


def list_images(config: Config, store: Store, unlabelled: bool = False, label: str | None = None,
                uploaded_by: str | None = None, limit: int = 1000, oldest_first: bool = False,
                offset: int = 0) -> list[ImageRow]:
    """Return catalog rows, newest first (or oldest first), filtered and paged by the catalog.

    Args:
        config: the configuration (the label set lives under DATA_DIR).
        store: the catalog.
        unlabelled: only images nobody has labelled yet.
        label: only images whose confirmed labels include this one (it must be in the label set).
        uploaded_by: only images this user uploaded.
        limit: at most this many rows.
        oldest_first: order by upload time ascending (the labelling queue).
        offset: skip this many rows first (the next page).

    Raises:
        InvalidInput: ``label`` is not in the label set (field ``label``, the known labels listed).
    """
    if label is not None:
        labelsets.validate_labels([label], read_labels(config), field="label")
    return store.list_images(ImageQuery(uploaded_by=uploaded_by, labelled=False if unlabelled else None,
                                        label=label, order="oldest" if oldest_first else "newest",
                                        limit=limit, offset=offset))


@dataclass(frozen=True)
class ImagesQuery:
    """Which images to read (the arguments of :func:`list_images`)."""

    unlabelled: bool = False
    label: str | None = None
    uploaded_by: str | None = None
    limit: int = 1000
    oldest_first: bool = False
    offset: int = 0


@action("annotations.read")
def read_annotations(actor: Actor, query: ImagesQuery | str) -> list[ImageRow] | ImageRow:
    """The images a query selects (see :func:`list_images`), or one image's row (for its id).

    Raises:
        InvalidInput: a label outside the label set, or a bad id.
        UnknownImage: no image has this id.
    """
    if isinstance(query, str):
        return get_image(actor.store, query)
    return list_images(actor.config, actor.store, query.unlabelled, query.label, query.uploaded_by, query.limit,
                       query.oldest_first, query.offset)


def count_images(store: Store, unlabelled: bool = False, uploaded_by: str | None = None) -> int:
    """Return how many images there are (only those nobody has labelled yet, or one user's uploads)."""
    return store.count_images(ImageQuery(uploaded_by=uploaded_by, labelled=False if unlabelled else None))


# ---------------------------------------------------------------------------------------- labelling


def set_labels(config: Config, store: Store, id_name: str, labels: Sequence[Any], labelled_by: str | None) -> dict:
    """Confirm an image's labels in the catalog, and export them to ``newdata/labels/<id_name>.json``.

    An empty list is a decision too ("none of these labels"): the image leaves the unlabelled queue.
    The labels are checked against the label set and the export is written inside the catalog's write
    transaction, so a label-set edit cannot interleave and a failed export leaves the row unchanged.

    Returns:
        The image's public view after the change.

    Raises:
        InvalidInput: a bad id, or labels outside the label set (each named).
        UnknownImage: no image has this id.
    """
    get_image(store, id_name)
    if labelled_by is not None and not isinstance(labelled_by, str):
        raise InvalidInput("'labelled_by' must be a user name or None", "labelled_by")
    folder = newdata_dir(config)
    row = store.label_image(id_name, lambda: labelsets.validate_labels(labels, labelsets.read_label_set(folder)),
                            labelled_by, then=lambda image: export_labels(config, image))
    if row is None:  # deleted between the check and the write
        raise UnknownImage(f"no image with id_name '{id_name}'")
    suggestions.labels_saved(config, store)
    return image_view(row)


@action("annotations.save")
def save_labels(actor: Actor, id_name: str, labels: Sequence[str]) -> dict:
    """Confirm an image's labels as ``actor``'s decision (see :func:`set_labels`); the image's public view."""
    return set_labels(actor.config, actor.store, id_name, labels, actor.username)


def export_labels(config: Config, row: ImageRow) -> None:
    """Write an image's confirmed labels from its catalog row to ``newdata/labels/<id_name>.json``."""
    folder = newdata_dir(config)
    stamp = datetime.fromtimestamp(row.labelled_at, UTC)
    labelsets.write_annotation(folder, row.id_name, row.labels, row.labels, row.labelled_by, now=stamp)


def read_labels(config: Config) -> list[str]:
    """Return the current label set (the legacy API's 34 labels until an admin edits it)."""
    return labelsets.read_label_set(newdata_dir(config))


def label_set_view(config: Config, store: Store) -> dict:
    """Return ``{"labels": the label set, "in_use": those carried by some image, in set order}``."""
    labels = read_labels(config)
    used = store.labels_in_use()
    return {"labels": labels, "in_use": [label for label in labels if label in used]}


@action("labels.read")
def read_label_set(actor: Actor) -> dict:
    """The label set and the labels images carry (see :func:`label_set_view`)."""
    return label_set_view(actor.config, actor.store)


@action("labels.edit")
def edit_label_set(actor: Actor, labels: Sequence[str]) -> dict:
    """Replace the label set (see :func:`set_label_set`); the label set's view after the change."""
    return set_label_set(actor.config, actor.store, labels)


def set_label_set(config: Config, store: Store, labels: Sequence[str]) -> dict:
    """Replace the label set (who may is the rule of ``labels.edit``: :func:`edit_label_set`).

    Raises:
        InvalidInput: (field ``labels``) empty, duplicates, a bad name, or dropping labels still in use
            (named).
    """
    store.edit_label_set(lambda in_use: labelsets.write_label_set(newdata_dir(config), list(labels), in_use))
    return label_set_view(config, store)


# ------------------------------------------------------------------------------------------- export


ExportFormat = Literal["csv", "coco"]


@action("annotations.export")
def export_annotations(actor: Actor, fmt: ExportFormat) -> str:
    """The labelled set as a file's text: CSV (:func:`export_csv`) or indented COCO-style JSON (:func:`export_coco`)."""
    if fmt == "csv":
        return export_csv(actor.config, actor.store)
    return json.dumps(export_coco(actor.config, actor.store), indent=2)


def export_csv(config: Config, store: Store) -> str:
    """Return the labelled set as CSV: ``Id``, then one 0/1 column per label, rows sorted by id."""
    return labelsets.export_csv(labelled_items(config, store), read_labels(config))


def export_coco(config: Config, store: Store) -> dict:
    """Return the labelled set as COCO-style JSON (images, categories, one annotation per image label)."""
    return labelsets.export_coco(labelled_items(config, store), read_labels(config))


def thumbnail_png(data: bytes, config: Config, size: int = 256) -> bytes:
    """Return a PNG thumbnail (EXIF orientation applied), at most ``size`` pixels on its longer side."""
    img = open_image(data, "file", config.max_image_pixels)
    img.thumbnail((size, size))
    return encode_png(to_rgb_array(img))
