"""Hyperparameter search: Optuna studies whose trials are RQ jobs.

A *study* searches learning rate, batch size, weight decay, optimizer and model around a fixed
``/train`` request (:class:`TuneRequest` extends :class:`services.app.training.TrainRequest`; each trial is
a ``TrainRequest`` with the trial's choices, checked and mapped by ``services.app.training``).

Storage. The Optuna study lives in Optuna's journal storage on the studio's Redis, one journal per
study (keys ``studio:optuna:<study_id>:*``, expiring a week after the study ends, when the catalog holds
its result). Every worker already reaches that Redis for RQ, so workers on other machines share the
study without a shared file system (SQLite over NFS locks unreliably); Redis runs with append-only
persistence, and appending to a journal is atomic, so concurrent trials never overwrite each other.
One journal per study keeps loading a study cheap.

Scheduling works with a single worker. A study is a catalog job of kind ``tune``; its RQ job is
created *deferred* (it waits on its trials) so that RQ and the catalog agree the study is alive.
``POST /api/v1/tune`` enqueues ``min(parallel, n_trials)`` trial jobs (kind ``tune-trial``); each trial,
when it ends, calls :func:`advance`, which (under a Redis lock) enqueues the next trial while the study
wants more and is not stopped, and once no trial is left in flight enqueues the deferred ``tune`` job,
which records the best trial. Trials ask the study for their parameters themselves, so the TPE sampler
sees every trial finished so far; they report the test metric each epoch to the median pruner. A trial
killed without running its epilogue (a dead worker) is noticed when the study is read
(:func:`study_view`), which repairs the chain.

Budget. A non-admin's study is checked at launch (:func:`check_budget`): its job and the ``parallel`` trials
it keeps in flight count as that many of its owner's active jobs (``MAX_ACTIVE_JOBS_PER_USER``), and all its
trials together may make at most ``MAX_SAMPLE_EPOCHS`` image passes, the budget of one training run. Trials
are bounded by the study's declared ``parallel`` and ``n_trials``, not checked one by one.

Stopping a study raises its stop flag and cancels its queued trials; running ones stop at their next
check, and no trial is enqueued any more. Cancelling its ``tune`` job from the jobs API raises the same
flag; queued trials then end as cancelled as soon as a worker picks them up.
"""

from __future__ import annotations

import shutil
import time
import uuid
import warnings
from collections.abc import Callable

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalRedisBackend
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from rq.exceptions import NoSuchJobError
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from engine.exceptions import Cancelled, InvalidInput
from engine.models import get_model_info
from engine.training import OPTIMIZERS
from services.app import training
from services.app.quotas import check_job_quota, check_study_size
from services.app.training import Conflict, NotFound, TrainRequest
from services.app.validation import field_limits, invalid_input_from, open_floor
from services.jobs import runtime as jobs
from services.jobs.runtime import JobContext, job_kind, redis_connection
from services.platform.config import Config
from services.storage.store import Store

TUNE_KIND, TRIAL_KIND = "tune", "tune-trial"
JOURNAL_PREFIX = "studio:optuna:{}"
TRIALS_KEY = "studio:tune:{}:trials"  # the trial job ids of a study, in launch order
LOCK_KEY = "studio:tune:{}:lock"
RESULT_TTL = 7 * 24 * 3600
OBJECTIVE = "best per-epoch test_accuracy of the trial (test_map for multi-label data), maximised"


# ------------------------------------------------------------------------------------------ request
def _low_high(value: list[float] | None, floor: float, ceiling: float, open_floor: bool) -> list[float] | None:
    if value is None:
        return None
    if len(value) != 2:
        raise ValueError(f"must be [low, high], got {len(value)} numbers")
    low, high = value
    if low > high:
        raise ValueError(f"low ({low}) must not exceed high ({high})")
    if low < floor or (open_floor and low == floor) or high > ceiling:
        raise ValueError(f"must lie in {'(' if open_floor else '['}{floor}, {ceiling}], got [{low}, {high}]")
    return [float(low), float(high)]


MAX_CHOICES = 64  # a categorical dimension wider than this is not a search a study can cover


