"""Datasets that users bring: upload in any registered format (``engine.formats``), import, catalog, export.

The actions ``datasets.import``, ``datasets.read``, ``datasets.export`` and ``datasets.delete`` are the functions
below decorated with :func:`~services.app.rules.action`; ``services/web/routes/datasets.py`` and the Datasets page
(``pages/datasets.py``, ``services/ui/dataset_upload.py``) both call them. An upload is streamed to a hidden file
in ``DATA_DIR/uploads`` (:class:`UploadSink`), checked at once from its size, first bytes and a zip's end
record only (the request's work never grows with the upload), then recognised and imported by an
``import_dataset`` job: a format that makes datasets is decoded into ``DATA_DIR/datasets/<name>.hdf5``, one that
makes annotations is stored in the annotation library; its refusals name the field, as the request's do. Before
writing, the job bounds the output by ``MAX_DATASET_MB`` and reserves its bytes on the disk. The file is written
under a temporary name and linked into place only when complete, and the catalog row comes last; the upload
itself is removed either way, also when the job is cancelled before it runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine import archives, formats
from engine import labels as labelsets
from engine.exceptions import Cancelled, Conflict, InvalidInput
from engine.exif import read_exif
from engine.hdf5 import open_hdf5
from engine.images import open_image
from services.app import annotation, rules
from services.app.generate import DatasetExists, clean_dataset_name, dataset_file, dataset_view, get_dataset
from services.app.rules import Actor, Forbidden, action
from services.jobs import runtime as jobs
from services.jobs.runtime import JobContext, job_kind
from services.platform.config import Config
from services.storage.rows import Dataset
from services.storage.store import Store

IMPORT_TIMEOUT = 6 * 3600
IMPORT_RESULT_TTL = 30 * 24 * 3600
THUMBNAILS_PER_CLASS = 4
# A zip may expand to this many times MAX_DATASET_MB before it counts as a bomb (JPEGs barely compress).
EXPANSION_ALLOWANCE = 4
ACTIVE_STATUSES = ("queued", "started")


class AdminOnly(Forbidden):
    """``unknown_labels=add`` by a role that may not edit the label set (the API answers 403)."""

    field = "unknown_labels"


class DatasetInUse(Conflict):
    """A queued or running job, or a trained model, needs the dataset (the API answers 409)."""

    field = "name"


# ------------------------------------------------------------------------------------------ request
MIRROR_SYMMETRIC_HELP = ("every class looks the same mirrored left-right (faces, cats, cups; never digits, letters or "
                         "arrows): only then may a run flip its images (augment 'shift+flip')")



class UploadForm(BaseModel):
    """The form fields of ``POST /api/v1/datasets`` (the archive itself travels as multipart ``file``)."""

    model_config = ConfigDict(extra="forbid")

    file: bytes | None = Field(None, description="the dataset file, as a multipart file part; the known formats "
                                                 f"are: {formats.describe_formats()}")
    name: str | None = Field(None, max_length=110,
                             description="the dataset's name: the file becomes datasets/<name>.hdf5 "
                                         "(not used for annotated images)")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of each class held out (class-folder zips)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the stratified split")
    image_size: int | None = Field(None, ge=8, le=1024,
                                   description="resize to this square; default: keep one shared size, else 224")
    skip_bad_images: bool = Field(False, description="import the rest when some images do not decode")
    unknown_labels: Literal["refuse", "drop", "add"] = Field(
        "refuse", description="annotations only: labels outside the label set refuse the upload, are dropped, "
                              "or are added to the label set (admin)")
    overwrite: bool = Field(False, description="annotations only: replace annotated images of the same id")
    mirror_symmetric: bool = Field(False, description=MIRROR_SYMMETRIC_HELP)

    @field_validator("name")
    @classmethod
    def _name_is_no_path(cls, value: str | None) -> str | None:
        return clean_dataset_name(value) if value is not None and value.strip() else None


class DatasetChange(BaseModel):
    """The body of ``PATCH /api/v1/datasets/<name>``: the dataset's properties a user may change."""

    model_config = ConfigDict(extra="forbid")

    mirror_symmetric: bool = Field(description=MIRROR_SYMMETRIC_HELP)


