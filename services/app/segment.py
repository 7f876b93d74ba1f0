"""GrabCut cut-outs and the object library: the legacy API's ``/api/v1/segment`` and the Segment page.

Both doors take the one action :func:`segment`: the same request gives the same cut-out and the same
saved object. A request with strokes refines the user's last cut of the same photo and box when its
strokes only add to that cut's (same iterations); the very same request again gives that very cut again
(nothing is cut twice), and an identical cut of the same source is saved once.

A cut-out is an RGBA PNG under ``DATA_DIR/objects/<class>/<object_id>.png`` with a row in the catalog's
``objects`` table. The file is written under a temporary name and moved into place before the row is
added, and a deletion removes the row before the file, so a row never points at a missing file.
Generation (``services/app/generate.py``) reads the library through :func:`object_paths`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import re
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Self

import cv2
import numpy as np
import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from engine.exceptions import InvalidInput, NotFound
from engine.files import atomic_write_bytes
from engine.images import decode_image
from engine.segmentation import (
    DEFAULT_ITERATIONS,
    DEFAULT_STROKE_WIDTH,
    MAX_ITERATIONS,
    MAX_STROKE_WIDTH,
    Segmentation,
    grabcut,
    make_cutout,
    refine,
)
from services.app.rules import Actor, action
from services.jobs.runtime import redis_connection
from services.platform.config import Config
from services.storage.rows import CatalogObject
from services.storage.store import Store

log = logging.getLogger(__name__)

MAX_CLASS_NAME = 64
# Letters and digits of any script, then also '_', '-', '.' and inner spaces: no '/', '\\', ':' or '..' can
# reach a path, and names survive every file system and HDF5 attribute.
_CLASS_NAME = re.compile(r"^[^\W_](?:[\w .-]*[\w-])?$")
CHECKER_CELL = 8
OUTLINE_RGB = (255, 0, 255)  # magenta: visible on skin, sky, foliage and the grey checkerboard
# A cut is kept this long for strokes to refine: an editing session, not an archive.
LAST_CUT_TTL_S = 15 * 60
_LAST_CUT_KEY = "segment:last-cut:{user}:{digest}"
# Decoded request images, newest last: a stroke re-sends the photo it refines, and decoding a 3 MP JPEG
# again costs 15-40 ms of a stroke's budget. At most two photos and 72 MB (two 12 MP ones; a bigger photo
# is decoded again for each stroke), each for LAST_CUT_TTL_S at most: the cache never holds the API's
# image budget hostage.
_DECODED_KEPT = 2
_DECODED_BYTES = 72 * 2**20
_decoded: OrderedDict[str, tuple[float, np.ndarray]] = OrderedDict()
_decoded_lock = threading.Lock()
# zlib level 1 and one fixed filter: 0.13 s for a 0.8 MP cut-out, where Pillow's defaults (level 6,
# a filter chosen per row) take 0.8 s for 15 % fewer bytes
_PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]

Number = Annotated[float, Field(allow_inf_nan=False)]
Point = tuple[Number, Number]
Polyline = Annotated[list[Point], Field(min_length=1, max_length=10_000)]
Strokes = Annotated[list[Polyline], Field(max_length=200)]
# Drawing strokes costs about points x width; this allows e.g. 20,000 points at width 100.
MAX_STROKE_WORK = 2_000_000


class UnknownObject(NotFound):
    """No object has this id (the API answers 404)."""

    field = "object_id"


# ------------------------------------------------------------------------------------- validation


def validate_class_name(name: object, field: str = "ean") -> str:
    """Return a class label that is safe as a folder name, or raise naming ``field``.

    Args:
        name: the label as sent (the legacy API calls it ``ean``).
        field: the request field to name in the error.

    Raises:
        InvalidInput: not a string, empty, too long, or holding a character outside letters, digits,
            ``_``, ``-``, ``.`` and inner spaces (so ``../x`` or ``a/b`` never become paths).
    """
    if not isinstance(name, str):
        raise InvalidInput(f"'{field}' must be a string", field)
    if not 1 <= len(name) <= MAX_CLASS_NAME:
        raise InvalidInput(f"'{field}' must have 1-{MAX_CLASS_NAME} characters, got {len(name)}", field)
    if not _CLASS_NAME.match(name) or ".." in name:
        raise InvalidInput(f"'{field}' may hold only letters, digits, '_', '-', '.' and inner spaces, must start "
                           f"with a letter or digit and must not hold '..'; got {name!r}", field)
    return name


class CutRequest(BaseModel):
    """A cut-out asked for: a photo, a box and optional strokes. Without a class nothing is saved (the
    Segment page's "Run GrabCut"); :class:`SegmentBody` adds the class and saves."""

    model_config = ConfigDict(extra="forbid")

    x1: Number = Field(description="left edge of the box, image pixels")
    y1: Number = Field(description="top edge of the box, image pixels")
    x2: Number = Field(description="right edge of the box (exclusive), greater than x1")
    y2: Number = Field(description="bottom edge of the box (exclusive), greater than y1")
    image: str = Field(description="base64 image, with or without a data:image/...;base64, prefix")
    iterations: int = Field(DEFAULT_ITERATIONS, ge=1, le=MAX_ITERATIONS)
    fg_strokes: Strokes | None = Field(None, description="polylines of [x, y] points that are the object")
    bg_strokes: Strokes | None = Field(None, description="polylines of [x, y] points that are background")
    stroke_width: int = Field(DEFAULT_STROKE_WIDTH, ge=1, le=MAX_STROKE_WIDTH,
                              description="stroke thickness in image pixels")

    @field_validator("stroke_width")
    @classmethod
    def _stroke_budget(cls, value: int, info: ValidationInfo) -> int:
        points = sum(len(line) for key in ("fg_strokes", "bg_strokes") for line in info.data.get(key) or ())
        if points * value > MAX_STROKE_WORK:
            raise ValueError(f"{points} stroke points at width {value} exceed the budget of {MAX_STROKE_WORK:,} "
                             "(points x width); send fewer points or a thinner stroke")
        return value

    @classmethod
    def of_photo(cls, data: bytes, box: Sequence[float], fg=None, bg=None, **fields) -> Self:
        """The request for a photo's bytes (as the Segment page sends it): base64 image, box and strokes.

        Raises:
            pydantic.ValidationError: a field out of range (the page words it with ``page_message``).
        """
        x1, y1, x2, y2 = box
        image = base64.b64encode(data).decode("ascii")
        return cls.model_validate({"x1": x1, "y1": y1, "x2": x2, "y2": y2, "image": image, "fg_strokes": fg or None,
                                   "bg_strokes": bg or None, **fields})

    def box(self) -> tuple[int, int, int, int]:
        """The box in whole pixels, grown outwards when fractional (a drawn box never loses the object's edge)."""
        return math.floor(self.x1), math.floor(self.y1), math.ceil(self.x2), math.ceil(self.y2)


class SegmentBody(CutRequest):
    """The legacy API's ``/api/v1/segment`` body; numbers may arrive as strings (``"37"``)."""

    ean: str = Field(description="class label of the object (letters, digits, _ - . and spaces)",
                     max_length=MAX_CLASS_NAME)
    source: str | None = Field(None, max_length=200, description="where the image came from (a file name)")

    @field_validator("ean")
    @classmethod
    def _class_name(cls, value: str) -> str:
        return validate_class_name(value, "ean")


@dataclass(frozen=True)
class CutMade:
    """How a cut was asked for, kept with it: the iterations, the stroke width and a digest of each stroke."""

    iterations: int
    stroke_width: int
    fg: tuple[str, ...]
    bg: tuple[str, ...]

    @classmethod
    def of(cls, req: CutRequest) -> CutMade:
        return cls(req.iterations, req.stroke_width, _stroke_digests(req.fg_strokes), _stroke_digests(req.bg_strokes))

    def grown_into(self, later: CutMade) -> bool:
        """Whether ``later`` only adds strokes to these, with the same iterations (so it may refine this cut)."""
        adds = len(later.fg) + len(later.bg) > len(self.fg) + len(self.bg)
        return (adds and later.iterations == self.iterations and later.fg[:len(self.fg)] == self.fg
                and later.bg[:len(self.bg)] == self.bg)


def _stroke_digests(strokes: Sequence | None) -> tuple[str, ...]:
    return tuple(hashlib.blake2b(np.asarray(line, np.float64).tobytes(), digest_size=8).hexdigest()
                 for line in strokes or ())


@dataclass(frozen=True)
class Cut:
    """What :func:`segment` did: the cut-out, how it was made, and the object it is saved as (if asked).

    Attributes:
        result: the mask, cut-out, bbox and colour models.
        how: ``"cut"`` from scratch, ``"refined"`` (strokes applied to the last cut) or ``"kept"`` (the
            same request as the last cut: that cut again).
        png: the saved cut-out as PNG (None when nothing was saved).
        row: the object's catalog row (None when nothing was saved).
        created: False when the very same cut of the same source was already saved (``row`` is that one).
    """

    result: Segmentation
    how: Literal["cut", "refined", "kept"]
    png: bytes | None = None
    row: dict | None = None
    created: bool = False

    def answer(self) -> dict:
        """The legacy API's response fields: ``output_image`` (base64 PNG), ``object_id``, ``ean``, ``bbox``."""
        assert self.png is not None and self.row is not None, "only a saved cut has the legacy answer"
        return {"output_image": base64.b64encode(self.png).decode("ascii"), "object_id": self.row["id"],
                "ean": self.row["class_name"], "bbox": list(self.result.bbox)}


# ------------------------------------------------------------------------------------ segmentation


def decode(config: Config, data: str | bytes, field: str = "image") -> np.ndarray:
    """Decode a request image (base64 or bytes) under the configured pixel limit into RGB uint8."""
    return decode_image(data, field, config.max_image_pixels, config.image_budget_mb * 2**20)


def decode_kept(config: Config, data: str, digest: str) -> np.ndarray:
    """:func:`decode`, reusing the pixels of the last few images (by content digest); read-only."""
    now = time.monotonic()
    with _decoded_lock:
        for key in [k for k, (kept_at, _) in _decoded.items() if now - kept_at > LAST_CUT_TTL_S]:
            del _decoded[key]
        if digest in _decoded:
            _decoded.move_to_end(digest)
            return _decoded[digest][1]
    image = decode(config, data)
    image.flags.writeable = False  # shared by requests: nobody may draw on it
    if image.nbytes > _DECODED_BYTES:
        return image
    with _decoded_lock:
        _decoded[digest] = (now, image)
        while len(_decoded) > _DECODED_KEPT or sum(kept.nbytes for _, kept in _decoded.values()) > _DECODED_BYTES:
            _decoded.popitem(last=False)
    return image


def cut_out(image: np.ndarray, box: Sequence[float], iterations: int = DEFAULT_ITERATIONS,
            fg_strokes=None, bg_strokes=None, stroke_width: int = DEFAULT_STROKE_WIDTH) -> Segmentation:
    """Run the engine's GrabCut; bad boxes and strokes raise InvalidInput naming x1..y2 or the strokes."""
    return grabcut(image, box, iterations, fg_strokes, bg_strokes, stroke_width)


def refine_cut(image: np.ndarray, previous: Segmentation, box: Sequence[float], fg_strokes=None, bg_strokes=None,
               stroke_width: int = 8) -> Segmentation:
    """Apply strokes to ``previous`` (a cut of this image and box) instead of cutting from scratch."""
    return refine(image, previous, box, fg_strokes, bg_strokes, stroke_width)


def image_digest(image: str) -> str:
    """The digest a request's image is known by (its decoded pixels and its last cut are kept under it)."""
    return hashlib.sha256(image.encode()).hexdigest()


@action("objects.segment")
def segment(actor: Actor, req: CutRequest) -> Cut:
    """Cut out the object inside the box and, for a :class:`SegmentBody`, save it as an object of its class.

    The API's ``POST /api/v1/segment`` and the Segment page both call this. With strokes that only add
    to those of the user's last cut of this photo and box (same iterations, within ``LAST_CUT_TTL_S``),
    the strokes refine that cut (its mask and colour models) instead of starting over; the same request
    as that cut gives that cut again. The very same cut of the same source is saved once.

    Raises:
        InvalidInput: a bad image, box or strokes (naming the field), or nothing found inside the box.
    """
    digest = image_digest(req.image)
    image = decode_kept(actor.config, req.image, digest)
    result, how = _cut_or_refine(actor, image, req, digest)
    if how != "kept":
        remember_cut(actor.config, actor.username, digest, req.box(), result, CutMade.of(req))
    if not isinstance(req, SegmentBody):
        return Cut(result, how)
    return _saved(actor, req, Cut(result, how), digest)


def _saved(actor: Actor, body: SegmentBody, cut: Cut, digest: str) -> Cut:
    """``cut`` saved in class ``body.ean`` (once: an identical cut of the same source is that object)."""
    png, cutout = encode_cutout_png(cut.result.cutout), cut.result.cutout
    row, created = save_once(actor.config, actor.store, body.ean, png, source=body.source or f"sha256:{digest[:16]}",
                             bbox=cut.result.bbox, created_by=actor.username, size=(cutout.shape[1], cutout.shape[0]))
    return Cut(cut.result, cut.how, png, row, created)


def _cut_or_refine(actor: Actor, image: np.ndarray, req: CutRequest, digest: str) -> tuple[Segmentation, str]:
    made = CutMade.of(req)
    last = _recall(actor.config, actor.username, digest, req.box(), image.shape[:2])
    if last is not None and last[1] == made:
        cutout, bbox = make_cutout(image, last[0].mask)
        return Segmentation(last[0].mask, cutout, bbox, last[0].models), "kept"
    if last is not None and last[1] is not None and last[1].grown_into(made):
        return refine(image, last[0], req.box(), req.fg_strokes, req.bg_strokes, req.stroke_width), "refined"
    return cut_out(image, req.box(), req.iterations, req.fg_strokes, req.bg_strokes, req.stroke_width), "cut"


def encode_cutout_png(cutout: np.ndarray) -> bytes:
    """The RGBA cut-out as PNG, compressed for speed (it is answered at once and stored once)."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(cutout, cv2.COLOR_RGBA2BGRA), _PNG_OPTIONS)
    assert ok, "OpenCV could not encode an RGBA uint8 array as PNG"
    return png.tobytes()


# ------------------------------------------------------------------------ the last cut, for strokes


def remember_cut(config: Config, username: str | None, digest: str, box: Sequence[int], cut: Segmentation,
                 made: CutMade | None = None) -> None:
    """Keep a cut's mask and colour models (and how it was asked for) in Redis for a while; a Redis failure
    only loses refinement."""
    if cut.models is None:
        return
    header = {"box": list(box), "shape": list(cut.mask.shape), "models": [m.ravel().tolist() for m in cut.models],
              "made": None if made is None else [made.iterations, made.stroke_width, made.fg, made.bg]}
    blob = json.dumps(header).encode() + b"\n" + zlib.compress(np.packbits(cut.mask).tobytes(), 1)
    try:
        redis_connection(config.effective_redis_url).set(_last_cut_key(username, digest), blob, ex=LAST_CUT_TTL_S)
    except redis.RedisError as exc:
        log.warning("could not keep the last cut for refinement: %s", exc)


def recall_cut(config: Config, username: str | None, digest: str, box: Sequence[int],
               shape: tuple[int, int]) -> Segmentation | None:
    """The cut :func:`remember_cut` kept for this user, image and box, or None (gone, other box, no Redis)."""
    last = _recall(config, username, digest, box, shape)
    return None if last is None else last[0]


def _recall(config: Config, username: str | None, digest: str, box: Sequence[int],
            shape: tuple[int, int]) -> tuple[Segmentation, CutMade | None] | None:
    try:
        blob = redis_connection(config.effective_redis_url).get(_last_cut_key(username, digest))
    except redis.RedisError as exc:
        log.warning("could not read the last cut, cutting again: %s", exc)
        return None
    if blob is None:
        return None
    head, _, packed = blob.partition(b"\n")
    header = json.loads(head)
    if header["box"] != list(box) or tuple(header["shape"]) != tuple(shape):
        return None
    bits = np.unpackbits(np.frombuffer(zlib.decompress(packed), np.uint8), count=shape[0] * shape[1])
    models = tuple(np.asarray(m, np.float64)[None, :] for m in header["models"])
    made = header.get("made")
    made = None if made is None else CutMade(made[0], made[1], tuple(made[2]), tuple(made[3]))
    return Segmentation(mask=bits.reshape(shape).astype(bool), cutout=np.zeros((0, 0, 4), np.uint8),
                        bbox=(0, 0, 0, 0), models=models), made


def _last_cut_key(username: str | None, digest: str) -> str:
    return _LAST_CUT_KEY.format(user=username or "-", digest=digest)


# ---------------------------------------------------------------------------------- the object library


def objects_dir(config: Config) -> Path:
    return config.path("objects")


def object_file(config: Config, row: dict) -> Path:
    """The PNG of a catalog row (rows keep paths relative to DATA_DIR, so the folder can move)."""
    return config.path(row["path"])


def save_object(config: Config, store: Store, class_name: str, png: bytes, *, source: str | None,
                bbox: Sequence[int] | None, created_by: str | None, size: tuple[int, int]) -> dict:
    """Write an RGBA PNG into the library under ``class_name`` and catalog it.

    Args:
        config: where DATA_DIR is.
        store: the catalog.
        class_name: validated here again (the page calls this directly).
        png: the encoded cut-out.
        source: the source image (a file name or a content digest).
        bbox: the cut-out's box in the source image.
        created_by: the user's name.
        size: ``(width, height)`` of the cut-out.

    Returns:
        The catalog row as written.
    """
    class_name = validate_class_name(class_name, "ean")
    object_id = uuid.uuid4().hex
    folder = objects_dir(config) / class_name
    assert folder.resolve().parent == objects_dir(config).resolve(), folder  # the name was validated above
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{object_id}.png"
    atomic_write_bytes(final, png)
    row = {"id": object_id, "class_name": class_name, "path": str(final.relative_to(config.data_dir)),
           "source": source, "bbox": list(bbox) if bbox is not None else None, "width": int(size[0]),
           "height": int(size[1]), "created_by": created_by, "created_at": time.time()}
    store.add_object(CatalogObject(**row))
    return row


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
    class_name = validate_class_name(class_name, "ean")
    existing = same_cut(config, store, class_name, png, fields.get("source"))
    if existing is not None:
        return existing, False
    return save_object(config, store, class_name, png, **fields), True


def get_object(store: Store, object_id: str) -> dict:
    row = store.get_object(object_id)
    if row is None:
        raise UnknownObject(f"no object '{object_id}'")
    return row


def list_objects(store: Store, class_name: str | None = None, limit: int = 10_000) -> list[dict]:
    """Objects, newest first, optionally of one class."""
    return store.list_objects(class_name=class_name, limit=limit)


class ObjectsQuery(BaseModel):
    """Which objects to read: one class (or all), the newest ``limit``."""

    class_name: str | None = Field(None, max_length=MAX_CLASS_NAME, description="only this class")
    limit: int = Field(1000, ge=1, le=100_000)


@action("objects.read")
def read_objects(actor: Actor, query: ObjectsQuery | str) -> list[dict] | dict:
    """The library's objects, newest first (for a query), or one object's catalog row (for its id).

    Raises:
        UnknownObject: no object has this id.
    """
    if isinstance(query, str):
        return get_object(actor.store, query)
    return list_objects(actor.store, query.class_name, query.limit)


@action("objects.delete")
def remove_object(actor: Actor, object_id: str) -> dict:
    """Remove an object from the library; returns its row as it was (see :func:`delete_object`)."""
    return delete_object(actor.config, actor.store, object_id)


def delete_object(config: Config, store: Store, object_id: str) -> dict:
    """Remove an object: the row first, then the file, so no row is ever left without its file."""
    row = get_object(store, object_id)
    store.delete_object(object_id)
    object_file(config, row).unlink(missing_ok=True)
    return row


def object_view(row: dict) -> dict:
    """The public view of an object row (no storage path) with the URL of its image."""
    keys = ("id", "class_name", "source", "bbox", "width", "height", "created_by", "created_at")
    return {**{k: row[k] for k in keys}, "image_url": f"/api/v1/objects/{row['id']}/image"}


def class_counts(store: Store) -> dict[str, int]:
    """Number of objects per class, sorted by class name."""
    return store.object_class_counts()


def object_paths(config: Config, store: Store, classes: Sequence[str] | None = None) -> dict[str, list[Path]]:
    """Class name -> the PNG files of its objects, for generation (all classes when ``classes`` is None).

    Raises:
        InvalidInput: the library is empty (field ``classes``), or a chosen class is unknown or has no
            object whose file exists (the known classes are listed).
    """
    rows = [r for r in list_objects(store, limit=1_000_000) if object_file(config, r).is_file()]
    library: dict[str, list[Path]] = {}
    for row in sorted(rows, key=lambda r: (r["class_name"], r["created_at"], r["id"])):
        library.setdefault(row["class_name"], []).append(object_file(config, row))
    if not library:
        raise InvalidInput("the object library is empty: cut out objects first (POST /api/v1/segment)", "classes")
    if classes is None:
        return library
    if not classes:
        raise InvalidInput(f"'classes' must name at least one class; known: {', '.join(library)}", "classes")
    unknown = [c for c in classes if c not in library]
    if unknown:
        raise InvalidInput(f"no objects of class {', '.join(map(repr, unknown))}; known: {', '.join(library)}",
                           "classes")
    return {c: library[c] for c in dict.fromkeys(classes)}


# ------------------------------------------------------------------------------------------ previews


def checkerboard(height: int, width: int, cell: int = CHECKER_CELL) -> np.ndarray:
    """The usual light/dark grey checkerboard that shows transparency."""
    ys, xs = np.indices((height, width))
    light = ((ys // cell + xs // cell) % 2 == 0)
    board = np.where(light, 204, 153).astype(np.uint8)
    return np.repeat(board[:, :, None], 3, axis=2)


def cutout_preview(cutout: np.ndarray, max_side: int = 480) -> np.ndarray:
    """An RGB picture of an RGBA cut-out over a checkerboard with its mask outline drawn on top.

    Large cut-outs are shrunk first so the page stays quick whatever the photo's size.
    """
    scale = min(1.0, max_side / max(cutout.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(cutout.shape[1] * scale)), max(1, round(cutout.shape[0] * scale)))
        cutout = cv2.resize(cutout, size, interpolation=cv2.INTER_AREA)
    alpha = cutout[:, :, 3:4].astype(np.float32) / 255.0
    board = checkerboard(*cutout.shape[:2]).astype(np.float32)
    rgb = np.rint(cutout[:, :, :3] * alpha + board * (1.0 - alpha)).astype(np.uint8)
    contours, _ = cv2.findContours((cutout[:, :, 3] >= 128).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(rgb, contours, -1, OUTLINE_RGB, max(1, round(max(rgb.shape[:2]) / 300)))
    return rgb
