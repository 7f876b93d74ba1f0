"""Background jobs on RQ: one registry of job kinds, submit/cancel for the API, and the worker-side context.

A job function is a boring module-level function ``f(ctx: JobContext, params: dict) -> dict`` registered with
:func:`job_kind`; RQ calls it as ``f(job_id=..., params=...)`` with plain values only. It reports through a
:class:`JobContext`, which writes the catalog (the one truth about a job) and Socket.IO events (emitted from
the worker process through the Redis message queue, so clients see them the moment they happen).

Jobs travel through Redis as JSON, never pickles, and a worker resolves only the functions registered here
(:class:`RegisteredJob`): whoever can write to Redis can queue work, but only the studio's own kinds run.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue, Worker
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Callback, Job, JobStatus
from rq.serializers import JSONSerializer

from engine.exceptions import Cancelled
from services.app.quotas import check_job_quota
from services.platform.config import Config
from services.storage.store import Store, open_store

log = logging.getLogger(__name__)
TERMINAL = frozenset({"finished", "failed", "cancelled", "interrupted"})
STOP_KEY = "studio:stop:{}"
HEARTBEAT_STALE_S = 150.0  # RQ heartbeats every job_monitoring_interval (30 s) while a job runs


@dataclass(frozen=True)
class JobKind:
    """A registered kind of job and the limits it runs under (set on purpose, never RQ's defaults)."""

    name: str
    func: Callable[[str, dict], dict]
    timeout: int
    result_ttl: int
    description: str
    on_ended_elsewhere: Callable[[Config, Store, dict], None] | None = None
    runs_while_started: bool = True
    on_discarded: Callable[[Config, Store, dict], None] | None = None


JOB_KINDS: dict[str, JobKind] = {}
_FUNCS: dict[str, Callable] = {}  # "module.function" as RQ names it -> the registered function


def job_kind(name: str, timeout: int, result_ttl: int = 7 * 24 * 3600, description: str = "",
             on_ended_elsewhere: Callable[[Config, Store, dict], None] | None = None,
             runs_while_started: bool = True, on_discarded: Callable[[Config, Store, dict], None] | None = None):
    """Register a job function under ``name`` (the only list of job kinds).

    Args:
        on_ended_elsewhere: called with ``(config, store, record)`` after the platform ended a job of this
            kind on its behalf (its worker died, RQ stopped it or timed it out), when the job's own
            epilogue never ran.
        runs_while_started: False for a kind whose catalog row says started while its RQ job waits
            (a study, started at launch, runs only at its end): no worker holding it is then no sign of death.
        on_discarded: called with ``(config, store, record)`` when a job of this kind is cancelled before it
            ran, so that its function (and the clean-up in it) never runs: e.g. remove the files its params name.
    """

    def decorate(func):
        # The wrapped function replaces the original under the same module-level name, so RQ can import it.
        run = _run_with_context(func)
        JOB_KINDS[name] = JobKind(name, run, timeout, result_ttl, description, on_ended_elsewhere,
                                  runs_while_started, on_discarded)
        _FUNCS[f"{run.__module__}.{run.__qualname__}"] = run
        return run

    return decorate


class UnregisteredJob(Exception):
    """A queued job names a function that is not a registered job kind; it is failed without being run."""


class RegisteredJob(Job):
    """An RQ job that resolves only registered job functions and the studio's own callbacks.

    RQ imports whatever dotted name a job carries. Here the name is looked up in the registry instead, so a
    job pushed straight into Redis (``enqueue("os.system", ...)``) fails without anything being imported.
    """

    @property
    def func(self):
        name = self.func_name
        if self.instance is not None or name not in _FUNCS:
            raise UnregisteredJob(f"refused job {self.id}: {name!r} is not a registered job kind")
        return _FUNCS[name]

    @property
    def success_callback(self):
        return None  # the studio sets none; a queued name is never imported

    @property
    def failure_callback(self):
        return _callback(self._failure_callback_name, _on_failure)

    @property
    def stopped_callback(self):
        return _callback(self._stopped_callback_name, _on_stopped)


def _callback(name: str | None, ours: Callable) -> Callable | None:
    if name == f"{ours.__module__}.{ours.__qualname__}":
        return ours
    if name:
        log.warning("ignored a job callback that is not the studio's: %r", name)
    return None


# --- connections ---------------------------------------------------------------------------------
def redis_connection(url: str) -> redis.Redis:
    """A shared client per URL and operating-system thread (redis-py clients are connection pools).

    Per OS thread, not per process: under gevent, a socket belongs to the event loop of the thread that
    opened it, and the API runs CPU-bound views in gevent's real threads, which must not touch the loop's
    sockets. Greenlets of one thread share that thread's client.
    """
    return _redis_client(url, threading.get_native_id())


@functools.lru_cache(maxsize=64)
def _redis_client(url: str, _thread: int) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=10)


