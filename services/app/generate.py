"""Augmented datasets: backgrounds, the legacy API's ``/api/v1/generate``, its job, and the catalog.

The request model accepts the legacy API's body as it was written, misspellings included (``angels``,
``apply_occulsion``, ...), with the correct spellings as aliases. It is the only parser of the body's
text; each number is held to the engine's range (``OPTION_RANGES``), and the typed values then go to the
engine's :class:`~engine.augment.generate.GenerationConfig`, which owns the defaults and checks what
depends on other options and the transform names (``list_transforms()``). The ``generate`` job runs
:func:`~engine.augment.generate.generate_dataset` into ``DATA_DIR/datasets/<name>.hdf5`` and catalogs
the file only once it is complete; a cancelled or failed job leaves neither file nor row.

Backgrounds come from two places, the shipped ``bgs/{train,test}`` of the repository and the user's
``DATA_DIR/bgs/user/{train,test}``; a picture (by content) is never in both splits.

The actions ``datasets.generate``, ``backgrounds.read`` and ``backgrounds.upload`` are the functions below
decorated with :func:`~services.app.rules.action`: the routes and the Augment page call the same ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    field_validator,
    model_validator,
)

from engine import formats
from engine.augment.backgrounds import IMAGE_SUFFIXES, SPLITS, BackgroundSets, content_digest, list_backgrounds
from engine.augment.generate import (
    OPTION_RANGES,
    GenerationConfig,
    count_samples,
    export_image_folders,
    generate_dataset,
    preview_samples,
)
from engine.exceptions import Cancelled, Conflict, InvalidInput, NotFound
from engine.files import atomic_write_bytes
from engine.hdf5 import open_hdf5
from engine.images import encode_png, open_image
from services.app.quotas import check_disk_reservation
from services.app.rules import Actor, action
from services.app.segment import object_paths
from services.app.validation import Within
from services.jobs import runtime as jobs
from services.jobs.runtime import JobContext, job_kind
from services.platform.config import Config
from services.storage.rows import Dataset
from services.storage.store import Store

MAX_NAME = 100
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Pillow format -> the extension backgrounds are stored under; anything else is re-encoded as PNG.
_BACKGROUND_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}
# What an uploader offers for backgrounds: the endings of the formats kept as sent (plus JPEG's other one).
BACKGROUND_UPLOAD_TYPES = sorted({suffix.lstrip(".") for suffix in _BACKGROUND_FORMATS.values()} | {"jpeg"})
_DISK_HEADROOM = 1.1  # HDF5 chunk overhead and the temporary file's metadata

Number = Annotated[float, Field(allow_inf_nan=False)]
TransformName = Annotated[str, StringConstraints(strip_whitespace=True)]


def _ranged(kind: Any, option: str) -> Any:
    """``kind`` held to the engine's range of ``option`` (``OPTION_RANGES``, the range's one home)."""
    return Annotated[kind, Within(*OPTION_RANGES[option])]


class DatasetExists(Conflict):
    """A dataset of this name exists; datasets are never overwritten (the API answers 409)."""

    field = "name"


class UnknownDataset(NotFound):
    """No dataset has this id (the API answers 404)."""

    field = "dataset_id"


class BackgroundExists(Conflict):
    """The same picture is already a background (the API answers 409)."""

    field = "file"


# ------------------------------------------------------------------------------------- the request


class GenerateBody(BaseModel):
    """The legacy API's ``/api/v1/generate`` body. Omitted (or null) options take the engine's defaults.

    Numbers and booleans may arrive as strings (``"2"``, ``"1"``): this model is their only parser, and
    each number is held to the engine's range (``OPTION_RANGES``). What depends on other options (a
    window within ``image_size``) and the transform names are checked by the engine's
    ``GenerationConfig``, which takes the typed values. An option the legacy API misspelled is declared under
    the engine's name with ``validation_alias=AliasChoices(<first: shown in the OpenAPI document>,
    <other>)``; those aliases are the only table of spellings (:meth:`spelled` reads them).
    """

    model_config = ConfigDict(extra="forbid")

    number_backgrounds: _ranged(int | None, "number_backgrounds") = Field(
        None, description="composites per object variant, one background each")
    training_transforms: list[TransformName] | None = Field(None, max_length=32,
                                                            description="transform names (train)")
    testing_transforms: list[TransformName] | None = Field(None, max_length=32, description="transform names (test)")
    scales: list[_ranged(int, "scales")] | None = Field(None, max_length=64,
                                                        description="object sizes in px on a 512 px frame")
    flip_vertically: bool | None = None
    flip_horizontally: bool | None = None
    flip_both: bool | None = Field(None, description="a 180 degree turn")
    angles: list[_ranged(Number, "angles")] | None = Field(
        None, validation_alias=AliasChoices("angels", "angles"), max_length=360,
        description="rotation angles of the training split (0 is always made)")
    test_angles: list[_ranged(Number, "test_angles")] | None = Field(
        None, validation_alias=AliasChoices("test_angels", "test_angles"), max_length=360,
        description="rotation angles of the test split")
    apply_occlusion: bool | None = Field(None, validation_alias=AliasChoices("apply_occulsion", "apply_occlusion"),
                                         description="add sliding-window crops")
    occlusion_window: _ranged(int | None, "occlusion_window") = Field(
        None, validation_alias=AliasChoices("occulsion_window", "occlusion_window"))
    occlusion_stride: _ranged(int | None, "occlusion_stride") = Field(
        None, validation_alias=AliasChoices("occulsion_stride", "occlusion_stride"))
    apply_center_crop: bool | None = None
    center_crop_windows: list[_ranged(int, "center_crop_windows")] | None = Field(None, max_length=64)
    apply_random_erasing: bool | None = Field(None, description="random erasing on training samples")
    image_size: _ranged(int | None, "image_size") = Field(None, description="side of the square samples (default 224)")
    test_fraction: Number | None = Field(None, description="keep the test split at about this share")
    seed: _ranged(int | None, "seed") = Field(None, description="same seed, same inputs: the same file")
    classes: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=10_000, description="object classes to use (default: all)")
    name: str | None = Field(None, validation_alias=AliasChoices("name", "hdf5_path"), max_length=MAX_NAME + 5,
                             description="dataset name (the file is datasets/<name>.hdf5); default: generated")
    export_folders: bool = Field(False, description="also write <name>_train/<class>/*.png and <name>_test/...")

    _sent: frozenset[str] = PrivateAttr(default=frozenset())

    @field_validator("name")
    @classmethod
    def _name_is_no_path(cls, value: str | None) -> str | None:
        """Refuse path-like names at the edge, before anything looks at the object library."""
        if value is not None and value.strip():
            clean_dataset_name(value)
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _remember_spellings(cls, data: Any, handler):
        """Keep the keys as sent, so an error found later names the field the way the client spelled it."""
        model = handler(data)
        if isinstance(data, dict):
            model._sent = frozenset(data)
        return model

    def spelled(self, field: str | None) -> str | None:
        """The request's own spelling of an option: the alias of it the client sent, else its name."""
        info = type(self).model_fields.get(field or "")
        aliases = info.validation_alias.choices if info and isinstance(info.validation_alias, AliasChoices) else ()
        return next((alias for alias in aliases if alias in self._sent), field)

    def engine_options(self) -> dict[str, Any]:
        """The options given, under the engine's names (the rest keep the engine's defaults)."""
        skip = {"classes", "name", "export_folders"}
        return {k: v for k, v in self.model_dump().items() if k not in skip and v is not None}


