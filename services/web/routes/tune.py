"""Hyperparameter search routes: launch a study, read it, stop it, train its best configuration."""

from __future__ import annotations

from flask import Blueprint

from services.app import tuning  # importing tuning registers the "tune" and "tune-trial" job kinds
from services.app.tuning import TuneRequest
from services.web.http import actor, endpoint, ok, run_blocking

bp = Blueprint("tune", __name__)


@endpoint(bp, "/api/v1/tune", ("POST",), action="tune.submit", body=TuneRequest)
def launch_study(body: TuneRequest):
    """Start a hyperparameter study (Optuna; each trial an RQ job); answers 202 with the study id."""
    # Checking the study's data reads the dataset: never on the event loop.
    launched = run_blocking(tuning.launch, actor(), body)
    return ok({**launched, "jobs": launched["job_id"]}, 202)


@endpoint(bp, "/api/v1/tune", action="tune.read")
def list_studies():
    """Studies, newest first, with progress and best trial."""
    return ok({"studies": tuning.read_studies(actor())})


@endpoint(bp, "/api/v1/tune/<study_id>", action="tune.read")
def get_study(study_id: str):
    """One study: status, progress, the trials table and the best trial."""
    return ok(tuning.read_study(actor(), study_id))


@endpoint(bp, "/api/v1/tune/<study_id>/stop", ("POST",), action="tune.stop")
def stop_study(study_id: str):
    """Stop a study: queued trials are cancelled, running ones stop at their next check, none is added."""
    return ok(tuning.stop(actor(), study_id))


@endpoint(bp, "/api/v1/tune/<study_id>/train-best", ("POST",), action="tune.train_best")
def train_best(study_id: str):
    """Train the best configuration found so far in full (``num_epochs``); answers 202 with the job id."""
    started = run_blocking(tuning.train_best, actor(), study_id)
    return ok({**started, "jobs": started["job_id"]}, 202)