def queue_for(config: Config) -> Queue:
    return Queue(config.queue_name, connection=redis_connection(config.effective_redis_url),
                 job_class=RegisteredJob, serializer=JSONSerializer)


def fetch_job(conn: redis.Redis, job_id: str) -> RegisteredJob:
    """The RQ job ``job_id`` (raises ``NoSuchJobError``)."""
    return RegisteredJob.fetch(job_id, connection=conn, serializer=JSONSerializer)


@functools.lru_cache(maxsize=8)
def _emitter(url: str):
    from flask_socketio import SocketIO  # write-only client: no app, only the message queue

    return SocketIO(message_queue=url)


def emit_job_event(config: Config, job: dict, event: str, payload: dict) -> None:
    """Send ``event`` to the ``/jobs`` subscribers of the job and the legacy API's ``/test`` ``my_response``."""
    try:
        sio = _emitter(config.effective_redis_url)
        sio.emit(event, {"job_id": job["id"], "kind": job["kind"], **payload}, namespace="/jobs",
                 to=f"job:{job['id']}")
        sio.emit("my_response", legacy_payload(job, payload.get("status", event)), namespace="/test",
                 to=["jobs:all", f"jobs:user:{job['created_by']}"])
    except Exception:  # events are best effort: the catalog keeps the truth
        log.warning("could not emit %s for job %s", event, job["id"], exc_info=True)


def legacy_payload(job: dict, status: str) -> dict:
    """The legacy API's ``my_response`` shape, from the job's latest epoch metrics."""
    last = (job.get("history") or [{}])[-1]
    return {"job_id": job["id"], "job_status": status, "job_progress": {
        "epoch": last.get("epoch"),
        "training": {"loss": last.get("train_loss"), "accuracy": last.get("train_accuracy")},
        "testing": {"loss": last.get("test_loss"), "accuracy": last.get("test_accuracy")},
        "best_accuracy": last.get("best_accuracy"),
    }}


# --- API side ------------------------------------------------------------------------------------
def submit(config: Config, store: Store, kind: str, params: dict, user: str | None, reserve: int = 1) -> str:
    """Record and enqueue a job; returns its id.

    Every job of a user passes through here, whichever door it came in by (a route, a page, a job), so the
    per-user quota of active jobs is held here (:func:`services.app.quotas.check_job_quota`).

    Args:
        user: the submitting user's name (None: the studio itself).
        reserve: quota slots this submission takes: 1; more when the follow-up jobs it brings are counted now
            (the other machines of a multi-machine run); 0 for a follow-up whose slot its parent counted (a
            study's trials, kept within the ``parallel`` counted at the study's launch).

    Raises:
        TooManyJobs: the user already has as many queued or running jobs as allowed (nothing is recorded).
        redis.RedisError: Redis is unreachable (the job is recorded as failed).
    """
    if reserve:
        check_job_quota(config, store, user, slots=reserve)
    spec = JOB_KINDS[kind]
    job_id = uuid.uuid4().hex
    store.create_job(job_id, kind, params, user)
    try:
        queue_for(config).enqueue_call(
            spec.func, kwargs={"job_id": job_id, "params": params}, job_id=job_id, timeout=spec.timeout,
            result_ttl=spec.result_ttl, failure_ttl=spec.result_ttl, description=f"{kind} by {user}",
            on_failure=Callback(_on_failure), on_stopped=Callback(_on_stopped))
    except redis.exceptions.RedisError:
        store.update_job(job_id, status="failed", error="could not reach Redis to enqueue", ended_at=time.time())
        raise
    return job_id


