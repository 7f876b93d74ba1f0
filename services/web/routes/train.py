"""Training and inference routes: the legacy API's ``/api/v1/train`` and ``/api/v1/predict``, resume,
the model zoo, and the trained models (list, activate, export, delete).

Each route translates HTTP into one action of ``services.app`` (the same function the pages call) and its
answer back; the rules (roles, quotas, what clients may see) are the actions'.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, send_file
from pydantic import BaseModel, Field

from services.app import model_catalog, predictions, training
from services.app.train_request import TrainRequest
from services.web.http import ApiError, actor, endpoint, heavy_slot, ok, run_blocking

bp = Blueprint("train", __name__)


class ResumeQuery(BaseModel):
    num_epochs: int | None = Field(None, ge=1, le=1_000_000, description="a new total; default: the original")


class ExportQuery(BaseModel):
    format: Literal[tuple(model_catalog.EXPORT_SUFFIXES)] = "torchscript"


class PredictBody(BaseModel):
    """The legacy API's ``/predict`` body, plus an optional model id (default: the active, else the best model)."""

    image: str = Field(description="base64 or a data URL")
    model: str | None = None


@endpoint(bp, "/api/v1/train", ("POST",), action="train.submit", body=TrainRequest)
def train(body: TrainRequest):
    """Start a training job (the legacy API's body); answers 202 with the job id."""
    if body.weights:  # checked against its model: torch loads here, on the loop's thread (see predict)
        training.load_weights_check()
    # The checks list folders and read an HDF5 file's declared shapes and labels: not on the event loop.
    job_id = run_blocking(training.submit_training, actor(), body)
    return ok({"jobs": job_id, "job_id": job_id}, 202)


@endpoint(bp, "/api/v1/jobs/<job_id>/resume", ("POST",), action="train.resume", query=ResumeQuery)
def resume(job_id: str, query: ResumeQuery):
    """Continue a stopped training job from its last checkpoint, as a new job (202)."""
    new_id = run_blocking(training.resume, actor(), job_id, query.num_epochs)
    return ok({"jobs": new_id, "job_id": new_id, "resumed_from": job_id}, 202)


@endpoint(bp, "/api/v1/models", action="models.zoo")
def models():
    """The model zoo: name, default input size and a one-line description of every registered model."""
    return ok({"models": model_catalog.zoo(actor())})


@endpoint(bp, "/api/v1/models/trained", action="models.read")
def trained_models():
    """Trained models with their metrics and active flag, newest first (clients see no file paths)."""
    return ok({"models": model_catalog.trained_models(actor())})


@endpoint(bp, "/api/v1/models/<model_id>/activate", ("POST",), action="models.manage")
def activate(model_id: str):
    """Make a model the default for predictions of its kind (single- or multi-label)."""
    return ok(model_catalog.manage(actor(), model_catalog.ModelChange(model_id=model_id, op="activate"))["model"])


@endpoint(bp, "/api/v1/models/<model_id>/export", action="models.manage", query=ExportQuery)
def export(model_id: str, query: ExportQuery):
    """Download the model as TorchScript or ONNX (class names and preprocessing inside as metadata)."""
    change = model_catalog.ModelChange(model_id=model_id, op="export", format=query.format)
    predictions.load_serving()  # the exporter is the serving stack's: loaded on the loop's thread (see predict)
    done = run_blocking(model_catalog.manage, actor(), change)  # an ONNX export takes seconds
    path = done["file"]
    name = f"{done['model']['model_name']}-{model_id[:8]}{path.suffix}"
    return send_file(path, as_attachment=True, download_name=name, mimetype="application/octet-stream")


@endpoint(bp, "/api/v1/models/<model_id>", ("DELETE",), action="models.manage")
def delete(model_id: str):
    """Delete a trained model: its catalog row, checkpoints and exports."""
    return ok(model_catalog.manage(actor(), model_catalog.ModelChange(model_id=model_id, op="delete")))


@endpoint(bp, "/api/v1/predict", ("POST",), action="predict", body=PredictBody)
def predict(body: PredictBody):
    """Classify one image (the legacy API's body); single-label ``results``, multi-label ``predict_tags``."""
    # The serving stack (torch) loads with the first prediction, here on the loop's own thread: its import
    # starts a subprocess, which gevent runs from nowhere else, and holds the interpreter wherever it runs.
    predictions.load_serving()
    try:
        with heavy_slot():  # at most heavy_requests decoded images at a time
            prediction = run_blocking(predictions.predict_image, actor(), body.image, body.model)
    except predictions.NoModel as exc:
        raise ApiError(409, "no_model", str(exc), "model") from None
    return ok(legacy_answer(prediction.answer))


def legacy_answer(answer: dict) -> dict:
    """The engine's prediction in the legacy API's shape."""
    if "tags" in answer:
        return {"predict_tags": answer["tags"], "scores": answer["scores"], "model": answer["model"]}
    return {"results": answer["label"], "confidence": answer["confidence"],
            "probabilities": answer["probabilities"], "model": answer["model"]}
