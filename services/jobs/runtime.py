"""Background jobs on RQ: one registry of job kinds, submit/cancel for the API, and the worker-side context.

A job function is a boring module-level function ``f(ctx: JobContext, params: dict) -> dict`` registered with
:func:`job_kind`; RQ calls it as ``f(job_id=..., params=...)`` with plain values only. It reports through a
:class:`JobContext`, which writes the catalog (the one truth about a job) and Socket.IO events (emitted from
the worker process through the Redis message queue, so clients see them the moment they happen).

Jobs travel through Redis as JSON, never pickles, and a worker resolves only the functions registered here
(:class:`RegisteredJob`): whoever can write to Redis can queue work, but only the studio's own kinds run.

This module owns every job's lifecycle: it alone creates job rows and writes their state (status, times,
progress, result, error, history, reserved disk), and it alone coordinates jobs through Redis (stop flags,
a chain's members and turn, a group's rendezvous). A kind declares its shape (:data:`SHAPES`): a *single*
job; a *chain* (a study), whose parent opens first (:func:`open_chain`), whose members are added one after
another (:func:`advance_chain`), and whose parent ends when its last member has; or a *group* (a run over
several machines), whose members start together (:func:`submit_group`) and meet through
:meth:`JobContext.rendezvous`.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import redis
from rq import Queue, Worker
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Callback, Job, JobStatus
from rq.serializers import JSONSerializer

from engine.exceptions import Cancelled
from services.app.quotas import check_disk_room, check_job_quota, reservations_locked
from services.platform.config import Config
from services.storage.store import Store, open_store

log = logging.getLogger(__name__)
TERMINAL = frozenset({"finished", "failed", "cancelled", "interrupted"})
STOP_KEY = "studio:stop:{}"
MEMBERS_KEY = "studio:chain:{}:members"  # a chain's member job ids, in launch order
TURN_KEY = "studio:chain:{}:turn"  # the lock under which a chain decides its next step
RENDEZVOUS_KEY = "studio:rendezvous:{}"  # a group's first member's address
RENDEZVOUS_WAIT_S = 600  # how long a group's member waits for its first member to start
HEARTBEAT_STALE_S = 150.0  # RQ heartbeats every job_monitoring_interval (30 s) while a job runs
SHAPES = ("single", "chain", "group")


@dataclass(frozen=True)
class JobKind:
    """A registered kind of job and the limits it runs under (set on purpose, never RQ's defaults).

    Attributes:
        func: the function RQ runs (the registered one, wrapped with the lifecycle bookkeeping).
        body: the function as written, ``body(ctx, params) -> dict``; a chain's parent's sums up its members.
        shape: ``single``; ``chain``: its job waits, deferred, while its ``members`` run one after another
            (its row says started from its opening); ``group``: it and its ``members`` run at once and meet.
        members: the kind of a chain's or a group's members.
    """

    name: str
    func: Callable[[str, dict], dict]
    body: Callable[[JobContext, dict], dict]
    timeout: int
    result_ttl: int
    description: str
    on_ended_elsewhere: Callable[[Config, Store, dict], None] | None = None
    on_discarded: Callable[[Config, Store, dict], None] | None = None
    shape: str = "single"
    members: str | None = None


JOB_KINDS: dict[str, JobKind] = {}
_FUNCS: dict[str, Callable] = {}  # "module.function" as RQ names it -> the registered function


def job_kind(name: str, timeout: int, result_ttl: int = 7 * 24 * 3600, description: str = "",
             on_ended_elsewhere: Callable[[Config, Store, dict], None] | None = None,
             on_discarded: Callable[[Config, Store, dict], None] | None = None, shape: str = "single",
             members: str | None = None):
    """Register a job function under ``name`` (the only list of job kinds).

    Args:
        on_ended_elsewhere: called with ``(config, store, record)`` after the platform ended a job of this
            kind on its behalf (its worker died, RQ stopped it or timed it out), when the job's own
            epilogue never ran.
        on_discarded: called with ``(config, store, record)`` when a job of this kind is cancelled before it
            ran, so that its function (and the clean-up in it) never runs: e.g. remove the files its params name.
        shape: one of :data:`SHAPES` (see :class:`JobKind`).
        members: the kind of the members of a chain or a group (required for those shapes).
    """
    if shape not in SHAPES:
        raise ValueError(f"job kind {name!r}: unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    if (shape == "single") != (members is None):
        raise ValueError(f"job kind {name!r}: a chain or a group names the kind of its members, a single job none")

    def decorate(func):
        # The wrapped function replaces the original under the same module-level name, so RQ can import it.
        run = _run_with_context(func, shape, result_ttl)
        JOB_KINDS[name] = JobKind(name, run, func, timeout, result_ttl, description, on_ended_elsewhere,
                                  on_discarded, shape, members)
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
    spec = JOB_KINDS[kind]
    assert spec.shape != "chain", f"a chain ({kind}) opens with open_chain"
    if reserve:
        check_job_quota(config, store, user, slots=reserve)
    job_id = uuid.uuid4().hex
    store.create_job(job_id, kind, params, user, shape=spec.shape)
    try:
        queue_for(config).enqueue_call(
            spec.func, kwargs={"job_id": job_id, "params": params}, job_id=job_id, timeout=spec.timeout,
            result_ttl=spec.result_ttl, failure_ttl=spec.result_ttl, description=f"{kind} by {user}",
            on_failure=Callback(_on_failure), on_stopped=Callback(_on_stopped))
    except redis.exceptions.RedisError:
        store.update_job(job_id, status="failed", error="could not reach Redis to enqueue", ended_at=time.time())
        raise
    return job_id


def submit_group(config: Config, store: Store, kind: str, params: dict, user: str | None, size: int,
                 member_params: Callable[[str, int], dict]) -> str:
    """Enqueue a group of ``size`` jobs that run at once: its first (of ``kind``) and ``size - 1`` members.

    The group's quota slots are counted at once, so a group is never left half-submitted.

    Args:
        member_params: ``(group id, rank)`` -> the params of member ``rank`` (1 to ``size - 1``).

    Returns:
        The group's id: its first job's.
    """
    spec = JOB_KINDS[kind]
    assert spec.shape == "group", f"{kind} is a {spec.shape} kind"
    group_id = submit(config, store, kind, params, user, reserve=size)
    for rank in range(1, size):
        submit(config, store, spec.members, member_params(group_id, rank), user, reserve=0)
    return group_id


def request_stop(config: Config, job_id: str) -> None:
    """Raise the cooperative stop flag that running jobs check between epochs / images."""
    redis_connection(config.effective_redis_url).set(STOP_KEY.format(job_id), 1, ex=7 * 24 * 3600)


def stop_requested(config: Config, job_id: str) -> bool:
    """Whether someone asked job ``job_id`` (or the chain it is) to stop."""
    return bool(redis_connection(config.effective_redis_url).exists(STOP_KEY.format(job_id)))


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
    # A chain's parent says started from its opening while its RQ job waits: no worker holds it until its end.
    if record["status"] != "started" or held is None or record["id"] in held or record.get("shape") == "chain":
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


# --- chains: a parent whose members run one after another ----------------------------------------
def open_chain(config: Config, store: Store, kind: str, params: dict, user: str | None, slots: int,
               setup: Callable[[str], None], field: str | None = None) -> str:
    """Record a chain's parent job, started now, with its RQ job parked until its members have ended.

    Args:
        slots: the quota slots the chain takes at once: its parent and the members it keeps in flight (its
            members are then added without a check of their own, so it never stops half-way on the quota).
        setup: called with the chain's id before its job is parked (e.g. create the study's storage).
        field: the request field that sets ``slots``, named in a refusal.

    Returns:
        The chain's id (its parent job's).

    Raises:
        TooManyJobs, InvalidInput: see :func:`services.app.quotas.check_job_quota` (nothing is recorded).
        redis.RedisError: Redis is unreachable (the parent is recorded as failed).
    """
    spec = JOB_KINDS[kind]
    assert spec.shape == "chain", f"{kind} is a {spec.shape} kind"
    check_job_quota(config, store, user, slots=slots, field=field)
    chain_id = uuid.uuid4().hex
    store.create_job(chain_id, kind, params, user, shape="chain")
    try:
        setup(chain_id)
        _park(config, spec, chain_id, params, user)
    except Exception as exc:
        store.update_job(chain_id, status="failed", ended_at=time.time(),
                         error=f"could not open the {kind} job in Redis ({type(exc).__name__})")
        raise
    store.update_job(chain_id, status="started", started_at=time.time())
    return chain_id


def _park(config: Config, spec: JobKind, chain_id: str, params: dict, user: str | None) -> None:
    """Create the chain's RQ job deferred: it runs (and sums up its members) once they have ended."""
    RegisteredJob.create(
        spec.func, kwargs={"job_id": chain_id, "params": params}, id=chain_id,
        connection=redis_connection(config.effective_redis_url), status=JobStatus.DEFERRED,
        serializer=JSONSerializer, origin=config.queue_name, timeout=spec.timeout, result_ttl=spec.result_ttl,
        failure_ttl=spec.result_ttl, description=f"{spec.name} by {user}",
        on_failure=Callback(_on_failure), on_stopped=Callback(_on_stopped)).save()