def request_stop(config: Config, job_id: str) -> None:
    """Raise the cooperative stop flag that running jobs check between epochs / images."""
    redis_connection(config.effective_redis_url).set(STOP_KEY.format(job_id), 1, ex=7 * 24 * 3600)


def cancel(config: Config, store: Store, job_id: str, grace: float = 5.0) -> dict:
    """Cancel a queued or running job; returns the job record afterwards.

    Queued jobs are cancelled in RQ. Running ones first get the cooperative flag (so they can save a
    checkpoint and say goodbye); if still running after ``grace`` seconds, RQ's stop command kills the
    work horse.
    """
    conn = redis_connection(config.effective_redis_url)
    request_stop(config, job_id)
    try:
        rq_job = fetch_job(conn, job_id)
        status = rq_job.get_status(refresh=True)
    except NoSuchJobError:
        rq_job, status = None, None
    killed = False
    if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
        try:
            rq_job.cancel()
        except InvalidJobOperation:
            pass
    elif status == JobStatus.STARTED:
        _wait_for_end(store, job_id, grace)
        if store.get_job(job_id)["status"] not in TERMINAL:
            try:
                send_stop_job_command(conn, job_id)
                killed = True
            except InvalidJobOperation:
                pass
    record = store.get_job(job_id)
    if record["status"] not in TERMINAL:
        never_ran = record["status"] == "queued"
        store.update_job(job_id, status="cancelled", ended_at=time.time())
        record = store.get_job(job_id)
        emit_job_event(config, record, "cancelled", {"status": "cancelled"})
        # Ended here, the job's own clean-up never runs (RQ's stopped callback finds the job ended already).
        if never_ran:
            _discarded(config, store, record)
        elif killed:
            _ended_elsewhere(config, store, record)
    return record


def _wait_for_end(store: Store, job_id: str, grace: float) -> None:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and store.get_job(job_id)["status"] not in TERMINAL:
        time.sleep(0.1)


def effective_status(record: dict, held: frozenset[str] | None) -> dict:
    """The job as readers should see it: the catalog's record, unless it claims to run on no live worker.

    Pure: it never writes. The worker sweep (:func:`sweep`) makes the catalog say the same a little later.

    Args:
        record: the catalog's row.
        held: ids of the jobs live workers are running (:func:`running_job_ids`); None when unknown
            (Redis unreachable), in which case the record is returned as it is.
    """
    kind = JOB_KINDS.get(record["kind"])
    if record["status"] != "started" or held is None or record["id"] in held or (
            kind is not None and not kind.runs_while_started):
        return record
    return {**record, "status": "interrupted", "error": record.get("error") or WORKER_GONE}


WORKER_GONE = "the worker stopped before the job ended"


def running_job_ids(config: Config) -> frozenset[str] | None:
    """Ids of the jobs that live workers are running now; None while Redis is unreachable."""
    try:
        workers = Worker.all(connection=redis_connection(config.effective_redis_url))
        return frozenset(job_id for w in workers if (job_id := w.get_current_job_id()) and worker_alive(w))
    except redis.exceptions.RedisError:
        return None


