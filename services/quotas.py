"""Per-user and per-disk limits: active jobs per user, disk reserved by generation jobs, stale temp files.

Without them one operator could queue hundreds of jobs in seconds, or three generations that together
need more disk than there is, and a generation killed mid-way would leave its temporary file forever.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from engine.exceptions import InvalidInput
from services.config import Config
from services.store import Store

log = logging.getLogger(__name__)
ACTIVE = ("queued", "started")
# Folders where jobs and uploads write under a temporary name before moving the file into place.
TEMP_HOMES = ("datasets", "checkpoints", "exports", "objects", "newdata/images", "bgs/user")
STALE_AFTER_SECONDS = 3600.0
# Even with no job running, an upload may be writing its temporary file right now: spare the young ones.
MIN_AGE_SECONDS = 120.0


class TooManyJobs(InvalidInput):
    """The user has as many queued and running jobs as the configuration allows (HTTP 429)."""


class InsufficientStorage(InvalidInput):
    """The disk cannot hold what a job would write, with what queued jobs reserve (HTTP 507)."""


def active_jobs(store: Store, username: str, kind: str | None = None) -> list[dict]:
    """The user's queued and running jobs (of one kind, when given)."""
    return [job for status in ACTIVE for job in store.list_jobs(kind, status, username, limit=10_000)]


def check_job_quota(config: Config, store: Store, user: dict) -> None:
    """Refuse a new job when a non-admin already has ``max_active_jobs_per_user`` queued or running.

    Raises:
        TooManyJobs: naming the limit and how to raise it.
    """
    if user["role"] == "admin":
        return
    limit = config.max_active_jobs_per_user
    count = len(active_jobs(store, user["username"]))
    if count >= limit:
        raise TooManyJobs(f"you have {count} queued or running jobs; the limit is {limit} per user "
                          "(MAX_ACTIVE_JOBS_PER_USER): wait for some to finish or cancel them", None)


def check_training_size(config: Config, store: Store, username: str | None, epochs: int, images: int) -> None:
    """Refuse a non-admin's run of more than ``MAX_SAMPLE_EPOCHS`` image passes (epochs x training images).

    Raises:
        InvalidInput: naming ``num_epochs``, with the limit and the run's size.
    """
    user = store.get_user(username) if username else None
    if user is None or user["role"] == "admin" or epochs * images <= config.max_sample_epochs:
        return
    raise InvalidInput(f"num_epochs: {epochs:,} epochs over {images:,} training images make {epochs * images:,} "
                       f"image passes; a run may make at most {config.max_sample_epochs:,} (MAX_SAMPLE_EPOCHS) "
                       "unless an admin starts it", "num_epochs")


def reserved_bytes(store: Store) -> int:
    """Disk that queued and running generation jobs have reserved (their estimate at submission)."""
    jobs = [job for status in ACTIVE for job in store.list_jobs("generate", status, limit=10_000)]
    return sum(int((job.get("params") or {}).get("reserved_bytes", 0)) for job in jobs)


def check_disk_reservation(config: Config, store: Store, needed: int, field: str) -> None:
    """Refuse a job whose estimated ``needed`` bytes do not fit beside what other jobs reserved.

    Raises:
        InsufficientStorage: naming the sizes and ``field``.
    """
    folder = config.path("datasets")
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    reserved = reserved_bytes(store)
    if needed + reserved > free:
        raise InsufficientStorage(
            f"this dataset needs about {needed / 1e9:.1f} GB; the disk has {free / 1e9:.1f} GB free of which "
            f"{reserved / 1e9:.1f} GB are reserved by queued or running generations; wait for them, or lower "
            "number_backgrounds, angles, scales or image_size", field)


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and (path.name.endswith(".tmp") or path.parent.name == "exports")


def remove_stale_tmp(config: Config, store: Store, stale_after: float = STALE_AFTER_SECONDS) -> list[Path]:
    """Remove temporary files and folders that no running job is writing; returns what was removed.

    Meant for a worker's start, after the catalog's started jobs of dead workers were marked ended. With no
    job running anywhere, every temporary file older than two minutes is an orphan (younger ones may be an
    upload in progress); otherwise only those untouched for ``stale_after`` seconds are (a running
    generation keeps touching its file).
    """
    anything_running = bool(store.list_jobs(status="started", limit=1))
    cutoff = time.time() - (stale_after if anything_running else MIN_AGE_SECONDS)
    removed = []
    for home in TEMP_HOMES:
        folder = config.path(home)
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if not _is_temporary(path):
                continue
            try:
                if path.stat().st_mtime > cutoff:
                    continue
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            except FileNotFoundError:  # its job finished and moved it meanwhile
                continue
            removed.append(path)
    if removed:
        log.info("removed %d stale temporary files: %s", len(removed), ", ".join(p.name for p in removed))
    return removed
