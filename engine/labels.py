"""Label sets, per-image annotations and the multi-label dataset kept under ``newdata/``.

Layout (all JSON, never pickle; every file is written to a temporary name and moved into place):

- ``newdata/labelset.json``: ``{"labels": ["sea", ...]}``; absent means :data:`DEFAULT_LABELS`.
- ``newdata/images/<id_name>.<ext>``: the uploaded image, exactly as uploaded.
- ``newdata/labels/<id_name>.json``: ``{"id_name", "labels", "labelled_by", "labelled_at"}``. In the platform
  these files are an export of its catalog, where an image's labels are kept; training and the transfer
  command line read them here.

``id_name`` is checked by :func:`validate_id_name` before it becomes part of any path.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from engine.exceptions import InvalidInput, StudioError
from engine.files import atomic_write_bytes

# The 34 labels of the legacy pipeline's pretrained ResNet18 (its select.pkl), in its order: the model's output
# columns follow this order, so it must not be sorted.
DEFAULT_LABELS: tuple[str, ...] = (
    "sea", "ground-other", "platform", "building-other", "branch", "grass", "hill", "fog", "snow",
    "leaves", "river", "road", "bush", "tree", "bridge", "flower", "railroad", "pavement", "mountain",
    "playingfield", "house", "boat", "fire hydrant", "person", "motorcycle", "stop sign", "bicycle",
    "bench", "traffic light", "bus", "parking meter", "train", "truck", "car",
)  # fmt: skip

MAX_ID_LENGTH = 128
MAX_LABEL_LENGTH = 64
LABELSET_FILE = "labelset.json"
IMAGES_DIR = "images"
LABELS_DIR = "labels"
# Extensions an image may be stored under, in the order find_image() looks for them.
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp", "gif")
# Pillow format name -> stored extension (MPO is the multi-picture JPEG some phones write).
_FORMAT_EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "TIFF": "tif",
    "BMP": "bmp",
    "GIF": "gif",
}
_ID_NAME = re.compile(r"[A-Za-z0-9_.-]+")

Item = TypeVar("Item")


# ---------------------------------------------------------------------------------------------- ids


def validate_id_name(value: Any, field: str = "id_name") -> str:
    """Check an image id before it becomes a file name.

    Args:
        value: the id as received (the legacy API's examples: ``"1"``, ``"a_1"``).
        field: the name reported in the error.

    Returns:
        The id, unchanged.

    Raises:
        InvalidInput: unless it is 1..128 letters, digits, ``_``, ``-`` or ``.`` and does not start with
            a dot (which also rules out ``.`` and ``..``, hidden files and our temporary files).
    """
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"'{field}' must be a non-empty string", field)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f"'{field}' is {len(value)} characters long; the limit is {MAX_ID_LENGTH}", field)
    if not _ID_NAME.fullmatch(value):
        raise InvalidInput(
            f"'{field}' may only contain letters, digits, '_', '-' and '.'; got {value[:40]!r}", field
        )
    if value.startswith("."):
        raise InvalidInput(f"'{field}' must not start with '.'; got {value!r}", field)
    return value


def normalize_extension(ext: str) -> str:
    """Return ``ext`` lower-cased without its dot, refusing extensions not in :data:`IMAGE_EXTENSIONS`."""
    clean = ext.lower().lstrip(".") if isinstance(ext, str) else ""
    if clean not in IMAGE_EXTENSIONS:
        raise InvalidInput(
            f"unsupported image extension {ext!r}; known: {', '.join(IMAGE_EXTENSIONS)}", "ext"
        )
    return clean


def extension_for_format(image_format: str | None) -> str:
    """Return the file extension for a Pillow format name (``"JPEG"`` -> ``"jpg"``).

    Raises:
        InvalidInput: for formats the platform does not store (field ``"file"``).
    """
    ext = _FORMAT_EXTENSIONS.get((image_format or "").upper())
    if ext is None:
        known = ", ".join(sorted(_FORMAT_EXTENSIONS))
        raise InvalidInput(f"images in format {image_format!r} are not accepted; known: {known}", "file")
    return ext


def image_path(newdata_dir: str | os.PathLike[str], id_name: str, ext: str) -> Path:
    """Return ``newdata/images/<id_name>.<ext>`` (id and extension validated)."""
    return Path(newdata_dir) / IMAGES_DIR / f"{validate_id_name(id_name)}.{normalize_extension(ext)}"


def annotation_path(newdata_dir: str | os.PathLike[str], id_name: str) -> Path:
    """Return ``newdata/labels/<id_name>.json`` (id validated)."""
    return Path(newdata_dir) / LABELS_DIR / f"{validate_id_name(id_name)}.json"


# ----------------------------------------------------------------------------------------- label set


def read_label_set(newdata_dir: str | os.PathLike[str]) -> list[str]:
    """Return the label set: ``newdata/labelset.json`` when present, else :data:`DEFAULT_LABELS`.

    Raises:
        StudioError: the file exists but is not a valid label set (it was edited by hand); falling
            back to the defaults would silently change what every label column means.
    """
    path = Path(newdata_dir) / LABELSET_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return list(DEFAULT_LABELS)
    except (OSError, ValueError) as exc:
        raise StudioError(f"{path} is not readable JSON: {exc}") from exc
    labels = raw.get("labels") if isinstance(raw, dict) else raw  # a bare list is accepted too
    try:
        return _check_label_list(labels)
    except InvalidInput as exc:
        raise StudioError(f"{path} is not a valid label set: {exc}") from exc


def write_label_set(
    newdata_dir: str | os.PathLike[str], labels: Sequence[str], in_use: set[str] | None = None
) -> list[str]:
    """Replace the label set, refusing to drop labels that images still carry.

    Args:
        newdata_dir: the ``newdata`` folder.
        labels: the new label set, in the order the model's outputs should follow.
        in_use: labels carried by annotations; None reads them from disk (:func:`labels_in_use`).

    Returns:
        The labels as stored (surrounding whitespace stripped).

    Raises:
        InvalidInput: (field ``"labels"``) for an empty set, duplicates, a bad label, or dropped labels
            still in use; the message names them.
    """
    new_labels = _check_label_list(labels)
    used = labels_in_use(newdata_dir) if in_use is None else set(in_use)
    dropped = sorted(used - set(new_labels))
    if dropped:
        names = ", ".join(repr(label) for label in dropped)
        raise InvalidInput(f"cannot drop labels still used by images: {names}", "labels")
    payload = json.dumps({"labels": new_labels}, ensure_ascii=False, indent=2) + "\n"
    atomic_write_bytes(Path(newdata_dir) / LABELSET_FILE, payload.encode("utf-8"))
    return new_labels


def _check_label_list(labels: Any, field: str = "labels") -> list[str]:
    """Validate a whole label set: a non-empty list of unique, valid labels."""
    if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
        raise InvalidInput(f"'{field}' must be a non-empty list of label names", field)
    clean = [_check_label(label, field) for label in labels]
    duplicates = sorted({label for label in clean if clean.count(label) > 1})
    if duplicates:
        raise InvalidInput(f"'{field}' has duplicate labels: {', '.join(map(repr, duplicates))}", field)
    return clean


def _check_label(label: Any, field: str) -> str:
    """Return one label stripped, or raise: 1..64 printable characters, no '/'."""
    text = label.strip() if isinstance(label, str) else None
    if not text or len(text) > MAX_LABEL_LENGTH or not text.isprintable() or "/" in text:
        raise InvalidInput(
            f"each label must be 1..{MAX_LABEL_LENGTH} printable characters without '/'; got {label!r}", field
        )
    return text


def validate_labels(labels: Any, label_set: Sequence[str], field: str = "labels") -> list[str]:
    """Check an image's labels against the label set.

    Args:
        labels: the labels chosen for one image (a list; an empty list means "none of these").
        label_set: the allowed labels, in order.
        field: the name reported in the error.

    Returns:
        The labels without duplicates, in label-set order.

    Raises:
        InvalidInput: for a non-list or unknown labels, naming each unknown one.
    """
    if isinstance(labels, str) or not isinstance(labels, Iterable):
        raise InvalidInput(f"'{field}' must be a list of label names", field)
    chosen = list(labels)
    known = set(label_set)
    unknown: list[Any] = []
    for label in chosen:
        if (not isinstance(label, str) or label not in known) and label not in unknown:
            unknown.append(label)
    if unknown:
        names = ", ".join(repr(label) for label in unknown)
        raise InvalidInput(f"unknown label(s) {names} in '{field}'; known: {', '.join(label_set)}", field)
    wanted = set(chosen)
    return [label for label in label_set if label in wanted]


# --------------------------------------------------------------------------------------- annotations


def write_annotation(
    newdata_dir: str | os.PathLike[str],
    id_name: str,
    labels: Any,
    label_set: Sequence[str],
    labelled_by: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Store an image's confirmed labels in ``newdata/labels/<id_name>.json`` (atomically).

    The image itself is not required to exist: the caller (the API) checks that and answers 404.

    Args:
        newdata_dir: the ``newdata`` folder.
        id_name: the image id.
        labels: the chosen labels (validated with :func:`validate_labels`).
        label_set: the current label set.
        labelled_by: the user name of the annotator, if known.
        now: the time to record (tests pass a fixed one); default: the current UTC time.

    Returns:
        The record as written: ``{"id_name", "labels", "labelled_by", "labelled_at"}``.
    """
    path = annotation_path(newdata_dir, id_name)
    if labelled_by is not None and not isinstance(labelled_by, str):
        raise InvalidInput("'labelled_by' must be a user name or None", "labelled_by")
    stamp = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    record = {
        "id_name": id_name,
        "labels": validate_labels(labels, label_set),
        "labelled_by": labelled_by,
        "labelled_at": stamp,
    }
    atomic_write_bytes(path, (json.dumps(record, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
    return record


def read_annotation(newdata_dir: str | os.PathLike[str], id_name: str) -> dict[str, Any] | None:
    """Return an image's annotation record, or None when it has not been labelled.

    Raises:
        StudioError: the file exists but is not a valid record (hand-edited); silently reading it as
            "unlabelled" would lose labels from the next training set.
    """
    path = annotation_path(newdata_dir, id_name)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StudioError(f"{path} is not readable JSON: {exc}") from exc
    labels = record.get("labels") if isinstance(record, dict) else None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise StudioError(f"{path} has no list of labels")
    return record


def labelled_ids(newdata_dir: str | os.PathLike[str]) -> list[str]:
    """Return the ids that have an annotation file, sorted."""
    folder = Path(newdata_dir) / LABELS_DIR
    if not folder.is_dir():
        return []
    # Temporary files start with '.' and end in '.tmp', so the pattern skips them.
    return sorted(path.stem for path in folder.glob("*.json") if _is_valid_id(path.stem))


def labelled_images(newdata_dir: str | os.PathLike[str]) -> list[tuple[Path, list[str]]]:
    """Return ``(image path, labels)`` for every image that has both a file and an annotation.

    Sorted by id (plain string order), so datasets built from it are reproducible.
    """
    items = []
    for id_name in labelled_ids(newdata_dir):
        path = find_image(newdata_dir, id_name)
        record = read_annotation(newdata_dir, id_name) if path is not None else None
        if path is not None and record is not None:
            items.append((path, list(record["labels"])))
    return items


def labels_in_use(newdata_dir: str | os.PathLike[str]) -> set[str]:
    """Return every label carried by at least one annotation file."""
    used: set[str] = set()
    for id_name in labelled_ids(newdata_dir):
        record = read_annotation(newdata_dir, id_name)
        used.update(record["labels"] if record else ())
    return used


def _is_valid_id(value: str) -> bool:
    """Tell whether a file stem is a valid id (other files in the folders are ignored)."""
    try:
        validate_id_name(value)
    except InvalidInput:
        return False
    return True


# -------------------------------------------------------------------------------------------- images


def save_image_atomic(
    newdata_dir: str | os.PathLike[str], id_name: str, data: bytes, ext: str, overwrite: bool = False
) -> Path:
    """Store uploaded image bytes as ``newdata/images/<id_name>.<ext>``.

    Args:
        newdata_dir: the ``newdata`` folder.
        id_name: the image id (validated).
        data: the bytes exactly as uploaded (EXIF kept).
        ext: the extension, e.g. from :func:`extension_for_format`.
        overwrite: replace an existing image with this id (under any extension).

    Returns:
        The path written.

    Raises:
        FileExistsError: an image with this id exists and ``overwrite`` is false.
    """
    path = image_path(newdata_dir, id_name, ext)
    existing = find_image(newdata_dir, id_name)
    if existing is not None and not overwrite:
        raise FileExistsError(f"image {id_name!r} already exists: {existing.name}")
    atomic_write_bytes(path, data, overwrite=overwrite)
    if existing is not None and existing != path:
        # Same id, other extension: remove it so find_image() has one answer.
        existing.unlink(missing_ok=True)
    return path


def find_image(newdata_dir: str | os.PathLike[str], id_name: str) -> Path | None:
    """Return the stored image of ``id_name`` (any extension of :data:`IMAGE_EXTENSIONS`), or None."""
    folder = Path(newdata_dir) / IMAGES_DIR
    validate_id_name(id_name)
    for ext in IMAGE_EXTENSIONS:
        # Exact names only: a glob on "<id>.*" would let id "a" match "a.b.png", the image of "a.b".
        for candidate in (folder / f"{id_name}.{ext}", folder / f"{id_name}.{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


# ------------------------------------------------------------------------------------------ datasets


def split_multilabel(
    items: Sequence[tuple[Item, Sequence[str]]],
    label_set: Sequence[str],
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[tuple[Item, Sequence[str]]], list[tuple[Item, Sequence[str]]]]:
    """Split labelled items into train and validation, keeping every label in both where possible.

    A greedy form of iterative stratification (Sechidis et al., 2011):

    1. Coverage: labels are visited from the rarest; each label with at least two items gets one in
       validation and one in train, choosing the free item that covers most labels still missing there.
       Coverage wins over the fraction, so validation may be larger than asked when many labels are
       rare. When every item of a label is already on one side, an item is moved across, or swapped
       with one from the other side, if no other label loses its cover. (Some sets cannot be covered,
       e.g. three items {A,B}, {A,C}, {B,C}; such a label stays on one side.)
    2. Fill: the other items, rarest label first, go where their rarest label is most under its
       proportional target, within the split sizes.

    Args:
        items: ``(anything, labels)`` pairs, e.g. from :func:`labelled_images`.
        label_set: the label set; labels outside it are ignored for stratification.
        val_fraction: share of items for validation, in ``[0, 1)``.
        seed: the same seed and items give the same split.

    Returns:
        ``(train, val)``: the items, each list in input order.
    """
    if not 0 <= val_fraction < 1:
        raise InvalidInput(f"'val_fraction' must be in [0, 1); got {val_fraction!r}", "val_fraction")
    state = _SplitState(items, label_set, val_fraction, seed)
    state.cover_labels()
    state.fill()
    train = [items[i] for i in sorted(i for i, side in state.side.items() if side == _TRAIN)]
    val = [items[i] for i in sorted(i for i, side in state.side.items() if side == _VAL)]
    return train, val


_TRAIN, _VAL = 0, 1


class _SplitState:
    """Book-keeping for :func:`split_multilabel`: which side each item is on, counts per label."""

    def __init__(
        self, items: Sequence[tuple[Any, Sequence[str]]], label_set: Sequence[str], fraction: float, seed: int
    ):
        known = {label: rank for rank, label in enumerate(label_set)}
        self.labels = [sorted({lab for lab in labels if lab in known}, key=known.get) for _, labels in items]
        self.order = list(range(len(items)))
        random.Random(seed).shuffle(self.order)  # ties are broken by this seeded order
        self.members: dict[str, list[int]] = {label: [] for label in label_set}
        for index in self.order:
            for label in self.labels[index]:
                self.members[label].append(index)
        self.rarity = sorted(
            (label for label in label_set if self.members[label]),
            key=lambda label: (len(self.members[label]), known[label]),
        )
        self.rank = {label: position for position, label in enumerate(self.rarity)}
        self.fraction = fraction
        self.n_val = _val_size(len(items), fraction)
        self.side: dict[int, int] = {}
        self.sizes = [0, 0]  # items on train, on val
        self.count = {label: [0, 0] for label in label_set}

    def place(self, index: int, side: int) -> None:
        """Put an item on a side (moving it if it was on the other one)."""
        old = self.side.get(index)
        for label in self.labels[index]:
            if old is not None:
                self.count[label][old] -= 1
            self.count[label][side] += 1
        if old is not None:
            self.sizes[old] -= 1
        self.sizes[side] += 1
        self.side[index] = side

    def cover_labels(self) -> None:
        """Step 1 of :func:`split_multilabel`: one item per side for each label with >= 2 items."""
        if self.n_val == 0:
            return
        for label in self.rarity:
            if len(self.members[label]) < 2:
                continue
            for side in (_VAL, _TRAIN):
                if self.count[label][side] == 0:
                    self._cover(label, side)

    def _cover(self, label: str, side: int) -> None:
        """Give ``label`` an item on ``side``: a free one if any, else move one across, else swap two."""
        free = [i for i in self.members[label] if i not in self.side]
        if free:
            self.place(max(free, key=lambda i: self._gain(i, side)), side)
            return
        if any(self._try_moves(label, [(i, side)]) for i in self.members[label]):
            return
        partners = [i for i in self.order if self.side.get(i) == side]
        for index in self.members[label]:
            if any(self._try_moves(label, [(index, side), (j, 1 - side)]) for j in partners):
                return

    def _gain(self, index: int, side: int) -> tuple[int, int]:
        """Rank a free item for ``side``: labels it would newly cover there, then fewest already covered.

        Spending an item whose other labels are already on ``side`` would waste it, since it could
        cover them on the other side instead. max() keeps the first of equals (the seeded order).
        """
        coverable = [lab for lab in self.labels[index] if len(self.members[lab]) > 1]
        missing = sum(1 for lab in coverable if self.count[lab][side] == 0)
        return missing, missing - len(coverable)

    def _try_moves(self, label: str, moves: list[tuple[int, int]]) -> bool:
        """Apply ``moves`` if they cover ``label`` without uncovering another label; else undo them."""
        affected = {lab for index, _ in moves for lab in self.labels[index]}
        covered = [lab for lab in affected if self._covered(lab)]
        previous = [(index, self.side[index]) for index, _ in moves]
        for index, side in moves:
            self.place(index, side)
        if self._covered(label) and all(self._covered(lab) for lab in covered):
            return True
        for index, side in reversed(previous):
            self.place(index, side)
        return False

    def _covered(self, label: str) -> bool:
        """Tell whether ``label`` has items on both sides."""
        return self.count[label][_TRAIN] > 0 and self.count[label][_VAL] > 0

    def fill(self) -> None:
        """Step 2 of :func:`split_multilabel`: place the remaining items by their rarest label."""
        free = [i for i in self.order if i not in self.side]
        free.sort(key=lambda i: min((self.rank[lab] for lab in self.labels[i]), default=len(self.rank)))
        for index in free:
            self.place(index, self._choose_side(index))

    def _choose_side(self, index: int) -> int:
        """Pick the side for one item: capacity first, then where its rarest label is most wanted."""
        n_train, n_val = self.sizes
        n_total = len(self.labels)
        if n_val >= self.n_val:
            return _TRAIN
        if n_train >= n_total - self.n_val:
            return _VAL
        if not self.labels[index]:
            return _VAL if n_val / self.n_val < n_train / (n_total - self.n_val) else _TRAIN
        label = min(self.labels[index], key=self.rank.__getitem__)
        total = len(self.members[label])
        val_need = total * self.fraction - self.count[label][_VAL]
        train_need = total * (1 - self.fraction) - self.count[label][_TRAIN]
        return _VAL if val_need > train_need else _TRAIN


def _val_size(n_items: int, fraction: float) -> int:
    """Return the validation size: ``round(n * fraction)``, at least 1 and at most n - 1 when n >= 2."""
    if fraction == 0 or n_items < 2:
        return 0
    return min(max(round(n_items * fraction), 1), n_items - 1)


def _item_id(item: Any) -> str:
    """Return the id of an item's first element: a path's stem (``1.jpg`` -> ``1``) or the text itself."""
    return item.stem if isinstance(item, Path) else str(item)


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    """A text cell that a spreadsheet shows as text: a leading ``'`` before what would start a formula."""
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


def export_csv(items: Iterable[tuple[Any, Sequence[str]]], label_set: Sequence[str]) -> str:
    """Return the labelled set as CSV: header ``Id`` then one 0/1 column per label, in label-set order.

    Args:
        items: ``(image path or id, labels)`` pairs, e.g. from :func:`labelled_images`.
        label_set: the label set (columns).

    Returns:
        The CSV text, ``\\n`` line endings, one row per item in the given order. A cell that starts with
        ``=``, ``+``, ``-`` or ``@`` is prefixed with ``'`` so spreadsheets show it as text.

    Raises:
        InvalidInput: an item carries a label outside the label set (named).
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    # Labels and ids come from users, and a cell such as =HYPERLINK(...) would run when the file is opened.
    writer.writerow(["Id", *(spreadsheet_safe(label) for label in label_set)])
    for item, labels in items:
        chosen = set(validate_labels(labels, label_set))
        writer.writerow([spreadsheet_safe(_item_id(item)), *(int(label in chosen) for label in label_set)])
    return out.getvalue()


def export_coco(items: Iterable[tuple[Any, Sequence[str]]], label_set: Sequence[str]) -> dict[str, Any]:
    """Return the labelled set as COCO-style JSON for image-level (multi-label classification) labels.

    COCO has no official classification format; this keeps COCO's three lists so COCO tools can read
    it: ``images`` (``id`` from 1, ``file_name``, ``id_name``, and ``width``/``height`` when the file can
    be opened), ``categories`` (``id`` from 1 in label-set order, ``name``) and ``annotations`` (``id``
    from 1, ``image_id``, ``category_id``), one per image and label, with no ``bbox``,
    ``segmentation`` or ``area`` because the labels describe whole images.

    Raises:
        InvalidInput: an item carries a label outside the label set (named).
    """
    category_ids = {label: number for number, label in enumerate(label_set, start=1)}
    images, annotations = [], []
    for image_id, (item, labels) in enumerate(items, start=1):
        images.append(_coco_image(image_id, item))
        for label in validate_labels(labels, label_set):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[label]}
            )
    return {
        "info": {"description": "image-level multi-label annotations (no boxes)"},
        "images": images,
        "categories": [{"id": number, "name": label} for label, number in category_ids.items()],
        "annotations": annotations,
    }


def _coco_image(image_id: int, item: Any) -> dict[str, Any]:
    """Return a COCO ``images`` entry, with the size read from the file header when there is a file."""
    entry: dict[str, Any] = {
        "id": image_id,
        "file_name": item.name if isinstance(item, Path) else str(item),
        "id_name": _item_id(item),
    }
    if isinstance(item, Path):
        with contextlib.suppress(OSError, ValueError, Image.DecompressionBombError), Image.open(item) as img:
            entry["width"], entry["height"] = img.size  # Image.open reads only the header
    return entry
