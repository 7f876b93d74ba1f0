"""Annotation routes: the legacy API's ``/imgup`` and ``/imginfo``, labels, label sets, exports."""

from __future__ import annotations

import json
from typing import Literal

from flask import Blueprint, Response, g, request
from pydantic import BaseModel, Field

from services.app import annotation
from services.web.http import ApiError, endpoint, ok, studio

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
    format: Literal["csv", "coco"] = "csv"


def _uploaded_bytes() -> bytes:
    upload = request.files.get("file")
    if upload is None:
        raise ApiError(400, "missing_file", "send the image as the multipart field 'file'", "file")
    return upload.read()


@endpoint(bp, "/imgup", ("POST",), action="images.upload", body=UploadForm, form=True, heavy=True)
def imgup(body: UploadForm):
    """Upload an image (multipart ``file`` + ``id_name``, optional ``overwrite=1``); answers suggested tags."""
    data = _uploaded_bytes()
    try:
        # Who may replace whose image is annotation's rule (the page and the zip import ask it too).
        row = annotation.store_upload(studio().config, studio().store, body.id_name, data, g.user["username"],
                                      overwrite=body.overwrite)
    except annotation.NotYourImage as exc:
        raise ApiError(403, "forbidden", str(exc), exc.field) from None
    return ok({"image_id": row["id_name"], "predict_tags": row["predict_tags"]})


@endpoint(bp, "/imginfo", action="images.read", query=ImgInfoQuery)
def imginfo_by_query(query: ImgInfoQuery):
    """The legacy API's image info: suggested tags, EXIF date, GPS, confirmed labels, signed coordinates."""
    return ok(annotation.imginfo(studio().store, query.id_name))


@endpoint(bp, "/imginfo/<id_name>", action="images.read")
def imginfo_by_path(id_name: str):
    """The legacy API's image info, with the id in the path."""
    return ok(annotation.imginfo(studio().store, id_name))


@endpoint(bp, "/api/v1/labels", action="labels.read")
def get_labels():
    """The label set and the labels images carry."""
    return ok(annotation.label_set_view(studio().config, studio().store))


@endpoint(bp, "/api/v1/labels", ("PUT",), action="labels.edit", body=LabelsBody)
def put_labels(body: LabelsBody):
    """Replace the label set (admin); labels still used by images cannot be dropped."""
    return ok(annotation.set_label_set(studio().config, studio().store, body.labels))


@endpoint(bp, "/api/v1/annotations", action="annotations.read", query=AnnotationsQuery)
def list_annotations(query: AnnotationsQuery):
    """Images and their labels, newest first; filters: unlabelled, label, uploaded_by."""
    rows = annotation.list_images(studio().config, studio().store, query.unlabelled, query.label,
                                  query.uploaded_by, query.limit)
    return ok({"images": [annotation.image_view(r) for r in rows], "count": len(rows)})


@endpoint(bp, "/api/v1/annotations/export", action="annotations.export", query=ExportQuery)
def export_annotations(query: ExportQuery):
    """The labelled set as a CSV (Id + one 0/1 column per label) or COCO-style JSON download."""
    config = studio().config
    if query.format == "csv":
        text, mimetype = annotation.export_csv(config, studio().store), "text/csv"
    else:
        # A file to save as-is: no "status_code" key mixed into the COCO document.
        text, mimetype = json.dumps(annotation.export_coco(config, studio().store), indent=2), "application/json"
    filename = f"newdata-labels.{'csv' if query.format == 'csv' else 'json'}"
    return Response(text, mimetype=mimetype, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@endpoint(bp, "/api/v1/annotations/<id_name>", action="annotations.read")
def get_annotation(id_name: str):
    """One image: its catalog record and confirmed labels."""
    return ok(annotation.image_view(annotation.get_image(studio().store, id_name)))


@endpoint(bp, "/api/v1/annotations/<id_name>", ("PUT",), action="annotations.save", body=LabelsBody)
def put_annotation(id_name: str, body: LabelsBody):
    """Confirm an image's labels (only labels of the label set; an empty list means none apply)."""
    view = annotation.set_labels(studio().config, studio().store, id_name, body.labels, g.user["username"])
    return ok(view)