def chain_members(config: Config, chain_id: str) -> list[str]:
    """The job ids of the chain's members, in launch order."""
    raw = redis_connection(config.effective_redis_url).lrange(MEMBERS_KEY.format(chain_id), 0, -1)
    return [item.decode() for item in raw]


@contextmanager
def chain_turn(config: Config, chain_id: str) -> Iterator[None]:
    """Hold the chain's turn: one decision at a time (two members ending together must not both take the
    last free place), across processes and machines."""
    with redis_connection(config.effective_redis_url).lock(TURN_KEY.format(chain_id), timeout=60,
                                                           blocking_timeout=30):
        yield


def advance_chain(config: Config, store: Store, chain_id: str, total: int, parallel: int, unit: str,
                  member_params: Callable[[int], dict], ended_member: str | None = None) -> None:
    """Keep a chain going: add members up to ``parallel`` in flight and ``total`` in all (none once it was asked
    to stop or has ended), record its progress, and close it once no member is left in flight.

    Args:
        unit: what a member is, for the progress (``trial``).
        member_params: a new member's launch index -> its params.
        ended_member: a member that is ending now (its row does not say so yet).
    """
    with chain_turn(config, chain_id):
        row = store.get_job(chain_id)
        launched = chain_members(config, chain_id)
        running = [j for j in launched if j != ended_member and store.get_job(j)["status"] not in TERMINAL]
        if not stop_requested(config, chain_id) and row["status"] not in TERMINAL:
            for _ in range(max(min(parallel - len(running), total - len(launched)), 0)):
                launched.append(_add_member(config, store, row, member_params(len(launched))))
                running.append(launched[-1])
        _chain_progress(config, store, row, total, unit, len(launched) - len(running), len(running))
        if not running:
            _close_chain(config, store, chain_id)