def read_jobs(config: Config, store: Store, records: list[dict]) -> list[dict]:
    """Catalog records as readers see them (:func:`effective_status`), from one look at the workers.

    A record that looked started but whose job no live worker holds is read again first: it may simply
    have ended between the two looks.
    """
    suspects = [r for r in records if r["status"] == "started"]
    if not suspects:
        return records
    from services.jobs.kinds import load_job_kinds  # a reader may not have imported every kind (a UI page)

    load_job_kinds(config)
    held = running_job_ids(config)
    fresh = {r["id"]: store.get_job(r["id"]) for r in suspects if held is not None and r["id"] not in held}
    return [effective_status(fresh.get(r["id"]) or r, held) for r in records]


def read_job(config: Config, store: Store, record: dict) -> dict:
    return read_jobs(config, store, [record])[0]


def sweep(config: Config, store: Store, queued_grace_s: float = 60.0) -> None:
    """Repair the catalog where the platform ended jobs behind its back (each worker does this at start and
    every minute; nothing else writes such repairs), and run each kind's follow-up (a study moves on).

    A started job that no live worker holds, or that RQ says failed or stopped, is marked interrupted or
    cancelled. A queued job is left alone for ``queued_grace_s`` (it may sit in the catalog a moment
    before it reaches the queue); after that, one that Redis lost is marked interrupted.
    """
    conn = redis_connection(config.effective_redis_url)
    for record in store.list_jobs(status="started", limit=10_000):
        _repair(config, store, conn, record)
    cutoff = time.time() - queued_grace_s
    for record in store.list_jobs(status="queued", limit=10_000):
        if (record.get("created_at") or 0) < cutoff:
            _repair(config, store, conn, record)


def _repair(config: Config, store: Store, conn: redis.Redis, record: dict) -> None:
    try:
        status = fetch_job(conn, record["id"]).get_status(refresh=True)
    except NoSuchJobError:
        status = None
    verdict = {JobStatus.FAILED: "interrupted", JobStatus.STOPPED: "cancelled",
               JobStatus.CANCELED: "cancelled", None: "interrupted"}.get(status)
    if status == JobStatus.STARTED and not _has_live_worker(conn, record["id"]):
        verdict = "interrupted"
    if verdict is None:
        return
    store.update_job(record["id"], status=verdict, ended_at=time.time(),
                     error=record.get("error") or (WORKER_GONE if verdict == "interrupted" else None))
    _ended_elsewhere(config, store, store.get_job(record["id"]))


def _ended_elsewhere(config: Config, store: Store, record: dict) -> None:
    """Run the kind's follow-up for a job the platform ended on its behalf (best effort, logged)."""
    _run_hook("on_ended_elsewhere", config, store, record)


def _discarded(config: Config, store: Store, record: dict) -> None:
    """Run the kind's clean-up for a job cancelled before it ran (best effort, logged)."""
    _run_hook("on_discarded", config, store, record)


def _run_hook(hook: str, config: Config, store: Store, record: dict) -> None:
    kind = JOB_KINDS.get(record["kind"])
    run = getattr(kind, hook, None) if kind is not None else None
    if run is None:
        return
    try:
        run(config, store, record)
    except Exception:
        log.exception("the %s hook of %s job %s failed", hook, record["kind"], record["id"])


def _has_live_worker(conn: redis.Redis, job_id: str) -> bool:
    return any(w.get_current_job_id() == job_id and worker_alive(w) for w in Worker.all(connection=conn))