def _choices(value: list, allowed: Callable[[object], None]) -> list | None:
    if value is None:
        return None
    if not value:
        raise ValueError("name at least one choice")
    if len(value) > MAX_CHOICES:
        raise ValueError(f"at most {MAX_CHOICES} choices, got {len(value)}")
    for item in value:
        allowed(item)
    return list(dict.fromkeys(value))  # duplicates would only tilt the sampler


class SearchSpace(BaseModel):
    """What a study searches; a dimension left out stays at the request's fixed value.

    A dimension carries the engine's name of the ``/train`` field it sets (``weight_decay`` sets
    ``l2_reg``: :func:`services.app.training.request_name`), and its values are held to that field's bounds.

    Attributes:
        learning_rate: ``[low, high]``, sampled on a log scale.
        batch_size: the batch sizes to try.
        weight_decay: ``[low, high]`` (the ``/train`` ``l2_reg``), log scale when ``low > 0``.
        optimizer: optimizers to try (the engine's list).
        model_name: models to try (the registry's names).
    """

    model_config = ConfigDict(extra="forbid")

    learning_rate: list[float] | None = Field(None, description="[low, high], log scale, within the /train "
                                                                "learning_rate's bounds")
    batch_size: list[int] | None = Field(None, description="batch sizes to try")
    weight_decay: list[float] | None = Field(None, description="[low, high] within the /train l2_reg's bounds; "
                                                               "log scale if low > 0")
    optimizer: list[str] | None = Field(None, description=f"optimizers to try: {', '.join(OPTIMIZERS)}")
    model_name: list[str] | None = Field(None, description="registered models to try (GET /api/v1/models)")

    @field_validator("learning_rate")
    @classmethod
    def _learning_rate(cls, value):
        return _within_train_field(value, "learning_rate")

    @field_validator("weight_decay")
    @classmethod
    def _weight_decay(cls, value):
        return _within_train_field(value, "weight_decay")

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, value):
        return _choices(value, _check_batch_size)

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, value):
        return _choices(value, _check_optimizer)

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value):
        return _choices(value, get_model_info)  # the registry's message lists the known models

    def dimensions(self) -> list[str]:
        """The searched dimensions, in a fixed order."""
        return [name for name in type(self).model_fields if getattr(self, name) is not None]


def _within_train_field(value: list[float] | None, dimension: str) -> list[float] | None:
    """``[low, high]`` held to the bounds of the ``/train`` field the dimension sets."""
    field = training.request_name(dimension)
    floor, ceiling, _ = field_limits(TrainRequest, field)
    gt = open_floor(TrainRequest, field)
    return _low_high(value, gt if floor is None else floor, ceiling, open_floor=gt is not None)


def _check_batch_size(value: int) -> None:
    low, high, _ = field_limits(TrainRequest, "batch_size")
    if not low <= value <= high:
        raise ValueError(f"batch sizes must lie in [{low}, {high}], got {value}")


def _check_optimizer(value: str) -> None:
    if value not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {value!r}; known: {', '.join(OPTIMIZERS)}")


class TuneRequest(TrainRequest):
    """The body of ``POST /api/v1/tune``: the ``/train`` fields that stay fixed, the space and the budget.

    ``num_epochs`` is the length of the full training that "train best" launches; each trial trains
    ``epochs_per_trial`` epochs. ``seed`` seeds the trainings and the sampler.
    """

    model_name: str | None = Field(None, description="the model when space.model_name is not searched")
    space: SearchSpace = Field(default_factory=SearchSpace, validate_default=True)
    n_trials: int = Field(20, ge=1, le=1000, description="trials the study runs at most")
    epochs_per_trial: int = Field(3, ge=1, le=100_000, description="epochs each trial trains")
    parallel: int = Field(2, ge=1, le=64, description="trials in flight at once (one per free worker)")

    # Replaces TrainRequest's validator of the same name: here the model may come from the space.
    @field_validator("model_name")
    @classmethod
    def _known_model(cls, value: str | None) -> str | None:
        if value is not None:
            get_model_info(value)
        return value

    @field_validator("space")
    @classmethod
    def _something_to_search(cls, space: SearchSpace, info: ValidationInfo) -> SearchSpace:
        if not space.dimensions():
            raise ValueError(f"search at least one of {', '.join(SearchSpace.model_fields)}")
        if space.model_name is None and info.data.get("model_name") is None:
            raise ValueError("name the models to try in space.model_name (or give one model_name)")
        return space

    def models(self) -> list[str]:
        """The models the study may train."""
        return self.space.model_name or [self.model_name]


