"""Augmentation routes: the legacy API's ``/api/v1/generate``, backgrounds.

Each route translates HTTP into one action of ``services.app.generate`` (the Augment page calls the same ones).
The dataset catalog (``/api/v1/datasets``) is served by ``services/web/routes/datasets.py``.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, request
from pydantic import BaseModel

from services.app import generate
from services.web.http import ApiError, actor, endpoint, ok, run_blocking

bp = Blueprint("generate", __name__)


class BackgroundForm(BaseModel):
    """The form fields of ``POST /api/v1/backgrounds`` (the picture travels as multipart field ``file``)."""

    split: Literal["train", "test"] | None = None


@endpoint(bp, "/api/v1/generate", ("POST",), action="datasets.generate", body=generate.GenerateBody)
def post_generate(body: generate.GenerateBody):
    """Queue one job that writes an augmented HDF5 dataset from the object library (answers 202)."""
    job_id = generate.submit_generation(actor(), body)
    return ok({"jobs": [job_id], "job_id": job_id}, 202)


@endpoint(bp, "/api/v1/backgrounds", action="backgrounds.read")
def list_backgrounds():
    """Every background with its split (train or test) and origin (shipped or user)."""
    found = generate.read_backgrounds(actor())
    return ok({"backgrounds": [generate.background_view(b) for b in found.files], "counts": found.counts})


@endpoint(bp, "/api/v1/backgrounds", ("POST",), action="backgrounds.upload", body=BackgroundForm, form=True)
def post_background(body: BackgroundForm):
    """Add a background (multipart ``file``; ``split`` train or test, default the smaller set)."""
    upload = request.files.get("file")
    if upload is None:
        raise ApiError(400, "missing_file", "send the image as the multipart field 'file'", "file")
    bg = run_blocking(generate.add_background, actor(), upload.read(), body.split)  # decodes the picture
    return ok(generate.background_view(bg))
