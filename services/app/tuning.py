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

Scheduling works with a single worker. A study is a *chain* of the job runtime (``services.jobs.runtime``):
its catalog job of kind ``tune`` is opened started, with its RQ job parked (deferred) so that RQ and the
catalog agree the study is alive; its trials (kind ``tune-trial``) are the chain's members, ``min(parallel,
n_trials)`` in flight. Each trial, when it ends, calls :func:`advance`, which has the runtime add the next
trial while the study wants more and is not stopped, and once no trial is left in flight hand the study to its
parked ``tune`` job, which records the best trial. Trials ask the study for their parameters themselves, so
the TPE sampler sees every trial finished so far; they report the test metric each epoch to the median
pruner. A trial killed without running its epilogue (a dead worker) is settled by the worker sweep
(:func:`settle`), which moves the chain on.

Budget. A non-admin's study is checked at launch (:func:`launch`): its job and the ``parallel`` trials
it keeps in flight count as that many of its owner's active jobs (``MAX_ACTIVE_JOBS_PER_USER``), and all its
trials together may make at most ``MAX_SAMPLE_EPOCHS`` image passes, the budget of one training run. Trials
are bounded by the study's declared ``parallel`` and ``n_trials``, not checked one by one.

Stopping a study raises its stop flag and cancels its queued trials; running ones stop at their next
check, and no trial is enqueued any more. Cancelling its ``tune`` job from the jobs API raises the same
flag; queued trials then end as cancelled as soon as a worker picks them up.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalRedisBackend
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from engine.exceptions import Cancelled, InvalidInput
from engine.models import get_model_info
from engine.run_config import OPTIMIZERS
from services.app import training
from services.app.quotas import check_study_size
from services.app.rules import Actor, action
from services.app.training import Conflict, NotFound, TrainRequest
from services.app.validation import field_limits, invalid_input_from, open_floor
from services.jobs import runtime as jobs
from services.jobs.runtime import JobContext, job_kind, redis_connection
from services.platform.config import Config
from services.storage.store import Store