def trial_request(req: TuneRequest, choice: dict, num_epochs: int) -> TrainRequest:
    """The ``/train`` request of one configuration: the fixed fields with ``choice`` applied."""
    body = training.request_params(req.model_dump())
    body.update({training.request_name(name): value for name, value in choice.items()})
    try:
        return TrainRequest.model_validate({**body, "num_epochs": num_epochs})
    except ValidationError as exc:
        raise invalid_input_from(exc) from None


def check_against_data(config: Config, req: TuneRequest) -> int:
    """Check every model of the space against the data (classes, smallest input size); cheap.

    Returns:
        The number of training images a trial trains on.

    Raises:
        InvalidInput: the field names the request's field, ``space.<dimension>`` for a searched one.
    """
    images = 0
    for model in req.models():
        # Only the model meets the data (input size, classes); the other dimensions are checked by SearchSpace.
        choice = {"model_name": model} if req.space.model_name else {}
        try:
            run = training.prepare(config, trial_request(req, choice, req.epochs_per_trial))
        except InvalidInput as exc:
            raise _in_space_terms(exc, req, model) from None
        images = max(images, len(run.data.train))
    return images


def check_budget(config: Config, store: Store, req: TuneRequest, username: str | None, images: int) -> None:
    """Hold a non-admin's study to the user's job quota and to one training run's work, before anything starts.

    The study's own job and the ``parallel`` trials it keeps in flight all count as the user's active jobs,
    reserved here at once: the trials are then submitted without a check of their own (``reserve=0``), so a
    study is never stopped half-way by a quota it passed at launch; its trials never exceed that ``parallel``.

    Raises:
        InvalidInput: the study's trials together are too much work (``n_trials`` / ``epochs_per_trial``), or
            ``parallel`` alone exceeds the quota.
        TooManyJobs: the user's other jobs leave too few slots (field ``parallel``).
    """
    check_study_size(config, store, username, req.n_trials, req.epochs_per_trial, images)
    check_job_quota(config, store, username, slots=1 + min(req.parallel, req.n_trials), field="parallel")


def _in_space_terms(exc: InvalidInput, req: TuneRequest, model: str) -> InvalidInput:
    searched = {training.request_name(name): f"space.{name}" for name in req.space.dimensions()}
    if exc.field in ("model_name", "image_size") and req.space.model_name:
        return InvalidInput(f"space.model_name: model {model!r}: {exc}", "space.model_name")
    return InvalidInput(str(exc), searched.get(exc.field, exc.field))


# ------------------------------------------------------------------------------------ Optuna study
def study_storage(config: Config, study_id: str) -> JournalStorage:
    """The journal of one study on the studio's Redis (shared by every worker)."""
    with warnings.catch_warnings():  # the Redis backend is marked experimental; its format is stable
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        backend = JournalRedisBackend(config.effective_redis_url, prefix=JOURNAL_PREFIX.format(study_id))
    return JournalStorage(backend)