def generation_config(body: GenerateBody) -> GenerationConfig:
    """The engine's validated configuration; its errors name the field as the client spelled it."""
    try:
        return GenerationConfig(**body.engine_options())
    except InvalidInput as exc:
        raise InvalidInput(str(exc), body.spelled(exc.field)) from None


def dataset_name(config: Config, store: Store, requested: str | None, image_size: int, field: str = "name") -> str:
    """A new dataset's name: the requested one (validated, never an existing one) or a fresh unique one.

    ``hdf5_path`` in the legacy API's training body names a file (``dataset-512x512.hdf5``); the suffix is
    dropped, and nothing that could be a path (``/``, ``..``) is accepted.

    Raises:
        InvalidInput: a bad name. DatasetExists: the name is taken.
    """
    if requested is None or not requested.strip():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return f"dataset-{image_size}px-{stamp}-{uuid.uuid4().hex[:6]}"
    name = clean_dataset_name(requested, field)
    if store.get_dataset(name) or dataset_file(config, name).exists():
        raise DatasetExists(f"a dataset named '{name}' exists; datasets are never overwritten", field)
    return name


def clean_dataset_name(requested: str, field: str = "name") -> str:
    """A requested dataset name without its ``.hdf5`` suffix; anything that could be a path is refused."""
    name = requested.strip()
    for suffix in formats.canonical_format().suffixes:
        name = name.removesuffix(suffix)
    if not 1 <= len(name) <= MAX_NAME or not _NAME.match(name) or ".." in name:
        raise InvalidInput(f"'{field}' must be 1-{MAX_NAME} letters, digits, '_', '-' or '.', starting with a "
                           f"letter or digit (no folders); got {requested[:80]!r}", field)
    return name


