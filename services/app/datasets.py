"""Datasets that users bring: upload (class-folder zips, HDF5, images with CSV/COCO labels), import, catalog, export.

Shared by ``services/web/routes/datasets.py`` and the Datasets page. An upload is streamed to a hidden file
in ``DATA_DIR/uploads`` (:class:`UploadSink`), checked at once from its size, first bytes and a zip's end
record only (the request's work never grows with the upload), then inspected and imported by an
``import_dataset`` job that decodes the images into ``DATA_DIR/datasets/<name>.hdf5``; its refusals name
the field, as the request's do. Before writing, the job bounds the output by ``MAX_DATASET_MB`` and reserves
its bytes on the disk (:func:`services.app.quotas.reserve_disk`). The file is written under a temporary name and
linked into place only when complete, and the catalog row comes last; the upload itself is removed either
way, also when the job is cancelled before it runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine import archives
from engine import datasets as engine_datasets
from engine import labels as labelsets
from engine.exceptions import Cancelled, Conflict, InvalidInput, StudioError
from engine.exif import read_exif
from engine.hdf5 import open_hdf5
from engine.images import open_image
from services.app import annotation, quotas
from services.app.generate import DatasetExists, clean_dataset_name, dataset_file, dataset_view, get_dataset
from services.app.training import resolve_under
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


class AdminOnly(StudioError):
    """Something only an admin may do (the API answers 403)."""


class DatasetInUse(Conflict):
    """A queued or running job, or a trained model, needs the dataset (the API answers 409)."""

    field = "name"


# ------------------------------------------------------------------------------------------ request


class UploadForm(BaseModel):
    """The form fields of ``POST /api/v1/datasets`` (the archive itself travels as multipart ``file``)."""

    model_config = ConfigDict(extra="forbid")

    file: bytes | None = Field(None, description="the zip or HDF5 file, as a multipart file part")
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

    @field_validator("name")
    @classmethod
    def _name_is_no_path(cls, value: str | None) -> str | None:
        return clean_dataset_name(value) if value is not None and value.strip() else None


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
    directory, its images' headers, an HDF5 file's shapes and labels) is read by the import job.
    """
    size, budget = path.stat().st_size, config.max_dataset_mb * 1024 * 1024
    if size > budget:
        raise InvalidInput(f"'file' takes {size / 2**20:.0f} MB; the limit is MAX_DATASET_MB "
                           f"({config.max_dataset_mb} MB)", "file")
    fmt = archives.sniff_format(path)
    if fmt == "zip":
        try:
            return {"format": "zip", "entries": archives.check_directory(path, zip_limits(config))}
        except InvalidInput as exc:
            raise InvalidInput(f"{exc} (MAX_ZIP_ENTRIES)", "file") from None
    if fmt == "hdf5":
        return {"format": "hdf5"}
    raise InvalidInput("'file' is neither a zip (of class folders) nor an HDF5 file", "file")


def _required_name(name: str | None) -> str:
    if name is None:
        raise InvalidInput("'name' is required: the dataset becomes datasets/<name>.hdf5", "name")
    return name


def check_form(config: Config, store: Store, fmt: str, form: UploadForm, role: str | None) -> None:
    """What the request checks of the form without reading the file: roles and the name.

    An annotated zip ignores ``name``, and only its job knows a zip is one: a zip's name is required by the
    job, and checked here when given.

    Raises:
        AdminOnly: ``unknown_labels=add`` by a non-admin. InvalidInput: an HDF5 file without ``name``.
        DatasetExists: the name is taken.
    """
    if form.unknown_labels == "add" and role != "admin":
        raise AdminOnly("only an admin may add labels to the label set (unknown_labels=add)")
    if fmt == "hdf5" or form.name is not None:
        check_name_free(config, store, _required_name(form.name))


def check_name_unused(config: Config, store: Store, name: str) -> None:
    """Refuse a name a dataset already has (its catalog row or its file)."""
    if store.get_dataset(name) or dataset_file(config, name).exists():
        raise DatasetExists(f"a dataset named '{name}' exists; datasets are never overwritten")


def check_name_free(config: Config, store: Store, name: str) -> None:
    """Refuse a name already used by a dataset or by an import still queued or running."""
    check_name_unused(config, store, name)
    for status in ACTIVE_STATUSES:
        for job in store.list_jobs(kind="import_dataset", status=status, limit=1000):
            if job["params"].get("name") == name:
                raise DatasetExists(f"a dataset named '{name}' is being imported (job {job['id']})")


