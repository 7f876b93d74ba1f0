"""Augmentation routes: the legacy API's ``/api/v1/generate``, backgrounds.

The dataset catalog (``/api/v1/datasets``) is served by ``services/web/routes/datasets.py``.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, g, request
from pydantic import BaseModel

from services.app import generate
from services.web.http import ApiError, endpoint, ok, studio

bp = Blueprint("generate", __name__)


class BackgroundForm(BaseModel):
    """The form fields of ``POST /api/v1/backgrounds`` (the picture travels as multipart field ``file``)."""

    split: Literal["train", "test"] | None = None


@endpoint(bp, "/api/v1/generate", ("POST",), action="datasets.generate", body=generate.GenerateBody)
def post_generate(body: generate.GenerateBody):
    """Queue one job that writes an augmented HDF5 dataset from the object library (answers 202)."""
    job_id = generate.submit_generation(studio().config, studio().store, body, g.user["username"])
    return ok({"jobs": [job_id], "job_id": job_id}, 202)


@endpoint(bp, "/api/v1/backgrounds", action="backgrounds.read")
def list_backgrounds():
    """Every background with its split (train or test) and origin (shipped or user)."""
    files = generate.list_background_files(studio().config)
    counts = {split: sum(1 for b in files if b.split == split) for split in ("train", "test")}
    return ok({"backgrounds": [generate.background_view(b) for b in files], "counts": counts})


@endpoint(bp, "/api/v1/backgrounds", ("POST",), action="backgrounds.upload", body=BackgroundForm, form=True)
def post_background(body: BackgroundForm):
    """Add a background (multipart ``file``; ``split`` train or test, default the smaller set)."""
    upload = request.files.get("file")
    if upload is None:
        raise ApiError(400, "missing_file", "send the image as the multipart field 'file'", "file")
    bg = generate.add_background(studio().config, upload.read(), body.split)
    return ok(generate.background_view(bg))
