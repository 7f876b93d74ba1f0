"""Segmentation routes: the legacy API's ``/api/v1/segment`` and the object library it fills."""

from __future__ import annotations

from flask import Blueprint, send_file

from services.app import segment
from services.web.http import ApiError, actor, endpoint, ok

bp = Blueprint("segment", __name__)


@endpoint(bp, "/api/v1/segment", ("POST",), action="objects.segment", body=segment.SegmentBody, heavy=True)
def post_segment(body: segment.SegmentBody):
    """GrabCut the object inside the box (x1, y1, x2, y2) and save it as an object of class ``ean``."""
    return ok(segment.segment(actor(), body).answer())


@endpoint(bp, "/api/v1/objects", action="objects.read", query=segment.ObjectsQuery)
def list_objects(query: segment.ObjectsQuery):
    """The object library, newest first, optionally one class; with the number of objects per class."""
    who = actor()
    rows = segment.read_objects(who, query)
    return ok({"objects": [segment.object_view(r) for r in rows], "count": len(rows),
               "classes": segment.class_counts(who.store)})


@endpoint(bp, "/api/v1/objects/<object_id>/image", action="objects.read")
def object_image(object_id: str):
    """The object's RGBA cut-out as a PNG file."""
    who = actor()
    path = segment.object_file(who.config, segment.read_objects(who, object_id))
    if not path.is_file():
        raise ApiError(404, "not_found", f"the file of object '{object_id}' is missing", "object_id")
    return send_file(path, mimetype="image/png", max_age=0)


@endpoint(bp, "/api/v1/objects/<object_id>", ("DELETE",), action="objects.delete")
def delete_object(object_id: str):
    """Remove an object from the library (its catalog row, then its file)."""
    row = segment.remove_object(actor(), object_id)
    return ok({"deleted": row["id"], "class_name": row["class_name"]})
