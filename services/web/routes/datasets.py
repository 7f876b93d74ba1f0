"""Dataset routes: upload and import (``POST /api/v1/datasets``), the catalog, export and delete.

Each route translates HTTP into one action of ``services.app.datasets`` (the Datasets page calls the same ones).
The upload route reads its body under ``MAX_DATASET_MB`` instead of the JSON limit ``MAX_UPLOAD_MB``, and
its file part is streamed to ``DATA_DIR/uploads`` (never held in memory). The request reads no more of the
file than its first bytes and a zip's end record; the ``import_dataset`` job inspects the rest. The formats
(accepted, refused with their names, exported) are those of the registry, ``engine.formats``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from flask import Blueprint, g, request, send_file
from pydantic import BaseModel, Field
from werkzeug.exceptions import RequestEntityTooLarge

from engine import formats
from services.app import datasets
from services.web.http import ApiError, actor, endpoint, ok, run_blocking, studio

bp = Blueprint("datasets", __name__)
UPLOAD_ENDPOINT = "datasets.upload_dataset"


ExportFormat = Literal[tuple(formats.export_formats())]  # the registry's words, checked and listed in the schema


class ExportQuery(BaseModel):
    format: ExportFormat = Field("hdf5", description="; ".join(
        f"{word}: {fmt.export_label}" for word, fmt in formats.export_formats().items()))


@bp.before_request
def _stream_uploads_to_disk():
    """Before the form is parsed: the dataset size limit, and file parts written under DATA_DIR."""
    if request.endpoint != UPLOAD_ENDPOINT:
        return
    limit = studio().config.max_dataset_mb * 1024 * 1024
    if request.content_length is not None and request.content_length > limit:
        raise _too_large()
    request.max_content_length = limit
    sink = datasets.UploadSink(studio().config.path("uploads"))
    g.dataset_upload_sink = sink
    # werkzeug asks the request for a stream per file part; this one writes to DATA_DIR/uploads.
    request._get_file_stream = sink


@bp.teardown_request
def _remove_unclaimed_uploads(_exc=None):
    sink = g.pop("dataset_upload_sink", None)
    if sink is not None:
        sink.cleanup()


def _too_large() -> ApiError:
    return ApiError(413, "too_large", f"the dataset exceeds MAX_DATASET_MB ({studio().config.max_dataset_mb} MB)",
                    "file")


@bp.errorhandler(RequestEntityTooLarge)
def _dataset_too_large(_exc):
    if request.endpoint == UPLOAD_ENDPOINT:
        return _too_large().response()
    return ApiError(413, "too_large", f"the request body exceeds {studio().config.max_upload_mb} MB").response()


@endpoint(bp, "/api/v1/datasets", ("POST",), action="datasets.import", body=datasets.UploadForm, form=True)
def upload_dataset(body: datasets.UploadForm):
    """Upload a dataset file in any known format (202): see the ``file`` field for the formats.

    The request only sniffs the file and reads a zip's end record (its declared entry count); the import job
    recognises the format and reads the rest, and its result (``GET /api/v1/jobs/<job_id>``) says what the
    file held or why it failed.
    """
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        kinds = " or ".join(c.noun for c in formats.list_containers())
        raise ApiError(400, "missing_file", f"send the dataset file ({kinds}) as the multipart field 'file'", "file")
    upload.stream.flush()
    path = Path(upload.stream.name)  # the sink's file under DATA_DIR/uploads; submit_import moves it
    job_id, found = datasets.submit_import(actor(), path, body, upload.filename)
    return ok({"job_id": job_id, "jobs": [job_id], "name": body.name, **found}, 202)


@endpoint(bp, "/api/v1/datasets", action="datasets.read")
def list_datasets():
    """Every dataset (generated and uploaded), newest first, with counts per split and class."""
    rows = datasets.read_datasets(actor())
    return ok({"datasets": rows, "count": len(rows)})


@endpoint(bp, "/api/v1/datasets/<dataset_id>", action="datasets.read")
def get_one(dataset_id: str):
    """One dataset: file, kind, origin, classes, counts, size on disk, thumbnail picks."""
    return ok(datasets.read_datasets(actor(), dataset_id)[0])


@endpoint(bp, "/api/v1/datasets/<dataset_id>", ("PATCH",), action="datasets.edit", body=datasets.DatasetChange)
def change(dataset_id: str, body: datasets.DatasetChange):
    """Change a dataset's properties: ``mirror_symmetric`` (whether its runs may flip images)."""
    return ok(datasets.change_dataset(actor(), dataset_id, body))


@endpoint(bp, "/api/v1/datasets/<dataset_id>", ("DELETE",), action="datasets.delete")
def delete(dataset_id: str):
    """Delete a dataset no queued or running job and no trained model needs (409 otherwise)."""
    datasets.delete_dataset(actor(), dataset_id)
    return ok({"deleted": dataset_id})


@endpoint(bp, "/api/v1/datasets/<dataset_id>/export", action="datasets.export", query=ExportQuery)
def export(dataset_id: str, query: ExportQuery):
    """Download a dataset in a format that exports (``format``): its HDF5 file, or a zip of class folders."""
    # A zip export decodes every image once (then it is kept): off the event loop.
    path, name = run_blocking(datasets.export_dataset, actor(), dataset_id, query.format)
    return send_file(path, as_attachment=True, download_name=name, mimetype="application/octet-stream")