TUNE_KIND, TRIAL_KIND = "tune", "tune-trial"
JOURNAL_PREFIX = "studio:optuna:{}"
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
    """Check every model of the space against the data (classes, smallest input size) as a ``/train`` request
    is checked: from listings and declared shapes, never reading the data whole (each trial's job does).

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
            _, facts = training.check_request(config, trial_request(req, choice, req.epochs_per_trial))
        except InvalidInput as exc:
            raise _in_space_terms(exc, req, model) from None
        images = max(images, facts.train_images)
    return images


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
@action("tune.submit")
def launch(actor: Actor, req: TuneRequest) -> dict:
    """Check ``req``, open the study and enqueue its first trials.

    Returns:
        ``{"study_id", "job_id", "trial_jobs"}`` (the study id is its ``tune`` job's id).

    Raises:
        InvalidInput: the request does not fit the data, or the user's budget (field named).
        TooManyJobs: the user's quota of active jobs has no room for the study and its parallel trials.
        redis.RedisError: Redis is unreachable (the study is then recorded as failed).
    """
    config, store = actor.config, actor.store
    check_study_size(config, store, actor.username, req.n_trials, req.epochs_per_trial,
                     check_against_data(config, req))
    first = {"model_name": req.models()[0]} if req.space.model_name else {}
    training.check_mirroring(store, trial_request(req, first, req.epochs_per_trial))

    def create_study(study_id: str) -> None:
        optuna.create_study(study_name=study_id, storage=study_storage(config, study_id), direction="maximize")

    # The study's job and the trials it keeps in flight take the user's quota slots at once (refused naming
    # parallel): its trials are then added without a check of their own, so a study is never stopped half-way
    # by a quota it passed at launch.
    study_id = jobs.open_chain(config, store, TUNE_KIND, req.model_dump(mode="json"), actor.username,
                               1 + min(req.parallel, req.n_trials), create_study, field="parallel")
    advance(config, store, study_id)
    return {"study_id": study_id, "job_id": study_id, "trial_jobs": jobs.chain_members(config, study_id)}


def advance(config: Config, store: Store, study_id: str, ended_job_id: str | None = None) -> None:
    """Keep the study going: trials up to ``parallel`` in flight and ``n_trials`` in all, or its end when none
    is left (the runtime's :func:`services.jobs.runtime.advance_chain`).

    Args:
        ended_job_id: a trial that is ending now (its catalog row does not say so yet).
    """
    req = TuneRequest.model_validate(store.get_job(study_id)["params"])
    jobs.advance_chain(config, store, study_id, req.n_trials, req.parallel, "trial",
                       lambda index: {"study_id": study_id, "index": index}, ended_member=ended_job_id)


def is_stopped(config: Config, study_id: str, row: dict | None = None) -> bool:
    """Whether the study was asked to stop (its stop flag) or has ended."""
    return jobs.stop_requested(config, study_id) or (row is not None and row["status"] in jobs.TERMINAL)


# ----------------------------------------------------------------------------------------- the jobs
@job_kind(TUNE_KIND, timeout=10 * 60, result_ttl=RESULT_TTL, shape="chain", members=TRIAL_KIND,
          description="a hyperparameter study: waits deferred on its trials, then records the best one")
def tune(ctx: JobContext, params: dict) -> dict:
    """Record the study's outcome once its last trial ended (run by the runtime at the chain's end)."""
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
    with jobs.chain_turn(config, study_id):
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
              for index, job_id in enumerate(jobs.chain_members(config, study_id))]
    complete = [t for t in trials if t["state"] == "complete"]
    best = max(complete, key=lambda t: t["value"], default=None)
    return {"study_id": study_id, "objective": OBJECTIVE, "direction": "maximize", "n_trials": req.n_trials,
            "epochs_per_trial": req.epochs_per_trial, "parallel": req.parallel,
            "space": req.space.model_dump(exclude_none=True), "trials": trials,
            "best": _best_entry(req, best) if best else None}


def final_result(config: Config, store: Store, study_id: str) -> dict:
    """The result of a study that has ended, for the catalog, which keeps it.

    The study's journal then expires from Redis with the job's result (``RESULT_TTL``; the runtime lets its
    trial list go too), so ended studies do not pile up in Redis's memory; once gone, :func:`study_view` serves
    the catalog's copy.
    """
    result = study_result(config, store, study_id)
    conn = redis_connection(config.effective_redis_url)
    with conn.pipeline(transaction=False) as pipe:
        for key in conn.scan_iter(match=JOURNAL_PREFIX.format(study_id) + ":*", count=1000):
            pipe.expire(key, RESULT_TTL)
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


@action("tune.read")
def read_studies(actor: Actor, study_id: str | None = None) -> list[dict]:
    """The studies, newest first, with progress and best trial; or, given ``study_id``, that study in full
    (status, progress, every trial, the best one) as the only item.

    Raises:
        NotFound: no study ``study_id``.
    """
    if study_id is None:
        return list_studies(actor.store)
    return [study_view(actor.config, actor.store, study_id)]


def read_study(actor: Actor, study_id: str) -> dict:
    """One study in full (:func:`read_studies`, whose rule it is read under)."""
    return read_studies(actor, study_id)[0]


@action("tune.stop")
def stop(actor: Actor, study_id: str) -> dict:
    """Stop a study: no more trials; queued ones are cancelled, running ones stop at their next check.

    Raises:
        NotFound: no such study.
        Conflict: the study has already ended.
    """
    config, store = actor.config, actor.store
    row = jobs.read_job(config, store, get_study(store, study_id))
    if row["status"] in jobs.TERMINAL:
        raise Conflict(f"study {study_id!r} has already ended ({row['status']})", "study_id")
    jobs.stop_chain(config, store, study_id)
    advance(config, store, study_id)
    return study_view(config, store, study_id)


@action("tune.train_best")
def train_best(actor: Actor, study_id: str) -> dict:
    """Enqueue a full ``train`` job (``num_epochs`` epochs) with the best trial's parameters.

    Returns:
        ``{"job_id", "study_id", "trial", "params", "train_request"}``.

    Raises:
        NotFound: no such study.
        Conflict: no trial has completed yet.
        InvalidInput: the data changed since the study started (field named).
    """
    get_study(actor.store, study_id)
    best = study_view(actor.config, actor.store, study_id).get("best")
    if best is None:
        raise Conflict(f"study {study_id!r} has no completed trial yet", "study_id")
    job_id = training.submit_training(actor, TrainRequest.model_validate(best["train_request"]))
    return {"job_id": job_id, "study_id": study_id, "trial": best["trial"], "params": best["params"],
            "train_request": best["train_request"]}