def load_study(config: Config, study_id: str, req: TuneRequest, index: int = 0) -> optuna.Study:
    """The study with the sampler and pruner of ``req`` (Optuna stores neither, so each process rebuilds them).

    Args:
        index: the trial's launch index; it offsets the sampler's seed, because trials on separate
            processes would otherwise all draw the same "random" start-up configuration.
    """
    sampler = optuna.samplers.TPESampler(
        seed=(req.seed + index) % 2**32,
        # The default ten random start-up trials would leave a short study with nothing but random search.
        n_startup_trials=max(2, min(10, req.n_trials // 3)))
    # Pruning starts once two trials have finished; each epoch is compared with their median at that epoch.
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.load_study(study_name=study_id, storage=study_storage(config, study_id), sampler=sampler,
                             pruner=pruner)


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict:
    """Ask ``trial`` for a value of every searched dimension."""
    choice: dict = {}
    if space.learning_rate:
        choice["learning_rate"] = trial.suggest_float("learning_rate", *space.learning_rate, log=True)
    if space.batch_size:
        choice["batch_size"] = trial.suggest_categorical("batch_size", space.batch_size)
    if space.weight_decay:
        low, high = space.weight_decay
        choice["weight_decay"] = trial.suggest_float("weight_decay", low, high, log=low > 0)
    if space.optimizer:
        choice["optimizer"] = trial.suggest_categorical("optimizer", space.optimizer)
    if space.model_name:
        choice["model_name"] = trial.suggest_categorical("model_name", space.model_name)
    return choice


# --------------------------------------------------------------------------------------- launching
def launch(config: Config, store: Store, req: TuneRequest, username: str | None) -> dict:
    """Check ``req``, create the study and enqueue its first trials.

    Returns:
        ``{"study_id", "job_id", "trial_jobs"}`` (the study id is its ``tune`` job's id).

    Raises:
        InvalidInput: the request does not fit the data, or the user's budget (field named).
        TooManyJobs: the user's quota of active jobs has no room for the study and its parallel trials.
        redis.RedisError: Redis is unreachable (the study is then recorded as failed).
    """
    check_budget(config, store, req, username, check_against_data(config, req))
    study_id = uuid.uuid4().hex
    store.create_job(study_id, TUNE_KIND, req.model_dump(mode="json"), username)
    try:
        optuna.create_study(study_name=study_id, storage=study_storage(config, study_id), direction="maximize")
        _park_study_job(config, study_id, username)
    except Exception:
        store.update_job(study_id, status="failed", error="could not create the study in Redis", ended_at=time.time())
        raise
    store.update_job(study_id, status="started", started_at=time.time())
    advance(config, store, study_id)
    return {"study_id": study_id, "job_id": study_id, "trial_jobs": _trial_ids(config, study_id)}


def _park_study_job(config: Config, study_id: str, username: str | None) -> None:
    """Create the study's RQ job deferred: it runs (and records the best trial) once its trials are over."""
    kind = jobs.JOB_KINDS[TUNE_KIND]
    job = jobs.RegisteredJob.create(
                     kind.func, kwargs={"job_id": study_id, "params": {"study_id": study_id}}, id=study_id,
                     connection=redis_connection(config.effective_redis_url), status=JobStatus.DEFERRED,
                     serializer=JSONSerializer,
                     origin=config.queue_name, timeout=kind.timeout, result_ttl=kind.result_ttl,
                     failure_ttl=kind.result_ttl, description=f"{TUNE_KIND} by {username}")
    job.save()


def advance(config: Config, store: Store, study_id: str, ended_job_id: str | None = None) -> None:
    """Keep the study going: enqueue trials up to ``parallel`` in flight, or finish it when none is left.

    Args:
        ended_job_id: a trial that is ending now (its catalog row does not say so yet).
    """
    conn = redis_connection(config.effective_redis_url)
    # One decision at a time: two trials ending together must not both take the last free slot.
    with conn.lock(LOCK_KEY.format(study_id), timeout=60, blocking_timeout=30):
        row = store.get_job(study_id)
        req = TuneRequest.model_validate(row["params"])
        launched = _trial_ids(config, study_id)
        running = [j for j in launched if j != ended_job_id and store.get_job(j)["status"] not in jobs.TERMINAL]
        if not is_stopped(config, study_id, row):
            free = min(req.parallel - len(running), req.n_trials - len(launched))
            for _ in range(max(free, 0)):
                # Within the study's parallel, counted against its owner's quota at launch (check_budget).
                job_id = jobs.submit(config, store, TRIAL_KIND, {"study_id": study_id, "index": len(launched)},
                                     row["created_by"], reserve=0)
                conn.rpush(TRIALS_KEY.format(study_id), job_id)
                launched.append(job_id)
                running.append(job_id)
        _record_progress(config, store, row, req, len(launched) - len(running), len(running))
        if not running:
            _finish(config, store, study_id)


def _record_progress(config: Config, store: Store, row: dict, req: TuneRequest, ended: int, running: int) -> None:
    if row["status"] in jobs.TERMINAL:
        return
    progress = {"done": ended, "total": req.n_trials, "unit": "trial", "running": running,
                "fraction": round(ended / req.n_trials, 4)}
    store.update_job(row["id"], progress=progress)
    jobs.emit_job_event(config, store.get_job(row["id"]), "progress", {"status": row["status"], "progress": progress})


def _finish(config: Config, store: Store, study_id: str) -> None:
    """Hand the study to its deferred job; a study that was stopped gets its result written here."""
    row = store.get_job(study_id)
    if row["status"] in jobs.TERMINAL:
        if row["result"] is None:
            store.update_job(study_id, result=final_result(config, store, study_id))
        return
    try:
        job = jobs.fetch_job(redis_connection(config.effective_redis_url), study_id)
    except NoSuchJobError:  # Redis lost the study's job: record the outcome directly
        store.update_job(study_id, status="finished", result=final_result(config, store, study_id),
                         ended_at=time.time())
        return
    if job.get_status(refresh=True) == JobStatus.DEFERRED:
        # RQ's enqueue_job leaves a deferred job waiting, so the study's job first leaves that state.
        job.set_status(JobStatus.QUEUED)
        jobs.queue_for(config).enqueue_job(job, at_front=True)


def _trial_ids(config: Config, study_id: str) -> list[str]:
    raw = redis_connection(config.effective_redis_url).lrange(TRIALS_KEY.format(study_id), 0, -1)
    return [item.decode() for item in raw]


def is_stopped(config: Config, study_id: str, row: dict | None = None) -> bool:
    """Whether the study was asked to stop (its stop flag) or has ended."""
    flag = redis_connection(config.effective_redis_url).exists(jobs.STOP_KEY.format(study_id))
    return bool(flag) or (row is not None and row["status"] in jobs.TERMINAL)


# ----------------------------------------------------------------------------------------- the jobs
@job_kind(TUNE_KIND, timeout=10 * 60, result_ttl=RESULT_TTL, runs_while_started=False,
          description="a hyperparameter study: waits deferred on its trials, then records the best one")
def tune(ctx: JobContext, params: dict) -> dict:
    """Record the study's outcome once its last trial ended (enqueued by :func:`advance`)."""
    # The wrapper has just stamped this job as started; the study really started at its launch.
    ctx.store.update_job(ctx.job_id, started_at=ctx.record()["created_at"])
    return final_result(ctx.config, ctx.store, ctx.job_id)


@job_kind(TRIAL_KIND, timeout=training.TRAIN_TIMEOUT, result_ttl=RESULT_TTL,
          description="one trial of a hyperparameter study: a short training with the trial's parameters",
          on_ended_elsewhere=lambda config, store, record: settle(config, store, record["params"]["study_id"]))
def tune_trial(ctx: JobContext, params: dict) -> dict:
    """Ask the study for parameters, train ``epochs_per_trial`` epochs, tell the outcome, continue the chain."""
    study_id = params["study_id"]
    try:
        return _run_trial(ctx, study_id, int(params["index"]))
    finally:
        # Whatever happened to this trial, the study goes on (or finishes): nothing else would move it.
        advance(ctx.config, ctx.store, study_id, ended_job_id=ctx.job_id)


def _run_trial(ctx: JobContext, study_id: str, index: int) -> dict:
    row = ctx.store.get_job(study_id)
    if is_stopped(ctx.config, study_id, row):
        raise Cancelled(f"study {study_id} was stopped before this trial started")
    req = TuneRequest.model_validate(row["params"])
    study = load_study(ctx.config, study_id, req, index)
    trial = study.ask()
    trial.set_user_attr("job_id", ctx.job_id)
    choice = suggest(trial, req.space)
    reported: list[float] = []

    def should_stop() -> bool:
        return ctx.should_stop() or is_stopped(ctx.config, study_id)

    outcome = {"study_id": study_id, "trial": trial.number, "params": choice}
    try:
        value = train_trial(ctx, req, choice, trial, should_stop, reported)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return {**outcome, "state": "pruned", "value": None, "epochs": len(reported)}
    except Cancelled:
        # A stopped trial keeps what it measured, as a pruned one does; without any epoch it failed.
        study.tell(trial, state=TrialState.PRUNED if reported else TrialState.FAIL)
        raise
    except Exception:
        study.tell(trial, state=TrialState.FAIL)
        raise
    study.tell(trial, value)
    return {**outcome, "state": "complete", "value": value, "epochs": len(reported)}


def train_trial(ctx: JobContext, req: TuneRequest, choice: dict, trial: optuna.Trial,
                 should_stop: Callable[[], bool], reported: list[float]) -> float:
    """Train one configuration, reporting each epoch's test metric to the pruner; the best value."""
    from engine.training import fit  # torch loads only in the worker

    run = training.prepare(ctx.config, trial_request(req, choice, req.epochs_per_trial))

    def on_epoch(record: dict) -> None:
        ctx.epoch(record)
        value = float(record[record["monitor"]])
        trial.report(value, record["epoch"])
        reported.append(value)
        if record["epoch"] < record["epochs"] and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}: {value:.2f} is below the median")

    directory = training.checkpoint_dir(ctx.config, ctx.job_id)
    try:
        if run.config.head_only:  # a frozen backbone: every trial reuses the same cached features
            result = training.fit_head_on_cached_features(ctx, run, directory, on_epoch, should_stop)
        else:
            result = fit(run.config, run.data.train, run.data.test, run.data.class_names, directory,
                         on_epoch=on_epoch, should_stop=should_stop)
    finally:
        # Trials only explore: "train best" retrains the winner in full, so their checkpoints would only
        # fill the disk.
        shutil.rmtree(directory, ignore_errors=True)
    return float(result.best_score)


# ---------------------------------------------------------------------------------- reading/acting
def get_study(store: Store, study_id: str) -> dict:
    """The ``tune`` job of ``study_id``; raises NotFound."""
    row = store.get_job(study_id)
    if row is None or row["kind"] != TUNE_KIND:
        raise NotFound(f"no study {study_id!r}", "study_id")
    return row


def list_studies(store: Store, limit: int = 100) -> list[dict]:
    """Studies, newest first, with their progress and (when ended) best trial."""
    return [{"study_id": r["id"], "status": r["status"], "created_by": r["created_by"],
             "created_at": r["created_at"], "progress": r["progress"],
             "best": (r["result"] or {}).get("best")} for r in store.list_jobs(kind=TUNE_KIND, limit=limit)]


def study_view(config: Config, store: Store, study_id: str) -> dict:
    """The study as clients see it: status, progress, every trial, the best one (reading changes nothing;
    trials a dead worker left behind are settled by the worker sweep)."""
    row = jobs.read_job(config, store, get_study(store, study_id))
    try:
        result = study_result(config, store, study_id)
    except KeyError:  # the journal is gone from Redis: what the catalog kept is all there is
        result = row["result"] or {}
    return {**result, "status": row["status"], "progress": row["progress"], "error": row["error"]}


def settle(config: Config, store: Store, study_id: str) -> None:
    """Move a study on after trials ended without their epilogue (their worker died): Optuna is told they
    failed, and the next trial (or the study's end) is enqueued."""
    req = TuneRequest.model_validate(store.get_job(study_id)["params"])
    with redis_connection(config.effective_redis_url).lock(LOCK_KEY.format(study_id), timeout=60,
                                                             blocking_timeout=30):
        study = load_study(config, study_id, req)
        for trial in _orphaned_trials(store, study):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    advance(config, store, study_id)


def _orphaned_trials(store: Store, study: optuna.Study) -> list[FrozenTrial]:
    """Trials Optuna thinks are running although their job has ended (its worker died)."""
    orphans = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = store.get_job(trial.user_attrs.get("job_id", ""))
        if record is None or record["status"] in jobs.TERMINAL:
            orphans.append(trial)
    return orphans


def study_result(config: Config, store: Store, study_id: str) -> dict:
    """The trials table and the best trial, from the study's journal and the trials' jobs.

    Raises:
        KeyError: the study's journal no longer exists.
    """
    req = TuneRequest.model_validate(store.get_job(study_id)["params"])
    asked = {t.user_attrs.get("job_id"): t for t in load_study(config, study_id, req).get_trials(deepcopy=False)}
    trials = [_trial_entry(store, index, job_id, asked.get(job_id))
              for index, job_id in enumerate(_trial_ids(config, study_id))]
    complete = [t for t in trials if t["state"] == "complete"]
    best = max(complete, key=lambda t: t["value"], default=None)
    return {"study_id": study_id, "objective": OBJECTIVE, "direction": "maximize", "n_trials": req.n_trials,
            "epochs_per_trial": req.epochs_per_trial, "parallel": req.parallel,
            "space": req.space.model_dump(exclude_none=True), "trials": trials,
            "best": _best_entry(req, best) if best else None}


def final_result(config: Config, store: Store, study_id: str) -> dict:
    """The result of a study that has ended, for the catalog, which keeps it.

    The study's journal and trial list then expire from Redis with the job's result (``RESULT_TTL``), so
    ended studies do not pile up in Redis's memory; once gone, :func:`study_view` serves the catalog's copy.
    """
    result = study_result(config, store, study_id)
    conn = redis_connection(config.effective_redis_url)
    with conn.pipeline(transaction=False) as pipe:
        for key in conn.scan_iter(match=JOURNAL_PREFIX.format(study_id) + ":*", count=1000):
            pipe.expire(key, RESULT_TTL)
        pipe.expire(TRIALS_KEY.format(study_id), RESULT_TTL)
        pipe.execute()
    return result


def _trial_entry(store: Store, index: int, job_id: str, trial: FrozenTrial | None) -> dict:
    record = store.get_job(job_id) or {"status": "unknown"}
    entry = {"index": index, "job_id": job_id, "job_status": record["status"], "number": None,
             "state": record["status"], "value": None, "params": {}, "intermediate": []}
    if trial is not None:
        entry.update(number=trial.number, state=trial.state.name.lower(), value=trial.value, params=trial.params,
                     intermediate=[trial.intermediate_values[k] for k in sorted(trial.intermediate_values)])
    return entry


def _best_entry(req: TuneRequest, best: dict) -> dict:
    train = trial_request(req, best["params"], req.num_epochs).model_dump(mode="json")
    return {"trial": best["number"], "job_id": best["job_id"], "value": best["value"], "params": best["params"],
            "train_request": {k: v for k, v in train.items() if v is not None}}


def stop(config: Config, store: Store, study_id: str) -> dict:
    """Stop a study: no more trials; queued ones are cancelled, running ones stop at their next check.

    Raises:
        NotFound: no such study.
        Conflict: the study has already ended.
    """
    row = jobs.read_job(config, store, get_study(store, study_id))
    if row["status"] in jobs.TERMINAL:
        raise Conflict(f"study {study_id!r} has already ended ({row['status']})", "study_id")
    conn = redis_connection(config.effective_redis_url)
    with conn.lock(LOCK_KEY.format(study_id), timeout=60, blocking_timeout=30):
        jobs.request_stop(config, study_id)
        for job_id in _trial_ids(config, study_id):
            if store.get_job(job_id)["status"] == "queued":
                jobs.cancel(config, store, job_id)
        jobs.cancel(config, store, study_id)
    advance(config, store, study_id)
    return study_view(config, store, study_id)


def train_best(config: Config, store: Store, study_id: str, username: str | None) -> dict:
    """Enqueue a full ``train`` job (``num_epochs`` epochs) with the best trial's parameters.

    Returns:
        ``{"job_id", "study_id", "trial", "params", "train_request"}``.

    Raises:
        NotFound: no such study.
        Conflict: no trial has completed yet.
        InvalidInput: the data changed since the study started (field named).
    """
    get_study(store, study_id)
    best = study_view(config, store, study_id).get("best")
    if best is None:
        raise Conflict(f"study {study_id!r} has no completed trial yet", "study_id")
    job_id = training.submit_training(config, store, TrainRequest.model_validate(best["train_request"]), username)
    return {"job_id": job_id, "study_id": study_id, "trial": best["trial"], "params": best["params"],
            "train_request": best["train_request"]}
