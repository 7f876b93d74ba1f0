"""Segmentation routes: the legacy API's ``/api/v1/segment`` and the object library it fills."""

from __future__ import annotations

from flask import Blueprint, g, send_file
from pydantic import BaseModel, Field

from services.app import segment
from services.web.http import ApiError, endpoint, ok, studio

bp = Blueprint("segment", __name__)


class ObjectsQuery(BaseModel):
    class_name: str | None = Field(None, max_length=segment.MAX_CLASS_NAME, description="only this class")
    limit: int = Field(1000, ge=1, le=100_000)


@endpoint(bp, "/api/v1/segment", ("POST",), action="objects.segment", body=segment.SegmentBody, heavy=True)
def post_segment(body: segment.SegmentBody):
    """GrabCut the object inside the box (x1, y1, x2, y2) and save it as an object of class ``ean``."""
    config, store = studio().config, studio().store
    result = segment.segment(config, store, body, g.user["username"])
    return ok(result)


@endpoint(bp, "/api/v1/objects", action="objects.read", query=ObjectsQuery)
def list_objects(query: ObjectsQuery):
    """The object library, newest first, optionally one class; with the number of objects per class."""
    store = studio().store
    rows = segment.list_objects(store, query.class_name, query.limit)
    return ok({"objects": [segment.object_view(r) for r in rows], "count": len(rows),
               "classes": segment.class_counts(store)})


@endpoint(bp, "/api/v1/objects/<object_id>/image", action="objects.read")
def object_image(object_id: str):
    """The object's RGBA cut-out as a PNG file."""
    row = segment.get_object(studio().store, object_id)
    path = segment.object_file(studio().config, row)
    if not path.is_file():
        raise ApiError(404, "not_found", f"the file of object '{object_id}' is missing", "object_id")
    return send_file(path, mimetype="image/png", max_age=0)


@endpoint(bp, "/api/v1/objects/<object_id>", ("DELETE",), action="objects.delete")
def delete_object(object_id: str):
    """Remove an object from the library (its catalog row, then its file)."""
    row = segment.delete_object(studio().config, studio().store, object_id)
    return ok({"deleted": row["id"], "class_name": row["class_name"]})
