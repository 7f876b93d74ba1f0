"""Training and inference routes: the legacy API's ``/api/v1/train`` and ``/api/v1/predict``, resume,
the model zoo, and the trained models (list, activate, export, delete)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from flask import Blueprint, g, send_file
from pydantic import BaseModel, Field

from engine.images import decode_image
from engine.models import list_models
from services.app import predictions, training
from services.app.training import TrainRequest
from services.web.http import ApiError, endpoint, ok, run_blocking, studio

bp = Blueprint("train", __name__)


class ResumeQuery(BaseModel):
    num_epochs: int | None = Field(None, ge=1, le=1_000_000, description="a new total; default: the original")


class ExportQuery(BaseModel):
    format: Literal[tuple(training.EXPORT_SUFFIXES)] = "torchscript"


class PredictBody(BaseModel):
    """The legacy API's ``/predict`` body, plus an optional model id (default: the active, else the best model)."""

    image: str = Field(description="base64 or a data URL")
    model: str | None = None


@endpoint(bp, "/api/v1/train", ("POST",), action="train.submit", body=TrainRequest)
def train(body: TrainRequest):
    """Start a training job (the legacy API's body); answers 202 with the job id."""
    # The checks read the dataset (every image, for the split check): never on the event loop.
    job_id = run_blocking(training.submit_training, studio().config, studio().store, body, g.user["username"])
    return ok({"jobs": job_id, "job_id": job_id}, 202)


@endpoint(bp, "/api/v1/jobs/<job_id>/resume", ("POST",), action="train.resume", query=ResumeQuery)
def resume(job_id: str, query: ResumeQuery):
    """Continue a stopped training job from its last checkpoint, as a new job (202)."""
    new_id = run_blocking(training.resume, studio().config, studio().store, job_id, g.user["username"],
                          query.num_epochs)
    return ok({"jobs": new_id, "job_id": new_id, "resumed_from": job_id}, 202)


@endpoint(bp, "/api/v1/models", action="models.zoo")
def models():
    """The model zoo: name, default input size and a one-line description of every registered model."""
    return ok({"models": [dataclasses.asdict(info) for info in list_models()]})


@endpoint(bp, "/api/v1/models/trained", action="models.read")
def trained_models():
    """Trained models with their metrics and active flag, newest first (clients see no file paths)."""
    rows = training.list_trained(studio().store)
    if g.user["role"] == "client":
        rows = [{k: v for k, v in row.items() if k != "path"} for row in rows]
    return ok({"models": rows})


@endpoint(bp, "/api/v1/models/<model_id>/activate", ("POST",), action="models.manage")
def activate(model_id: str):
    """Make a model the default for predictions of its kind (single- or multi-label)."""
    return ok(training.activate(studio().store, model_id))


@endpoint(bp, "/api/v1/models/<model_id>/export", action="models.manage", query=ExportQuery)
def export(model_id: str, query: ExportQuery):
    """Download the model as TorchScript or ONNX (class names and preprocessing inside as metadata)."""
    row = training.get_model(studio().store, model_id)
    path = training.export_file(studio().config, row, query.format)
    name = f"{row['model_name']}-{model_id[:8]}{path.suffix}"
    return send_file(path, as_attachment=True, download_name=name, mimetype="application/octet-stream")


@endpoint(bp, "/api/v1/models/<model_id>", ("DELETE",), action="models.manage")
def delete(model_id: str):
    """Delete a trained model: its catalog row, checkpoints and exports."""
    training.delete_model(studio().config, studio().store, model_id)
    return ok({"deleted": model_id})


@endpoint(bp, "/api/v1/predict", ("POST",), action="predict", body=PredictBody, heavy=True)
def predict(body: PredictBody):
    """Classify one image (the legacy API's body); single-label ``results``, multi-label ``predict_tags``."""
    config, store = studio().config, studio().store
    row = predictions.choose_model(store, body.model)
    if row is None and body.model is not None:  # a catalog look-up: cheaper than any decode
        raise ApiError(404, "not_found", f"no trained model {body.model!r}", "model")
    # The image is checked next: an oversized one is a 413 whether or not a model exists yet.
    image = decode_image(body.image, "image", config.max_image_pixels, config.image_budget_mb * 2**20,
                         max_side=predictions.PREDICT_MAX_SIDE)
    if row is None:
        raise ApiError(409, "no_model", "no trained model yet: train one with POST /api/v1/train", "model")
    answer = predictions.predict(config, row, image)
    return ok(legacy_answer(answer))


def legacy_answer(answer: dict) -> dict:
    """The engine's prediction in the legacy API's shape."""
    if "tags" in answer:
        return {"predict_tags": answer["tags"], "scores": answer["scores"], "model": answer["model"]}
    return {"results": answer["label"], "confidence": answer["confidence"],
            "probabilities": answer["probabilities"], "model": answer["model"]}