def submit_import(config: Config, store: Store, upload: Path, form: UploadForm, username: str | None,
                  filename: str | None = None, role: str | None = None) -> tuple[str, dict]:
    """Check an uploaded file cheaply, keep it in ``DATA_DIR/uploads`` and queue its import.

    The request's work is the same whatever the file holds (:func:`check_upload`, :func:`check_form`); the
    job inspects the rest and fails, naming the field, on what it refuses. ``upload`` is moved (not copied)
    and removed by the job when it ends (or is cancelled before it runs), or here when refused.

    Returns:
        ``(job id, what is known of the file: its format, and a zip's declared entry count)``.

    Raises:
        InvalidInput: a bad file (field ``file``). DatasetExists: the name is taken. AdminOnly: see
            :func:`check_form`.
    """
    try:
        found = check_upload(config, upload)
        check_form(config, store, found["format"], form, role)
        kept = config.path("uploads", f"{uuid.uuid4().hex}.{found['format']}")
        os.replace(upload, kept)
    except BaseException:
        upload.unlink(missing_ok=True)
        raise
    params = {"upload": str(kept.relative_to(config.data_dir)), "format": found["format"], "name": form.name,
              "test_fraction": form.test_fraction, "seed": form.seed, "image_size": form.image_size,
              "skip_bad_images": form.skip_bad_images, "filename": (filename or "")[:200],
              "unknown_labels": form.unknown_labels, "overwrite": form.overwrite}
    try:
        return jobs.submit(config, store, "import_dataset", params, username), found
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
          description="an uploaded zip of class folders or HDF5 file, into datasets/<name>.hdf5",
          on_ended_elsewhere=_clean_after_death, on_discarded=_clean_after_death)
def import_dataset(ctx: JobContext, params: dict) -> dict:
    """Inspect the upload, then write, publish and catalog the dataset file (or store the annotated images).

    Everything that grows with the upload is read here, never in the request; refusals name the field
    (``file``, ``name``, ``image_size``, ``unknown_labels``). The upload is removed whatever happens.
    """
    upload = ctx.config.path(params["upload"])
    try:
        if _is_annotated(ctx.config, upload, params["format"]):
            return _import_annotations(ctx, upload, params)
        return _import_dataset_file(ctx, upload, params)
    finally:
        upload.unlink(missing_ok=True)


def _is_annotated(config: Config, upload: Path, fmt: str) -> bool:
    # "annotations": a job queued while the request still told the two kinds of zip apart.
    return fmt == "annotations" or (fmt == "zip" and archives.find_annotation_file(upload, zip_limits(config))
                                    is not None)


