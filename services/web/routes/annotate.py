"""Annotation routes: the legacy API's ``/imgup`` and ``/imginfo``, labels, label sets, exports."""

from __future__ import annotations

from flask import Blueprint, Response, request
from pydantic import BaseModel, Field

from services.app import annotation, predictions, suggestions
from services.web.http import ApiError, actor, endpoint, heavy_slot, ok, run_blocking, studio

bp = Blueprint("annotate", __name__)


class UploadForm(BaseModel):
    """The form fields of ``POST /imgup`` (the file travels as multipart field ``file``)."""

    id_name: str
    overwrite: bool = False


class ImgInfoQuery(BaseModel):
    id_name: str


class LabelsBody(BaseModel):
    """A list of labels: an image's (``PUT /api/v1/annotations/<id>``) or the label set's."""

    labels: list[str]


class AnnotationsQuery(BaseModel):
    unlabelled: bool = False
    label: str | None = None
    uploaded_by: str | None = None
    limit: int = Field(1000, ge=1, le=10000)


class ExportQuery(BaseModel):
    format: annotation.ExportFormat = "csv"


def _uploaded_bytes() -> bytes:
    upload = request.files.get("file")
    if upload is None:
        raise ApiError(400, "missing_file", "send the image as the multipart field 'file'", "file")
    return upload.read()


@endpoint(bp, "/imgup", ("POST",), action="images.upload", body=UploadForm, form=True)
def imgup(body: UploadForm):
    """Upload an image (multipart ``file`` + ``id_name``, optional ``overwrite=1``); answers suggested tags."""
    if suggestions.annotation_model(studio().config, studio().store)[0] is not None:
        # A model will suggest tags: its stack (torch) loads here, on the loop's own thread (see /predict).
        predictions.load_serving()
    with heavy_slot():  # at most heavy_requests decoded images at a time
        row = run_blocking(_upload, body)
    return ok({"image_id": row["id_name"], "predict_tags": row["predict_tags"]})


def _upload(body: UploadForm):
    # Who may replace whose image is annotation's rule (the page and the zip import ask it too); its refusal
    # (NotYourImage) is a 403 naming id_name, as every Forbidden an action raises.
    return annotation.upload_image(actor(), annotation.Upload(body.id_name, _uploaded_bytes(), body.overwrite))


@endpoint(bp, "/imginfo", action="images.read", query=ImgInfoQuery)
def imginfo_by_query(query: ImgInfoQuery):
    """The legacy API's image info: suggested tags, EXIF date, GPS, confirmed labels, signed coordinates."""
    return ok(annotation.read_image(actor(), query.id_name))


@endpoint(bp, "/imginfo/<id_name>", action="images.read")
def imginfo_by_path(id_name: str):
    """The legacy API's image info, with the id in the path."""
    return ok(annotation.read_image(actor(), id_name))


@endpoint(bp, "/api/v1/labels", action="labels.read")
def get_labels():
    """The label set and the labels images carry."""
    return ok(annotation.read_label_set(actor()))


@endpoint(bp, "/api/v1/labels", ("PUT",), action="labels.edit", body=LabelsBody)
def put_labels(body: LabelsBody):
    """Replace the label set (admin); labels still used by images cannot be dropped."""
    return ok(annotation.edit_label_set(actor(), body.labels))


@endpoint(bp, "/api/v1/annotations", action="annotations.read", query=AnnotationsQuery)
def list_annotations(query: AnnotationsQuery):
    """Images and their labels, newest first; filters: unlabelled, label, uploaded_by."""
    rows = annotation.read_annotations(actor(), annotation.ImagesQuery(**query.model_dump()))
    return ok({"images": [annotation.image_view(r) for r in rows], "count": len(rows)})


@endpoint(bp, "/api/v1/annotations/export", action="annotations.export", query=ExportQuery)
def export_annotations(query: ExportQuery):
    """The labelled set as a CSV (Id + one 0/1 column per label) or COCO-style JSON download."""
    # A file to save as-is: no "status_code" key mixed into the COCO document.
    text = annotation.export_annotations(actor(), query.format)
    mimetype = "text/csv" if query.format == "csv" else "application/json"
    filename = f"newdata-labels.{'csv' if query.format == 'csv' else 'json'}"
    return Response(text, mimetype=mimetype, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@endpoint(bp, "/api/v1/annotations/<id_name>", action="annotations.read")
def get_annotation(id_name: str):
    """One image: its catalog record and confirmed labels."""
    return ok(annotation.image_view(annotation.read_annotations(actor(), id_name)))


@endpoint(bp, "/api/v1/annotations/<id_name>", ("PUT",), action="annotations.save", body=LabelsBody)
def put_annotation(id_name: str, body: LabelsBody):
    """Confirm an image's labels (only labels of the label set; an empty list means none apply)."""
    return ok(annotation.save_labels(actor(), id_name, body.labels))