def _add_member(config: Config, store: Store, row: dict, params: dict) -> str:
    # Within the chain's slots, counted against its owner's quota at its opening.
    job_id = submit(config, store, JOB_KINDS[row["kind"]].members, params, row["created_by"], reserve=0)
    redis_connection(config.effective_redis_url).rpush(MEMBERS_KEY.format(row["id"]), job_id)
    return job_id


def _chain_progress(config: Config, store: Store, row: dict, total: int, unit: str, ended: int, running: int) -> None:
    if row["status"] in TERMINAL:
        return
    progress = {"done": ended, "total": total, "unit": unit, "running": running, "fraction": round(ended / total, 4)}
    store.update_job(row["id"], progress=progress)
    emit_job_event(config, store.get_job(row["id"]), "progress", {"status": row["status"], "progress": progress})


def _close_chain(config: Config, store: Store, chain_id: str) -> None:
    """Hand the chain to its parked job; a chain that was stopped (or whose job Redis lost) is summed up here."""
    row = store.get_job(chain_id)
    if row["status"] in TERMINAL:
        if row["result"] is None:
            store.update_job(chain_id, result=_sum_up(config, store, row))
        return
    try:
        job = fetch_job(redis_connection(config.effective_redis_url), chain_id)
    except NoSuchJobError:
        store.update_job(chain_id, status="finished", result=_sum_up(config, store, row), ended_at=time.time())
        return
    if job.get_status(refresh=True) == JobStatus.DEFERRED:
        # RQ's enqueue_job leaves a deferred job waiting, so the chain's job first leaves that state.
        job.set_status(JobStatus.QUEUED)
        queue_for(config).enqueue_job(job, at_front=True)