def dataset_file(config: Config, name: str) -> Path:
    return config.path("datasets", f"{name}.hdf5")


def folder_targets(config: Config, name: str) -> dict[str, Path]:
    """Where the image-folder export of a dataset goes: ``DATA_DIR/<name>_train`` and ``<name>_test``."""
    return {split: config.path(f"{name}_{split}") for split in SPLITS}


def check_disk_space(config: Config, gen: GenerationConfig, n_objects: int, store: Store | None = None) -> int:
    """Refuse a dataset that cannot fit on the disk (HDF5 samples are stored uncompressed); returns its size.

    With ``store``, what queued and running generations reserved counts as used (507 when it does not fit).
    """
    samples = sum(count_samples(gen, n_objects).values())
    needed = samples * gen.image_size ** 2 * 3 * _DISK_HEADROOM
    if store is not None:
        check_disk_reservation(config, store, int(needed), "image_size")
    folder = config.path("datasets")
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise InvalidInput(f"{samples} samples of {gen.image_size}px need about {needed / 1e9:.1f} GB; only "
                           f"{free / 1e9:.1f} GB are free (lower number_backgrounds, angles, scales or image_size)",
                           "image_size")
    return int(needed)


@action("datasets.generate")
def submit_generation(actor: Actor, body: GenerateBody) -> str:
    """Validate a request completely, then enqueue one ``generate`` job; returns its id.

    Raises:
        InvalidInput: a bad option (named as sent), an empty library or unknown class (``classes``),
            a split without backgrounds, a dataset too large for the disk.
        DatasetExists: the requested name is taken.
    """
    config, store = actor.config, actor.store
    gen = generation_config(body)
    library = object_paths(config, store, body.classes)
    background_sets(config, required=True)
    needed = check_disk_space(config, gen, sum(len(paths) for paths in library.values()), store)
    name = dataset_name(config, store, body.name, gen.image_size, body.spelled("name"))
    taken = [p.name for p in folder_targets(config, name).values() if body.export_folders and p.exists()]
    if taken:
        raise DatasetExists(f"export folders exist already: {', '.join(taken)}", body.spelled("name"))
    params = {"config": gen.to_dict(), "classes": list(library), "name": name,
              "export_folders": bool(body.export_folders), "reserved_bytes": needed}
    return jobs.submit(config, store, "generate", params, actor.username)


# ------------------------------------------------------------------------------------------- the job


@job_kind("generate", timeout=12 * 3600, result_ttl=30 * 24 * 3600,
          description="augmented HDF5 dataset from the object library and the backgrounds")