def worker_alive(worker: Worker, stale_after: float = HEARTBEAT_STALE_S) -> bool:
    """Whether a registered worker still runs: its PID on this host, else a recent heartbeat.

    A worker killed with SIGKILL keeps its registration until the key expires (minutes), so the
    registry alone would report a dead worker's job as running.
    """
    if worker.hostname == socket.gethostname() and worker.pid:
        try:
            os.kill(worker.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    beat = worker.last_heartbeat
    return beat is not None and (datetime.now(UTC) - beat.replace(tzinfo=UTC)).total_seconds() < stale_after


def live_workers(config: Config) -> int:
    return sum(worker_alive(w) for w in Worker.all(connection=redis_connection(config.effective_redis_url)))


# --- worker side ---------------------------------------------------------------------------------
class JobContext:
    """What a running job uses to report progress and to learn it should stop."""

    def __init__(self, job_id: str, config: Config, store: Store):
        self.job_id, self.config, self.store = job_id, config, store
        self._conn = redis_connection(config.effective_redis_url)
        self._last_emit = 0.0

    def record(self) -> dict:
        return self.store.get_job(self.job_id)

    def should_stop(self) -> bool:
        """True once someone asked this job to stop (checked between epochs, batches or images).

        While Redis is unreachable nobody can ask, so the job carries on.
        """
        try:
            return bool(self._conn.exists(STOP_KEY.format(self.job_id)))
        except redis.exceptions.RedisError:
            return False

    def progress(self, done: int, total: int, **extra: Any) -> None:
        """Report ``done`` of ``total`` units (events are throttled to ~5 per second, the last always)."""
        progress = {"done": done, "total": total, "fraction": round(done / total, 4) if total else None, **extra}
        now = time.monotonic()
        if done >= total or now - self._last_emit > 0.2:
            self._last_emit = now
            self.store.update_job(self.job_id, progress=progress)
            emit_job_event(self.config, self.record(), "progress", {"status": "started", "progress": progress})

    def epoch(self, metrics: dict) -> None:
        """Record one epoch's metrics: catalog history, and the ``epoch`` / ``my_response`` events."""
        self.store.append_history(self.job_id, metrics)
        total = metrics.get("epochs")
        progress = {"done": metrics.get("epoch"), "total": total, "unit": "epoch",
                    "fraction": round(metrics["epoch"] / total, 4) if total else None}
        self.store.update_job(self.job_id, progress=progress)
        emit_job_event(self.config, self.record(), "epoch", {"status": "started", "metrics": metrics})


def _run_with_context(func: Callable[..., dict]) -> Callable[[str, dict], dict]:
    """Wrap a job function with the lifecycle bookkeeping every job shares."""

    @functools.wraps(func)
    def run(job_id: str, params: dict) -> dict:
        config = Config.from_env()
        store = open_store(config.data_dir)
        ctx = JobContext(job_id, config, store)
        if ctx.should_stop():
            _discarded(config, store, ctx.record())
            return _finish(ctx, "cancelled", None)
        store.update_job(job_id, status="started", started_at=time.time())
        emit_job_event(config, ctx.record(), "started", {"status": "started"})
        try:
            result = func(ctx, params)
        except Cancelled:
            return _finish(ctx, "cancelled", None)
        except Exception as exc:
            store.update_job(job_id, status="failed", error=f"{type(exc).__name__}: {exc}", ended_at=time.time())
            emit_job_event(config, ctx.record(), "failed", {"status": "failed", "error": str(exc)})
            raise
        return _finish(ctx, "finished", result)

    return run


def _finish(ctx: JobContext, status: str, result: dict | None) -> dict:
    ctx.store.update_job(ctx.job_id, status=status, result=result, ended_at=time.time())
    emit_job_event(ctx.config, ctx.record(), status, {"status": status, "result": result})
    return result or {}


def _on_failure(job: Job, connection, *exc_info) -> None:
    """RQ callback (runs in the worker) for failures the job could not record itself: timeouts, a dead horse."""
    _mark_if_open(job.id, "failed", "".join(traceback.format_exception_only(*exc_info[:2])).strip()
                  if exc_info and exc_info[0] else "the job failed")


def _on_stopped(job: Job, connection) -> None:
    _mark_if_open(job.id, "cancelled", None)


def _mark_if_open(job_id: str, status: str, error: str | None) -> None:
    config = Config.from_env()
    store = open_store(config.data_dir)
    record = store.get_job(job_id)
    if record and record["status"] not in TERMINAL:
        store.update_job(job_id, status=status, error=error, ended_at=time.time())
        record = store.get_job(job_id)
        emit_job_event(config, record, status, {"status": status, "error": error})
        _ended_elsewhere(config, store, record)