class UploadSink:
    """A werkzeug stream factory that writes uploaded files to hidden temporary files in ``folder``.

    The parser writes each part in small chunks, so memory stays flat whatever the upload's size.
    :meth:`cleanup` removes whatever is still there at the end of the request.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: list[Any] = []

    def __call__(self, total_content_length=None, content_type=None, filename=None, content_length=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.folder, prefix=".upload-", suffix=".part")
        os.close(fd)
        fh = open(name, "wb+")  # noqa: SIM115 - the form parser owns and closes it
        self.files.append(fh)
        return fh

    def cleanup(self) -> None:
        for fh in self.files:
            with contextlib.suppress(OSError):
                fh.close()
            Path(fh.name).unlink(missing_ok=True)


def zip_limits(config: Config) -> archives.ZipLimits:
    return archives.ZipLimits(max_total_bytes=EXPANSION_ALLOWANCE * config.max_dataset_mb * 1024 * 1024,
                              max_entries=config.max_zip_entries)


def check_upload(config: Config, path: Path) -> dict[str, Any]:
    """What an uploaded file is, from its size, its first bytes and (a zip) its end record; InvalidInput on ``file``.

    This is all a request reads, the same whatever the file holds. What grows with the upload (a zip's
    directory, its images' headers, an HDF5 file's shapes and labels) is read by the import job, which also
    tells the formats of one container apart.

    Returns:
        ``{"format": the container ("zip", "hdf5"), ...what its check tells (a zip's "entries")}``.
    """
    size, budget = path.stat().st_size, config.max_dataset_mb * 1024 * 1024
    if size > budget:
        raise InvalidInput(f"'file' takes {size / 2**20:.0f} MB; the limit is MAX_DATASET_MB "
                           f"({config.max_dataset_mb} MB)", "file")
    container = formats.sniff(path)
    try:
        return {"format": container.name, **container.check(path, zip_limits(config))}
    except InvalidInput as exc:  # a check refuses by the zip limits, whose entry count the configuration sets
        raise InvalidInput(f"{exc} (MAX_ZIP_ENTRIES)", "file") from None


def _required_name(name: str | None) -> str:
    if name is None:
        raise InvalidInput("'name' is required: the dataset becomes datasets/<name>.hdf5", "name")
    return name


def check_form(actor: Actor, container: str, form: UploadForm) -> None:
    """What the request checks of the form without reading the file: roles and the name.

    Only the job knows which format of a container a file is. A file whose container holds only formats that
    make datasets needs a name, checked here; a zip may hold annotated images (no name), so its name is
    required by the job, and checked here when given.

    Raises:
        AdminOnly: ``unknown_labels=add`` by a role that may not edit the label set. InvalidInput: a dataset
            file without ``name``. DatasetExists: the name is taken.
    """
    if form.unknown_labels == "add" and not rules.may("labels.edit", actor.user):
        raise may_not_add_labels()
    if form.name is not None or _makes_only_datasets(container):
        check_name_free(actor.config, actor.store, _required_name(form.name))


def may_not_add_labels() -> AdminOnly:
    """The refusal of ``unknown_labels=add`` to a role that may not edit the label set (as the rules table says)."""
    return AdminOnly(f"'unknown_labels': only {', '.join(rules.rule_of('labels.edit').allowed)} may add labels to "
                     "the label set (unknown_labels=add)")


def _makes_only_datasets(container: str) -> bool:
    return all(f.makes == "dataset" for f in formats.list_formats() if f.container.name == container)


def check_name_unused(config: Config, store: Store, name: str) -> None:
    """Refuse a name a dataset already has (its catalog row or its file)."""
    if store.get_dataset(name) or dataset_file(config, name).exists():
        raise DatasetExists(f"a dataset named '{name}' exists; datasets are never overwritten")


def check_name_free(config: Config, store: Store, name: str) -> None:
    """Refuse a name already used by a dataset or by an import still queued or running."""
    check_name_unused(config, store, name)
    for job in store.list_jobs(kind="import_dataset", status=ACTIVE_STATUSES, dataset=name, limit=1):
        raise DatasetExists(f"a dataset named '{name}' is being imported (job {job['id']})")


@action("datasets.import")
def submit_import(actor: Actor, upload: Path, form: UploadForm, filename: str | None = None) -> tuple[str, dict]:
    """Check an uploaded file cheaply, keep it in ``DATA_DIR/uploads`` and queue its import.

    The request's work is the same whatever the file holds (:func:`check_upload`, :func:`check_form`); the
    job recognises the format and inspects the rest, and fails, naming the field, on what it refuses.
    ``upload`` is moved (not copied) and removed by the job when it ends (or is cancelled before it runs), or
    here when refused (a caller whose actor the rules refuse removes it: nothing here runs).

    Returns:
        ``(job id, what is known of the file: its container, and a zip's declared entry count)``.

    Raises:
        InvalidInput: a bad file (field ``file``). DatasetExists: the name is taken. AdminOnly: see
            :func:`check_form`.
    """
    config = actor.config
    try:
        found = check_upload(config, upload)
        check_form(actor, found["format"], form)
        kept = config.path("uploads", f"{uuid.uuid4().hex}.{found['format']}")
        os.replace(upload, kept)
    except BaseException:
        upload.unlink(missing_ok=True)
        raise
    params = {"upload": str(kept.relative_to(config.data_dir)), "format": found["format"], "name": form.name,
              "test_fraction": form.test_fraction, "seed": form.seed, "image_size": form.image_size,
              "skip_bad_images": form.skip_bad_images, "filename": (filename or "")[:200],
              "unknown_labels": form.unknown_labels, "overwrite": form.overwrite,
              "mirror_symmetric": form.mirror_symmetric}
    try:
        return jobs.submit(config, actor.store, "import_dataset", params, actor.username), found
    except BaseException:
        kept.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------- the job


def _clean_after_death(config: Config, store: Store, record: dict) -> None:
    """An import whose worker died, that RQ stopped, or that was cancelled before it ran leaves its upload (and
    maybe a temporary file): remove them."""
    params = record["params"]
    config.path(params["upload"]).unlink(missing_ok=True)
    if params.get("name"):
        for temp in config.path("datasets").glob(f".{params['name']}.hdf5.*.tmp"):
            temp.unlink(missing_ok=True)


@job_kind("import_dataset", timeout=IMPORT_TIMEOUT, result_ttl=IMPORT_RESULT_TTL,
          description="an uploaded dataset file (any registered format), into datasets/<name>.hdf5 or the "
                      "annotation library",
          on_ended_elsewhere=_clean_after_death, on_discarded=_clean_after_death)
def import_dataset(ctx: JobContext, params: dict) -> dict:
    """Recognise the upload's format, then write, publish and catalog the dataset file (or store the annotated
    images).

    Everything that grows with the upload is read here, never in the request; refusals name the field
    (``file``, ``name``, ``image_size``, ``unknown_labels``). The upload is removed whatever happens.
    """
    upload = ctx.config.path(params["upload"])
    try:
        fmt = formats.recognise(upload, _container(params), zip_limits(ctx.config))
        if fmt.makes == "annotations":
            return _import_annotations(ctx, fmt, upload, params)
        return _import_dataset_file(ctx, fmt, upload, params)
    finally:
        upload.unlink(missing_ok=True)


def _container(params: dict) -> str:
    # "annotations": a job queued while the request still told the two kinds of zip apart.
    return "zip" if params["format"] == "annotations" else params["format"]


def import_budget(ctx: JobContext) -> formats.ImportBudget:
    """What an import job allows (``MAX_DATASET_MB``, the pixel and zip limits) and how it reports and reserves."""
    return formats.ImportBudget(
        max_bytes=ctx.config.max_dataset_mb * 2**20, max_pixels=ctx.config.max_image_pixels,
        limits=zip_limits(ctx.config), reserve=ctx.reserve_disk,
        on_progress=lambda done, total: ctx.progress(done, total, unit="image"), should_stop=ctx.should_stop)


def _options(params: dict) -> formats.ImportOptions:
    return formats.ImportOptions(params["test_fraction"], params["seed"], params["image_size"],
                                 params["skip_bad_images"], params["filename"])


def _import_dataset_file(ctx: JobContext, fmt: formats.DatasetFormat, upload: Path, params: dict) -> dict:
    """A file of a format that makes datasets into ``datasets/<name>.hdf5``; the job's result."""
    name = _required_name(params.get("name"))
    check_name_unused(ctx.config, ctx.store, name)
    target = dataset_file(ctx.config, name)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        info = fmt.write_hdf5(upload, temp, _options(params), import_budget(ctx))
        _publish(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    try:
        row = catalog_row(ctx.config, params, target, info, ctx.job_id, ctx.record().get("created_by"))
        ctx.store.add_dataset(Dataset(**row))
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return {"dataset_id": row["id"], "path": row["path"], "format": fmt.container.name, "dataset_format": fmt.name,
            "layout": info.layout, "class_names": row["class_names"], "counts": row["counts"], "images": info.images,
            "ignored": info.ignored_total, "skipped_images": info.bad_images, "image_shape": info.shape}


def _publish(temp: Path, target: Path) -> None:
    """Link the finished file into place; never over an existing dataset (two imports of one name)."""
    try:
        os.link(temp, target)
    except FileExistsError:
        raise DatasetExists(f"a dataset named '{target.stem}' appeared meanwhile; nothing was written") from None


def catalog_row(config: Config, params: dict, path: Path, info: formats.Imported, job_id: str | None,
                created_by: str | None) -> dict:
    """The ``datasets`` row of an imported file (with a few thumbnail picks from its training split)."""
    with open_hdf5(path, field="file") as h5:
        labels = np.asarray(h5["y_train"][:]).reshape(-1).astype(np.int64)
    shape = info.shape
    return {"id": params["name"], "path": str(path.relative_to(config.data_dir)), "job_id": job_id,
            "image_size": int(max(shape)), "class_names": info.class_names, "counts": info.counts,
            "config": {"source": params.get("filename") or None, "layout": info.layout,
                       "test_fraction": params["test_fraction"] if info.layout == "class_folders" else None,
                       "seed": params["seed"], "image_shape": shape,
                       "skipped_images": info.bad_images, "ignored_files": info.ignored},
            "created_by": created_by, "created_at": time.time(), "kind": "hdf5", "origin": "uploaded",
            "size_bytes": path.stat().st_size, "mirror_symmetric": int(bool(params.get("mirror_symmetric"))),
            "thumbnails": archives.thumbnail_picks(labels, info.class_names, THUMBNAILS_PER_CLASS)}


# ------------------------------------------------------------------------------- annotated images


def check_annotations(config: Config, store: Store, annotated: archives.AnnotatedZip, params: dict,
                      creator: Mapping | None) -> tuple[list[str], dict[str, str]]:
    """Check an annotated zip against the label set and the stored images; ``(unknown labels, ids)``.

    Raises:
        InvalidInput: unknown labels (named) when ``unknown_labels`` is ``refuse``, ids taken without
            ``overwrite``, two images with one id (field ``file``). AdminOnly: ``add`` by one whose role (now)
            may not edit the label set.
    """
    known = annotation.read_labels(config)
    unknown = [label for label in annotated.labels if label not in known]
    if unknown and params["unknown_labels"] == "refuse":
        raise InvalidInput(f"'file': labels not in the label set: {', '.join(unknown[:50])}; send "
                           f"unknown_labels=drop to import without them, or =add (admin) to add them", "file")
    if unknown and params["unknown_labels"] == "add" and not rules.may("labels.edit", creator):
        raise may_not_add_labels()
    ids = image_ids(annotated)
    taken = [i for i in ids.values() if store.get_image(i) is not None]
    if taken and not params["overwrite"]:
        raise annotation.ImageExists(f"'file': images with these ids exist: {', '.join(taken[:20])}; send "
                                     f"overwrite=true to replace them")
    return unknown, ids


def image_ids(annotated: archives.AnnotatedZip) -> dict[str, str]:
    """The ``id_name`` each image gets (its file name's stem); two images with one id are refused."""
    ids: dict[str, str] = {}
    for member, _labels in annotated.items:
        id_name = annotation.default_id_name(PurePosixPath(member).name)
        if id_name in ids.values():
            raise InvalidInput(f"'file': two images would both get the id {id_name!r}; rename one", "file")
        ids[member] = id_name
    return ids


def _inspection(config: Config, data: bytes, member: str) -> annotation.Inspection:
    """Decode an image as the annotation upload does, without asking a model for tag suggestions."""
    img = open_image(data, member, config.max_image_pixels)
    fmt = Image.open(io.BytesIO(data)).format
    return annotation.Inspection(labelsets.extension_for_format(fmt), img.width, img.height,
                                 read_exif(data, config.max_image_pixels))


def _import_annotations(ctx: JobContext, fmt: formats.DatasetFormat, upload: Path, params: dict) -> dict:
    """Check every image first (nothing is stored if one is bad and not skipped), then store and label."""
    config, store = ctx.config, ctx.store
    annotated = fmt.read_labelled(upload, zip_limits(config))
    user = ctx.record().get("created_by")
    unknown, ids = check_annotations(config, store, annotated, params, store.get_user(user) if user else None)
    known = annotation.read_labels(config)
    with archives.open_zip(upload) as zf:
        bad = []
        for member, _labels in annotated.items:
            try:
                _inspection(config, zf.read(member), member)
            except InvalidInput:
                bad.append(member)
        archives.refuse_bad_images(bad, params["skip_bad_images"], len(annotated.items))
        if unknown and params["unknown_labels"] == "add":
            annotation.set_label_set(config, store, known + unknown)
        keep = set(annotation.read_labels(config))
        stored = []
        for done, (member, labels) in enumerate(annotated.items, start=1):
            if ctx.should_stop():
                raise Cancelled("the import was stopped")
            if member not in bad:
                data = zf.read(member)
                annotation.store_upload(config, store, ids[member], data, user, params["overwrite"],
                                        _inspection(config, data, member))
                annotation.set_labels(config, store, ids[member], [x for x in labels if x in keep], user)
                stored.append(ids[member])
            ctx.progress(done, len(annotated.items), unit="image")
    return {"format": fmt.container.name, "dataset_format": fmt.name, "layout": "annotations",
            "annotation_file": annotated.annotation_file,
            "images": len(annotated.items), "labels": annotated.labels, "imported": len(stored),
            "id_names": stored[:1000], "unknown_labels": unknown,
            "unknown_labels_policy": params["unknown_labels"], "skipped_images": bad,
            "missing_images": annotated.missing[:1000], "unannotated_images": annotated.unannotated[:1000]}


# --------------------------------------------------------------------------------------- the catalog


@action("datasets.read")
def read_datasets(actor: Actor, name: str | None = None) -> list[dict]:
    """Every dataset of the catalog, newest first, as the API shows them; with ``name``, that one alone.

    Raises:
        UnknownDataset: ``name`` names no dataset.
    """
    rows = [get_dataset(actor.store, name)] if name is not None else actor.store.list_datasets()
    return [view(actor.config, row) for row in rows]


def view(config: Config, row: dict) -> dict:
    """A catalog row with totals, folders, and its size on disk (measured when the row lacks it)."""
    out = {**dataset_view(config, row), "mirror_symmetric": bool(row.get("mirror_symmetric"))}
    if out.get("size_bytes") is None:
        with contextlib.suppress(OSError):
            out["size_bytes"] = config.path(row["path"]).stat().st_size
    return out


def thumbnails(config: Config, row: dict, per_class: int = THUMBNAILS_PER_CLASS) -> dict[str, list[np.ndarray]]:
    """A few training images per class (the catalog's picks, or seeded picks for older rows)."""
    with open_hdf5(config.path(row["path"]), field="name") as h5:
        images = h5["X_train"]
        picks = row.get("thumbnails") or archives.thumbnail_picks(
            np.asarray(h5["y_train"][:]).reshape(-1), row["class_names"], per_class)
        out: dict[str, list[np.ndarray]] = {name: [] for name in row["class_names"]}
        for pick in picks:
            out.setdefault(pick["class"], []).append(np.asarray(images[pick["index"]]))
    return out


def references(config: Config, store: Store, name: str) -> list[str]:
    """What needs the dataset: queued or running jobs that read or write it, and trained models made from it
    (asked in SQL of the jobs' ``dataset`` column)."""
    found = [f"{job['kind']} job {job['id']} ({status})" for status in ACTIVE_STATUSES
             for job in store.list_jobs(status=status, dataset=name, limit=1000)]
    return found + [f"model {model['id']} ({model['model_name']})" for model in store.list_models_made_from(name)]


@action("datasets.edit")
def change_dataset(actor: Actor, name: str, change: DatasetChange) -> dict:
    """Set a dataset's properties (today: whether its classes look the same mirrored) and return its view.

    Raises:
        UnknownDataset: no such dataset.
    """
    get_dataset(actor.store, name)
    actor.store.update_dataset(name, mirror_symmetric=int(change.mirror_symmetric))
    return view(actor.config, get_dataset(actor.store, name))


@action("datasets.delete")
def delete_dataset(actor: Actor, name: str) -> None:
    """Delete a dataset's file, its exports and its row; refused while a job or a model needs it.

    Raises:
        UnknownDataset: no such dataset. DatasetInUse: something needs it.
    """
    config = actor.config
    row = get_dataset(actor.store, name)
    needed = references(config, actor.store, name)
    if needed:
        raise DatasetInUse(f"dataset '{name}' is needed by {', '.join(needed[:10])}; delete those first")
    actor.store.delete_dataset(name)
    config.path(row["path"]).unlink(missing_ok=True)
    for fmt in formats.export_formats().values():
        export_path(config, name, fmt).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- export


def export_path(config: Config, name: str, fmt: formats.DatasetFormat) -> Path:
    """Where a dataset's export in ``fmt`` is kept (the canonical format's is the dataset's own file)."""
    return config.path("exports", f"{name}-dataset{fmt.suffixes[0]}")


@action("datasets.export")
def export_dataset(actor: Actor, name: str, export_as: str = "hdf5") -> tuple[Path, str]:
    """The file that downloads dataset ``name`` in the format ``export_as`` names, and its download name.

    Raises:
        UnknownDataset: no such dataset. InvalidInput: no format exports as ``export_as`` (field ``format``).
    """
    row = get_dataset(actor.store, name)
    fmt = formats.get_export(export_as)
    return exported_file(actor.config, row, fmt), f"{row['id']}{fmt.suffixes[0]}"


def exported_file(config: Config, row: dict, fmt: formats.DatasetFormat) -> Path:
    """The dataset's file in ``fmt``: its own file (canonical), else made once and kept in ``DATA_DIR/exports``."""
    source = config.path(row["path"])
    if fmt.canonical:
        return source
    target = export_path(config, row["id"], fmt)
    if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        fmt.write_export(source, temp, row["class_names"], row["id"])
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target
