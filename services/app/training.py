"""Training as a service: the ``train.submit`` and ``train.resume`` actions and the ``train`` job kinds.

Both doors call the actions: ``services/web/routes/train.py`` and the Train page. A request is checked
without reading the data whole (``services.app.train_request``: listings, declared shapes, the label set) and
enqueued; the ``train`` job (its torch side in ``services.app.train_run``) checks the whole data first and
fails with the same message when it does not hold. This module imports no torch, so the web process, which
registers every job kind, never loads the ML stack; the job bodies import it on the worker.

The request model, the model catalog and the pages' folder browsing live in ``train_request``,
``model_catalog`` and ``train_folders``; their names used by other features are re-exported below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from engine.exceptions import Conflict, InvalidInput, NotFound  # noqa: F401  (re-exported for the studies)
from engine.run_config import Rendezvous
from services.app.model_catalog import delete_model, register_model  # noqa: F401  (re-exported for jobs)
from services.app.quotas import check_training_size
from services.app.rules import Actor, action
from services.app.train_request import (  # noqa: F401  (re-exported: the request, as other features name it)
    TRAIN_RESULT_TTL,
    TRAIN_TIMEOUT,
    TrainRequest,
    check_mirroring,
    check_request,
    checkpoint_dir,
    request_name,
    request_params,
    resolve_under,
    with_default_model,
)
from services.jobs import runtime as jobs
from services.jobs.runtime import JobContext, job_kind
from services.platform.config import Config
from services.storage.store import Store

if TYPE_CHECKING:
    from services.app.train_run import PreparedRun


# ------------------------------------------------------------------------------------------ actions
@action("train.submit")
def submit_training(actor: Actor, req: TrainRequest) -> str:
    """Check ``req`` against the data (bounded: listings and declared shapes; a weights file against its model)
    and enqueue a ``train`` job, which checks the whole data first; returns the job's id.

    Raises:
        InvalidInput: the request does not fit its data or the engine (the field is the request's name).
    """
    run_config, facts = check_request(actor.config, req)
    req, choice = with_default_model(req, facts)
    check_mirroring(actor.store, req)
    check_training_size(actor.config, actor.store, actor.username, req.num_epochs, facts.train_images)
    if run_config.weights_path:
        # A file that does not fit is refused now, naming its keys: building the model is the only way to tell.
        from services.app.train_run import check_weights_fit

        check_weights_fit(run_config)
    # The size and model the data chose are kept, so a resumed run and every machine of a run train alike.
    params = {**req.model_dump(), "image_size": run_config.image_size,
              **({"model_choice": dataclasses.asdict(choice)} if choice else {})}
    return _submit_run(actor.config, actor.store, params, actor.username)


def load_weights_check() -> None:
    """Import what checking a weights file against its model needs (torch) on the calling thread, if this
    process has not yet: a web process calls it from its event loop's thread before a run from a weights file."""
    import services.app.train_run  # noqa: F401  (torch, only for runs that start from a weights file)


@action("train.resume")
def resume(actor: Actor, job_id: str, num_epochs: int | None = None) -> str:
    """Enqueue a new ``train`` job that continues ``job_id`` from its ``last.pt``; returns the new id.

    Args:
        num_epochs: a new total (to train a finished run longer); default: the original total.

    Raises:
        NotFound: no training job ``job_id``.
        Conflict: the job is still queued or running, has no checkpoint, or already ran every epoch.
    """
    config, store = actor.config, actor.store
    record = store.get_job(job_id)
    if record is None or record["kind"] != "train":
        raise NotFound(f"no training job {job_id!r}", "job_id")
    record = jobs.read_job(config, store, record)
    if record["status"] not in jobs.TERMINAL:
        raise Conflict(f"job {job_id!r} is still {record['status']}; cancel it before resuming", "job_id")
    last = resumable_checkpoint(config, job_id)
    if last is None:
        raise Conflict(f"job {job_id!r} has no checkpoint to resume from", "job_id")
    params = {**request_params(record["params"]), **({"num_epochs": num_epochs} if num_epochs else {})}
    if params.get("learning_rate") == "auto":  # the rate the range test chose goes on, rather than a new test's
        found = next((h["lr_finder"] for h in record.get("history") or [] if "lr_finder" in h), None)
        params["learning_rate"] = found["chosen"] if found else params["learning_rate"]
    req = TrainRequest.model_validate(params)
    done = epochs_done(record)
    if done >= req.num_epochs:
        raise Conflict(f"job {job_id!r} already completed {done} of {req.num_epochs} epochs; "
                       "pass a larger num_epochs to train longer", "num_epochs")
    _, facts = check_request(config, req)
    check_mirroring(store, req)
    check_training_size(config, store, actor.username, req.num_epochs - done, facts.train_images)
    return _submit_run(config, store, {**req.model_dump(), "resumed_from": job_id,
                                       "resume_from": last.relative_to(config.data_dir).as_posix()}, actor.username)


def resumable_checkpoint(config: Config, job_id: str) -> Path | None:
    """The checkpoint a resume of ``job_id`` starts from, if the run wrote one (a run stopped while queued, or
    before its first epoch's checkpoint, has none: launch it again instead)."""
    last = checkpoint_dir(config, job_id) / "last.pt"
    return last if last.is_file() else None


def epochs_done(record: dict) -> int:
    """The epochs a training job completed, from its history (each epoch is recorded as its checkpoint is)."""
    history = record.get("history") or []
    return int(history[-1].get("epoch", len(history))) if history else 0


def _submit_run(config: Config, store: Store, params: dict, username: str | None) -> str:
    """Enqueue the run's ``train`` job and, for a run over several machines, one ``train_node`` job per
    other machine (each taken by another worker); returns the ``train`` job's id."""
    # A group of the runtime: its quota slots (one per machine) are counted at once.
    return jobs.submit_group(config, store, "train", params, username, params.get("nodes", 1),
                             lambda run_id, node: {**params, "run_id": run_id, "node_rank": node})


# --------------------------------------------------------------------------------------------- jobs
@job_kind("train", timeout=TRAIN_TIMEOUT, result_ttl=TRAIN_RESULT_TTL, shape="group", members="train_node",
          description="train a classifier (POST /api/v1/train); resumable from its last.pt")
def train(ctx: JobContext, params: dict) -> dict:
    """Check the whole data, then train (:func:`services.app.train_run.train`); the run's machine 0."""
    from services.app import train_run  # torch: imported by the worker's job, never by the web process

    resume_from = _resume_from(ctx, params.get("resume_from"))
    params = _at_the_checkpoint_size(params, resume_from)
    # A resumed run's history now starts with the epochs it already made: the quota counts the rest.
    record = ctx.record()
    run = train_run.checked_run(ctx.config, ctx.store, params, record["created_by"], epochs_done(record))
    return train_run.train(ctx, run, resume_from, _rendezvous(ctx, ctx.job_id, 0, run.request.nodes))


@job_kind("train_node", timeout=TRAIN_TIMEOUT, result_ttl=TRAIN_RESULT_TTL,
          description="one more machine's processes of a train job's run over several machines")
def train_node(ctx: JobContext, params: dict) -> dict:
    """Join the run of the ``train`` job ``run_id`` with this worker's processes; its rank 0 reports."""
    from services.app import train_run  # torch: imported by the worker's job, never by the web process

    resume_from = None
    if params.get("resume_from"):
        resume_from = resolve_under(ctx.config.path("checkpoints"), params["resume_from"].removeprefix(
            "checkpoints/"), "resume_from")
    params = _at_the_checkpoint_size(params, resume_from)
    run = train_run.prepare(ctx.config, TrainRequest.model_validate(request_params(params)))
    train_run.train_node(ctx, run, params["run_id"], resume_from,
                         _rendezvous(ctx, params["run_id"], params["node_rank"], run.request.nodes))
    return {"run_id": params["run_id"], "node_rank": params["node_rank"]}


def _rendezvous(ctx: JobContext, run_id: str, node_rank: int, nodes: int) -> Rendezvous | None:
    """Machine 0 publishes its store's address to the run's group; the others wait for it (the runtime's
    :meth:`services.jobs.runtime.JobContext.rendezvous`)."""
    if nodes == 1:
        return None
    meeting = ctx.rendezvous(run_id)
    return Rendezvous(nodes, node_rank, meeting.publish, meeting.lookup, meeting.host)


def _at_the_checkpoint_size(params: dict, resume_from: Path | None) -> dict:
    """A resumed run that named no ``image_size`` goes on at its checkpoint's (a run made before the data chose
    the size trained at the model's default)."""
    if resume_from is None or params.get("image_size") is not None:
        return params
    from engine import checkpoints  # torch: this runs in the worker's job

    return {**params, "image_size": max(checkpoints.load(resume_from).preprocessing["image_size"])}


def _resume_from(ctx: JobContext, raw: str | None) -> Path | None:
    """The checkpoint to continue from; its epochs become the start of this job's history."""
    if raw is None:
        return None
    from engine import checkpoints  # torch: this runs in the worker's job
    path = resolve_under(ctx.config.path("checkpoints"), raw.removeprefix("checkpoints/"), "resume_from")
    # One continuous history per job: the chart and /jobs show the earlier epochs too.
    ctx.record_history(checkpoints.load(path).history)
    return path


# ----------------------------------------------------------------------------- for the studies' trials
def prepare(config: Config, req: TrainRequest) -> PreparedRun:
    """:func:`services.app.train_run.prepare` (torch: builds the datasets), for callers that run in a job."""
    from services.app import train_run  # torch: only where a job builds the data

    return train_run.prepare(config, req)


def fit_head_on_cached_features(ctx: JobContext, run: PreparedRun, directory: Path, on_epoch: Callable[[dict], None],
                                should_stop: Callable[[], bool], resume_from: Path | None = None):
    """:func:`services.app.train_run.fit_head_on_cached_features`, for the studies' trial jobs."""
    from services.app import train_run  # torch: only in a job

    return train_run.fit_head_on_cached_features(ctx, run, directory, on_epoch, should_stop, resume_from)