def generate_job(ctx: JobContext, params: dict) -> dict:
    """Write the dataset, optionally export it as folders, then catalog it (params: see submit_generation).

    Everything is checked again here: objects or backgrounds may have changed since the job was queued.
    """
    gen = GenerationConfig(**params["config"])
    name = params["name"]
    library = object_paths(ctx.config, ctx.store, params["classes"])
    sets = background_sets(ctx.config, required=True)
    path = dataset_file(ctx.config, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = generate_dataset(gen, library, sets.train, sets.test, path,
                              on_progress=lambda done, total: ctx.progress(done, total, unit="sample"),
                              should_stop=ctx.should_stop)
    folders: dict[str, str] | None = None
    try:
        if params.get("export_folders"):
            folders = export_folders(ctx.config, path, name)
        if ctx.should_stop():  # asked to stop while the export ran: the dataset must not appear
            raise Cancelled("dataset generation was stopped")
        row = dataset_row(ctx.config, name, path, ctx.job_id, gen, result, ctx.record().get("created_by"))
        ctx.store.add_dataset(Dataset(**row))
    except BaseException:
        # only what this job made: the engine refused to publish over an existing file, and so did the export
        path.unlink(missing_ok=True)
        for folder in (folders or {}).values():
            shutil.rmtree(ctx.config.path(folder), ignore_errors=True)
        raise
    return {"dataset_id": name, "path": row["path"], "image_size": gen.image_size,
            "class_names": result["class_names"], "counts": result["counts"], "totals": result["totals"],
            "folders": folders}


def dataset_row(config: Config, name: str, path: Path, job_id: str | None, gen: GenerationConfig,
                result: dict, created_by: str | None) -> dict:
    return {"id": name, "path": str(path.relative_to(config.data_dir)), "job_id": job_id,
            "image_size": gen.image_size, "class_names": result["class_names"], "counts": result["counts"],
            "config": gen.to_dict(), "created_by": created_by, "created_at": time.time()}


def export_folders(config: Config, h5_path: Path, name: str) -> dict[str, str]:
    """Export the dataset as ``DATA_DIR/<name>_train/<class>/*.png`` and ``<name>_test/...``.

    The engine fills a staging folder; each split folder is then renamed into place, never over an
    existing one.

    Returns:
        Split -> folder, relative to DATA_DIR.
    """
    targets = folder_targets(config, name)
    taken = [str(p.name) for p in targets.values() if p.exists()]
    if taken:
        raise InvalidInput(f"export folders exist already: {', '.join(taken)}", "name")
    staging = config.path("exports", f".{name}.{uuid.uuid4().hex}")
    staging.parent.mkdir(parents=True, exist_ok=True)
    moved: list[Path] = []
    try:
        export_image_folders(h5_path, staging)
        for split, target in targets.items():
            os.rename(staging / split, target)  # an existing non-empty target makes this fail, not merge
            moved.append(target)
    except BaseException:
        for target in moved:
            shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {split: str(target.relative_to(config.data_dir)) for split, target in targets.items()}


# --------------------------------------------------------------------------------------- the catalog


def get_dataset(store: Store, dataset_id: str) -> dict:
    row = store.get_dataset(dataset_id)
    if row is None:
        raise UnknownDataset(f"no dataset '{dataset_id}'")
    return row


def dataset_view(config: Config, row: dict) -> dict:
    """A dataset row with totals per split and its exported folders (when they exist)."""
    counts = row["counts"] or {}
    folders = {split: str(p.relative_to(config.data_dir)) for split, p in folder_targets(config, row["id"]).items()
               if p.is_dir()}
    return {**row, "totals": {split: sum(per_class.values()) for split, per_class in counts.items()},
            "folders": folders or None}


def dataset_sample(config: Config, row: dict, split: str, count: int, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """A seeded random sample of a written dataset's images with their class names (read lazily)."""
    with open_hdf5(config.path(row["path"]), field="name") as h5:
        names = json.loads(h5.attrs["class_names"])
        labels = h5[f"y_{split}"]
        picked = np.random.default_rng(seed).choice(len(labels), size=min(count, len(labels)), replace=False)
        if len(picked) == 0:
            return []
        picked = np.sort(picked)  # h5py reads fancy indices in increasing order only
        images = h5[f"X_{split}"][picked]
        return [(image, names[int(label)]) for image, label in zip(images, labels[picked], strict=True)]


# -------------------------------------------------------------------------------------- backgrounds


@dataclass(frozen=True)
class Background:
    """One background picture: which split, shipped with the project or added by a user."""

    name: str
    split: str
    origin: Literal["shipped", "user"]
    path: Path


@dataclass(frozen=True)
class Backgrounds:
    """Every background (shipped then user), and how many each split has."""

    files: list[Background]

    @property
    def counts(self) -> dict[str, int]:
        return {split: sum(1 for b in self.files if b.split == split) for split in SPLITS}


@action("backgrounds.read")
def read_backgrounds(actor: Actor) -> Backgrounds:
    """Every background with its split and origin, and the count of each split."""
    return Backgrounds(list_background_files(actor.config))


def _origins(config: Config) -> dict[str, Path]:
    return {"shipped": config.shipped_bgs_dir, "user": config.user_bgs_dir}


def list_background_files(config: Config) -> list[Background]:
    """Every background, shipped then user, each folder checked by the engine for train/test twins."""
    found = []
    for origin, folder in _origins(config).items():
        sets = list_backgrounds(folder)
        for split in SPLITS:
            found += [Background(p.name, split, origin, p) for p in getattr(sets, split)]
    return found


def background_sets(config: Config, required: bool = False) -> BackgroundSets:
    """The train and test backgrounds of both origins together.

    Raises:
        InvalidInput: the same picture is in both splits (across origins too), or, when ``required``,
            a split has no background (field ``backgrounds``).
    """
    files = list_background_files(config)
    seen: dict[str, Background] = {}
    for bg in files:
        twin = seen.setdefault(content_digest(bg.path), bg)
        if twin.split != bg.split:
            raise InvalidInput(f"background {bg.origin}/{bg.split}/{bg.name} is the same picture as "
                               f"{twin.origin}/{twin.split}/{twin.name}: a picture may be in one split only",
                               "backgrounds")
    sets = BackgroundSets(train=[b.path for b in files if b.split == "train"],
                          test=[b.path for b in files if b.split == "test"])
    if required:
        for split in SPLITS:
            if not getattr(sets, split):
                raise InvalidInput(f"there are no {split} backgrounds: add some (POST /api/v1/backgrounds)",
                                   "backgrounds")
    return sets


def background_view(bg: Background) -> dict:
    return {"name": bg.name, "split": bg.split, "origin": bg.origin}


@action("backgrounds.upload")
def add_background(actor: Actor, data: bytes, split: str | None = None) -> Background:
    """Store an uploaded background in the user's ``train`` or ``test`` folder.

    Args:
        actor: who adds it, in which studio (its pixel limit and folders).
        data: the file's bytes; any format Pillow reads (JPEG, PNG, WebP, BMP kept as sent, others as PNG).
        split: ``"train"``, ``"test"``, or None for whichever set is smaller now (ties go to train).

    Raises:
        InvalidInput: not an image, or a bad split. ImageTooLarge: over the pixel limit.
        BackgroundExists: the same picture is already a background (in either split).
    """
    if not data:
        raise InvalidInput("'file' is empty: send the image's bytes", "file")
    if split is not None and split not in SPLITS:
        raise InvalidInput(f"'split' must be one of {', '.join(SPLITS)}, got {split!r}", "split")
    config = actor.config
    img = open_image(data, "file", config.max_image_pixels)
    fmt = Image.open(io.BytesIO(data)).format  # open_image's oriented copy no longer knows its format
    if fmt not in _BACKGROUND_FORMATS:
        data, fmt = encode_png(np.asarray(img.convert("RGB"))), "PNG"
    digest = hashlib.sha256(data).hexdigest()
    files = list_background_files(config)
    twin = next((b for b in files if content_digest(b.path) == digest), None)
    if twin is not None:
        raise BackgroundExists(f"this picture is already a {twin.split} background ({twin.origin}/{twin.name})")
    split = split or _smaller_split(files)
    target = config.user_bgs_dir / split / f"{digest[:20]}{_BACKGROUND_FORMATS[fmt]}"
    assert target.suffix in IMAGE_SUFFIXES, target
    atomic_write_bytes(target, data)
    return Background(target.name, split, "user", target)


def _smaller_split(files: list[Background]) -> str:
    sizes = {split: sum(1 for b in files if b.split == split) for split in SPLITS}
    return "test" if sizes["test"] < sizes["train"] else "train"


# ------------------------------------------------------------------------------------------ previews


def preview(config: Config, store: Store, body: GenerateBody, split: str = "train",
            count: int = 12) -> list[tuple[np.ndarray, str]]:
    """Samples of ``split`` rendered by the very code the job runs (same seed, same pictures)."""
    gen = generation_config(body)
    library = object_paths(config, store, body.classes)
    sets = background_sets(config, required=True)
    return preview_samples(gen, library, getattr(sets, split), split, count)


def planned_counts(config: Config, store: Store, body: GenerateBody) -> dict[str, int]:
    """How many samples each split will hold for this request."""
    library = object_paths(config, store, body.classes)
    return count_samples(generation_config(body), sum(len(paths) for paths in library.values()))
