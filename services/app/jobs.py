"""Reading and cancelling background jobs: the ``jobs.read`` and ``jobs.cancel`` actions every door calls.

Who may read which job is written here once: operators and admins read every job, a client only its own
(another user's job reads as missing, so ids do not leak). The API's jobs routes, the Jobs page, the live
panels' Cancel and the Socket.IO subscription all ask it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, Field

from engine.exceptions import Conflict, NotFound
from services.app import rules
from services.app.rules import Actor, action
from services.jobs import runtime


class JobsQuery(BaseModel):
    """Which jobs to list: of one kind, in one status, at most ``limit`` (newest first)."""

    kind: str | None = None
    status: Literal["queued", "started", "finished", "failed", "cancelled", "interrupted"] | None = None
    limit: int = Field(100, ge=1, le=1000)


def _own_only(user: Mapping) -> str | None:
    """The owner whose jobs ``user`` is limited to: their own name for a client, else None (every job)."""
    return user["username"] if user["role"] == "client" else None


def reads_every_job(user: Mapping) -> bool:
    """Whether ``user`` may read every user's jobs (operators and admins), not only their own."""
    return rules.may("jobs.read", user) and _own_only(user) is None


def may_read_job(user: Mapping, record: Mapping) -> bool:
    """Whether ``user`` may read job ``record``: their role may read jobs, and a client only its own."""
    owner = _own_only(user)
    return rules.may("jobs.read", user) and (owner is None or record["created_by"] == owner)


def _readable(actor: Actor, job_id: str) -> dict:
    """The job's catalog row if the actor may read it; NotFound otherwise (the same answer as no such job)."""
    record = actor.store.get_job(job_id)
    if record is None or not may_read_job(actor.user, record):
        raise NotFound(f"no job '{job_id}'", "job_id")
    return record


@action("jobs.read")
def read_jobs(actor: Actor, query: JobsQuery | None = None, job_id: str | None = None) -> list[dict]:
    """The jobs the actor may read as readers see them (a job whose worker died reads as interrupted), newest
    first and filtered by ``query``; or, given ``job_id``, that job as the only item.

    Raises:
        NotFound: no job ``job_id`` the actor may read.
    """
    if job_id is not None:
        return [runtime.read_job(actor.config, actor.store, _readable(actor, job_id))]
    query = query or JobsQuery()
    records = actor.store.list_jobs(query.kind, query.status, _own_only(actor.user), query.limit)
    return runtime.read_jobs(actor.config, actor.store, records)


def read_job(actor: Actor, job_id: str) -> dict:
    """One job in full (:func:`read_jobs`, whose rule it is read under).

    Raises:
        NotFound: no job ``job_id`` the actor may read.
    """
    return read_jobs(actor, job_id=job_id)[0]


def job_kinds(actor: Actor) -> list[str]:
    """The kinds of the jobs the actor may read, sorted (a listing's filter), under the ``jobs.read`` rule."""
    rules.check("jobs.read", actor.user)
    return actor.store.job_kinds(created_by=_own_only(actor.user))


@action("jobs.cancel")
def cancel_job(actor: Actor, job_id: str) -> dict:
    """Cancel a queued or running job; returns its record afterwards.

    Raises:
        NotFound: no job ``job_id`` the actor may read.
        Conflict: the job has already ended.
    """
    record = runtime.read_job(actor.config, actor.store, _readable(actor, job_id))
    if record["status"] in runtime.TERMINAL:
        raise Conflict(f"job '{job_id}' has already ended ({record['status']})", "job_id")
    return runtime.cancel(actor.config, actor.store, job_id)