def _sum_up(config: Config, store: Store, row: dict) -> dict:
    """The chain's result, from its parent's function run here (its RQ job will not run)."""
    spec = JOB_KINDS[row["kind"]]
    result = spec.body(JobContext(row["id"], config, store), row["params"])
    _forget_members(config, row["id"], spec.result_ttl)
    return result


def _forget_members(config: Config, chain_id: str, ttl: int) -> None:
    """Let an ended chain's member list leave Redis with its result (its row keeps what it found)."""
    redis_connection(config.effective_redis_url).expire(MEMBERS_KEY.format(chain_id), ttl)


def stop_chain(config: Config, store: Store, chain_id: str) -> None:
    """Stop a chain: no member is added any more, queued ones are cancelled, running ones stop at their next
    check (:meth:`JobContext.should_stop` of the chain), and its parent is cancelled."""
    with chain_turn(config, chain_id):
        request_stop(config, chain_id)
        for job_id in chain_members(config, chain_id):
            if store.get_job(job_id)["status"] == "queued":
                cancel(config, store, job_id)
        cancel(config, store, chain_id)


# --- groups: members that run at once and meet -----------------------------------------------------
@dataclass(frozen=True)
class Meeting:
    """How the members of a group find each other: the first publishes an address, the others look it up.

    Attributes:
        publish: ``(host, port)`` -> None; the group's first member announces where it listens.
        lookup: waits for that address (raises ``Cancelled`` if the member is stopped, or waited too long).
        host: this machine's address on the network that reaches Redis (where the other workers are too).
    """

    publish: Callable[[str, int], None]
    lookup: Callable[[], tuple[str, int]]
    host: str


def _address_towards(redis_url: str) -> str:
    """This machine's address on the network that reaches Redis."""
    target = urlparse(redis_url).hostname or "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((target, 9))  # UDP: no packet is sent, the kernel only picks the route
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


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

    def record_history(self, history: list[dict]) -> None:
        """Start this job's history with ``history`` (a resumed run's earlier epochs), before its own epochs."""
        self.store.update_job(self.job_id, history=list(history))

    def reserve_disk(self, needed: int, field: str, what: str, advice: str = "") -> None:
        """Reserve ``needed`` bytes of the datasets disk for this job before it writes them, until it ends.

        The check and the record happen under one lock across the studio's processes, so two jobs can never
        both count the same free bytes.

        Raises:
            InsufficientStorage: see :func:`services.app.quotas.check_disk_room`.
        """
        with reservations_locked(self.config):
            check_disk_room(self.config, self.store, self.job_id, needed, field, what, advice)
            self.store.update_job(self.job_id, reserved_bytes=int(needed))

    def rendezvous(self, group_id: str, wait_s: float = RENDEZVOUS_WAIT_S) -> Meeting:
        """How this member of group ``group_id`` meets the others (see :class:`Meeting`).

        The first member's address is kept in Redis as long as a job of this kind may run.
        """
        conn, key = self._conn, RENDEZVOUS_KEY.format(group_id)
        ttl = JOB_KINDS[self.record()["kind"]].timeout

        def publish(host: str, port: int) -> None:
            conn.set(key, f"{host}:{port}", ex=ttl)

        def lookup() -> tuple[str, int]:
            deadline = time.monotonic() + wait_s
            while (found := conn.get(key)) is None:
                if self.should_stop() or time.monotonic() > deadline:
                    raise Cancelled(f"the first member of group {group_id} never started")
                time.sleep(0.5)
            host, port = found.decode().rsplit(":", 1)
            return host, int(port)

        return Meeting(publish, lookup, _address_towards(self.config.effective_redis_url))


def _run_with_context(func: Callable[..., dict], shape: str, result_ttl: int) -> Callable[[str, dict], dict]:
    """Wrap a job function with the lifecycle bookkeeping every job shares."""

    @functools.wraps(func)
    def run(job_id: str, params: dict) -> dict:
        config = Config.from_env()
        store = open_store(config.data_dir)
        ctx = JobContext(job_id, config, store)
        if ctx.should_stop():
            _discarded(config, store, ctx.record())
            return _finish(ctx, "cancelled", None)
        if shape != "chain":  # a chain's parent says started from its opening; its job runs at the chain's end
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
        if shape == "chain":
            _forget_members(config, job_id, result_ttl)
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
