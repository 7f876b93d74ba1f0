"""Hyperparameter search routes: launch a study, read it, stop it, train its best configuration."""

from __future__ import annotations

from flask import Blueprint, g

from services import tuning  # importing tuning registers the "tune" and "tune-trial" job kinds
from services.tuning import TuneRequest
from services.web import endpoint, ok, run_blocking, studio

bp = Blueprint("tune", __name__)
OPERATORS = ("operator",)


@endpoint(bp, "/api/v1/tune", ("POST",), roles=OPERATORS, body=TuneRequest, submits_job=True)
def launch_study(body: TuneRequest):
    """Start a hyperparameter study (Optuna; each trial an RQ job); answers 202 with the study id."""
    # Checking the study's data reads the dataset: never on the event loop.
    launched = run_blocking(tuning.launch, studio().config, studio().store, body, g.user["username"])
    return ok({**launched, "jobs": launched["job_id"]}, 202)


@endpoint(bp, "/api/v1/tune", roles=OPERATORS)
def list_studies():
    """Studies, newest first, with progress and best trial."""
    return ok({"studies": tuning.list_studies(studio().store)})


@endpoint(bp, "/api/v1/tune/<study_id>", roles=OPERATORS)
def get_study(study_id: str):
    """One study: status, progress, the trials table and the best trial."""
    return ok(tuning.study_view(studio().config, studio().store, study_id))


@endpoint(bp, "/api/v1/tune/<study_id>/stop", ("POST",), roles=OPERATORS)
def stop_study(study_id: str):
    """Stop a study: queued trials are cancelled, running ones stop at their next check, none is added."""
    return ok(tuning.stop(studio().config, studio().store, study_id))


@endpoint(bp, "/api/v1/tune/<study_id>/train-best", ("POST",), roles=OPERATORS, submits_job=True)
def train_best(study_id: str):
    """Train the best configuration found so far in full (``num_epochs``); answers 202 with the job id."""
    started = run_blocking(tuning.train_best, studio().config, studio().store, study_id, g.user["username"])
    return ok({**started, "jobs": started["job_id"]}, 202)