def _import_dataset_file(ctx: JobContext, upload: Path, params: dict) -> dict:
    """A zip of class folders or an HDF5 file into ``datasets/<name>.hdf5``; the job's result."""
    name = _required_name(params.get("name"))
    check_name_unused(ctx.config, ctx.store, name)
    target = dataset_file(ctx.config, name)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        if params["format"] == "zip":
            info = _import_zip(ctx, upload, temp, params)
        else:
            info = _import_hdf5(ctx, upload, temp)
        _publish(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    try:
        row = catalog_row(ctx.config, params, target, info, ctx.job_id, ctx.record().get("created_by"))
        ctx.store.add_dataset(Dataset(**row))
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return {"dataset_id": row["id"], "path": row["path"], "format": params["format"], "layout": info["layout"],
            "class_names": row["class_names"], "counts": row["counts"], "images": info.get("images"),
            "ignored": info.get("ignored_total", 0), "skipped_images": info.get("bad_images", []),
            "image_shape": info["shape"]}


def _import_zip(ctx: JobContext, upload: Path, temp: Path, params: dict) -> dict:
    archive = archives.read_class_folders(upload, zip_limits(ctx.config))
    splits = archives.split_entries(archive, params["test_fraction"], params["seed"])
    attrs = {"origin": {"uploaded": params["filename"], "layout": archive.layout,
                        "test_fraction": params["test_fraction"], "seed": params["seed"]}}
    report = archives.write_zip_as_hdf5(
        upload, temp, archive, splits, params["image_size"], ctx.config.max_image_pixels,
        params["skip_bad_images"], attrs, on_progress=lambda d, t: ctx.progress(d, t, unit="image"),
        should_stop=ctx.should_stop, before_write=lambda images, shape: reserve_output(ctx, images, shape))
    return {"class_names": archive.class_names, "counts": report.counts, "bad_images": report.bad_images,
            "shape": list(report.shape), "layout": archive.layout, "ignored": archive.ignored[:100],
            "ignored_total": len(archive.ignored), "images": len(archive.entries)}


def reserve_output(ctx: JobContext, images: int, shape: tuple[int, int]) -> None:
    """Before an import writes: refuse a dataset over ``MAX_DATASET_MB``, and reserve its bytes on the disk.

    Raises:
        InvalidInput: over the budget, naming ``image_size`` and the sizes. InsufficientStorage: the disk,
            less what other jobs reserved, cannot hold it.
    """
    needed = archives.hdf5_bytes(images, shape)
    what = (f"{images:,} images at {shape[0]}x{shape[1]} pixels (image_size) make a dataset of about "
            f"{needed / 2**20:,.0f} MB")
    if needed > ctx.config.max_dataset_mb * 2**20:
        raise InvalidInput(f"'image_size': {what}; the limit is MAX_DATASET_MB ({ctx.config.max_dataset_mb:,} MB): "
                           "choose a smaller image_size or split the dataset", "image_size")
    quotas.reserve_disk(ctx.config, ctx.store, ctx.job_id, needed, "image_size", what,
                        "wait for them, or choose a smaller image_size")


def _import_hdf5(ctx: JobContext, upload: Path, temp: Path) -> dict:
    """Rewrite an uploaded HDF5 file in the project's own layout (whatever layout the reader accepted), so
    everything downstream (counts, thumbnails, export, training) reads one format.

    Before a byte is written, the engine refuses a file that points at other files or whose declared shapes
    decode to more than ``MAX_DATASET_MB``, and the output's bytes are reserved on the disk.
    """
    budget = ctx.config.max_dataset_mb * 2**20
    try:
        summary = engine_datasets.inspect_hdf5(upload, max_bytes=budget)
    except InvalidInput as exc:
        raise InvalidInput(f"'file': {exc}", "file") from None
    quotas.reserve_disk(ctx.config, ctx.store, ctx.job_id, summary.canonical_bytes, "file",
                        f"its {sum(summary.split_sizes.values()):,} images make a dataset of about "
                        f"{summary.canonical_bytes / 2**20:,.0f} MB", "wait for them, or import fewer images")
    try:
        summary = engine_datasets.write_canonical_hdf5(
            upload, temp, on_progress=lambda d, t: ctx.progress(d, t, unit="image"), should_stop=ctx.should_stop,
            max_bytes=budget)
    except InvalidInput as exc:
        raise InvalidInput(f"'file': {exc}", "file") from None
    names = summary.class_names
    return {"class_names": names, "counts": archives.split_counts(temp, names),
            "shape": list(summary.image_shape[:2]), "layout": "hdf5"}


def _publish(temp: Path, target: Path) -> None:
    """Link the finished file into place; never over an existing dataset (two imports of one name)."""
    try:
        os.link(temp, target)
    except FileExistsError:
        raise DatasetExists(f"a dataset named '{target.stem}' appeared meanwhile; nothing was written") from None


def catalog_row(config: Config, params: dict, path: Path, info: dict, job_id: str | None,
                created_by: str | None) -> dict:
    """The ``datasets`` row of an imported file (with a few thumbnail picks from its training split)."""
    with open_hdf5(path, field="file") as h5:
        labels = np.asarray(h5["y_train"][:]).reshape(-1).astype(np.int64)
    shape = info["shape"]
    return {"id": params["name"], "path": str(path.relative_to(config.data_dir)), "job_id": job_id,
            "image_size": int(max(shape)), "class_names": info["class_names"], "counts": info["counts"],
            "config": {"source": params.get("filename") or None, "layout": info["layout"],
                       "test_fraction": params["test_fraction"] if info["layout"] == "class_folders" else None,
                       "seed": params["seed"], "image_shape": shape,
                       "skipped_images": info.get("bad_images", []), "ignored_files": info.get("ignored", [])},
            "created_by": created_by, "created_at": time.time(), "kind": "hdf5", "origin": "uploaded",
            "size_bytes": path.stat().st_size,
            "thumbnails": archives.thumbnail_picks(labels, info["class_names"], THUMBNAILS_PER_CLASS)}


# ------------------------------------------------------------------------------- annotated images


def check_annotations(config: Config, store: Store, annotated: archives.AnnotatedZip, params: dict,
                      role: str | None) -> tuple[list[str], dict[str, str]]:
    """Check an annotated zip against the label set and the stored images; ``(unknown labels, ids)``.

    Raises:
        InvalidInput: unknown labels (named) when ``unknown_labels`` is ``refuse``, ids taken without
            ``overwrite``, two images with one id (field ``file``). AdminOnly: ``add`` by one who is no
            admin (any more).
    """
    known = annotation.read_labels(config)
    unknown = [label for label in annotated.labels if label not in known]
    if unknown and params["unknown_labels"] == "refuse":
        raise InvalidInput(f"'file': labels not in the label set: {', '.join(unknown[:50])}; send "
                           f"unknown_labels=drop to import without them, or =add (admin) to add them", "file")
    if unknown and params["unknown_labels"] == "add" and role != "admin":
        raise AdminOnly("'unknown_labels': only an admin may add labels to the label set (unknown_labels=add)")
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


def _import_annotations(ctx: JobContext, upload: Path, params: dict) -> dict:
    """Check every image first (nothing is stored if one is bad and not skipped), then store and label."""
    config, store = ctx.config, ctx.store
    annotated = archives.read_annotated_zip(upload, zip_limits(config))
    user = ctx.record().get("created_by")
    creator = store.get_user(user) if user else None
    unknown, ids = check_annotations(config, store, annotated, params, creator["role"] if creator else None)
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
    return {"format": "zip", "layout": "annotations", "annotation_file": annotated.annotation_file,
            "images": len(annotated.items), "labels": annotated.labels, "imported": len(stored),
            "id_names": stored[:1000], "unknown_labels": unknown,
            "unknown_labels_policy": params["unknown_labels"], "skipped_images": bad,
            "missing_images": annotated.missing[:1000], "unannotated_images": annotated.unannotated[:1000]}


# --------------------------------------------------------------------------------------- the catalog


def list_datasets(config: Config, store: Store) -> list[dict]:
    """Every dataset of the catalog, newest first, as the API shows them."""
    return [view(config, row) for row in store.list_datasets()]


def view(config: Config, row: dict) -> dict:
    """A catalog row with totals, folders, and its size on disk (measured when the row lacks it)."""
    out = dataset_view(config, row)
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
    """What needs the dataset: queued or running jobs that read it, and trained models made from it."""
    path = config.path("datasets").resolve() / f"{name}.hdf5"
    found = []
    for status in ACTIVE_STATUSES:
        for job in store.list_jobs(status=status, limit=1000):
            if _reads(config, job["params"], path) or job["params"].get("name") == name:
                found.append(f"{job['kind']} job {job['id']} ({status})")
    for model in store.list_models():
        job = store.get_job(model["job_id"]) if model.get("job_id") else None
        if job is not None and _reads(config, job["params"], path):
            found.append(f"model {model['id']} ({model['model_name']})")
    return found


def _reads(config: Config, params: dict, path: Path) -> bool:
    raw = params.get("hdf5_path") if isinstance(params, dict) else None
    if not raw or params.get("dataset", "hdf5") != "hdf5":
        return False
    try:
        return resolve_under(config.path("datasets"), raw, "hdf5_path") == path
    except InvalidInput:
        return False


def delete_dataset(config: Config, store: Store, name: str) -> None:
    """Delete a dataset's file, its export and its row; refused while a job or a model needs it.

    Raises:
        UnknownDataset: no such dataset. DatasetInUse: something needs it.
    """
    row = get_dataset(store, name)
    needed = references(config, store, name)
    if needed:
        raise DatasetInUse(f"dataset '{name}' is needed by {', '.join(needed[:10])}; delete those first")
    store.delete_dataset(name)
    config.path(row["path"]).unlink(missing_ok=True)
    export_zip_path(config, name).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- export


def export_zip_path(config: Config, name: str) -> Path:
    return config.path("exports", f"{name}-dataset.zip")


def export_zip(config: Config, row: dict) -> Path:
    """A zip of ``<name>/train|test/<class>/*.png`` (made once, kept in ``DATA_DIR/exports``)."""
    target = export_zip_path(config, row["id"])
    source = config.path(row["path"])
    if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        archives.write_hdf5_as_zip(source, temp, row["class_names"], row["id"])
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target


def export_file(config: Config, row: dict, fmt: str) -> tuple[Path, str]:
    """The file to download and its name: the HDF5 itself, or the zip of class folders."""
    if fmt == "zip":
        return export_zip(config, row), f"{row['id']}.zip"
    return config.path(row["path"]), f"{row['id']}.hdf5"

