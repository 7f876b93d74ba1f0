"""Per-user and per-disk limits: active jobs per user, disk reserved by generations and imports, stale temp files.

Without them one operator could queue hundreds of jobs in seconds, or three generations that together
need more disk than there is, and a generation killed mid-way would leave its temporary file forever.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from engine.exceptions import InvalidInput
from services.platform.config import Config
from services.storage.store import Store

log = logging.getLogger(__name__)
ACTIVE = ("queued", "started")
# Folders where jobs and uploads write under a temporary name before moving the file into place.
TEMP_HOMES = ("datasets", "checkpoints", "exports", "objects", "newdata/images", "bgs/user")
STALE_AFTER_SECONDS = 3600.0
# Even with no job running, an upload may be writing its temporary file right now: spare the young ones.
MIN_AGE_SECONDS = 120.0
RESERVATIONS_LOCK = ".disk-reservations.lock"  # under DATA_DIR: held while a job checks and records its reservation


class TooManyJobs(InvalidInput):
    """The user has as many queued and running jobs as the configuration allows (HTTP 429)."""


class InsufficientStorage(InvalidInput):
    """The disk cannot hold what a job would write, with what queued jobs reserve (HTTP 507)."""


def active_jobs(store: Store, username: str) -> int:
    """How many queued and running jobs the user has (counted in SQL, on the owner and status index)."""
    return store.count_jobs(status=ACTIVE, created_by=username)


def check_job_quota(config: Config, store: Store, username: str | None, slots: int = 1,
                    field: str | None = None) -> None:
    """Refuse new work that would give a non-admin more than ``max_active_jobs_per_user`` queued or running jobs.

    Every job passes through here (``jobs.submit``; a study's launch, which also counts the trials it will
    keep in flight), whichever door it came in by: the API, a page, a job that submits follow-up jobs.
    The user's role is read from the catalog; an unknown user is held to the limit.

    Args:
        username: who submits (None: the studio itself, e.g. a scheduled retraining; never limited).
        slots: the jobs this submission brings at once (a study: itself and its trials in flight).
        field: the request field that sets ``slots``, named in the refusal.

    Raises:
        InvalidInput: (naming ``field``) ``slots`` alone exceeds the limit, so no wait would help.
        TooManyJobs: naming the limit and how to raise it.
    """
    user = store.get_user(username) if username is not None else None
    if username is None or (user is not None and user.role == "admin"):
        return
    limit = config.max_active_jobs_per_user
    named = f"{field}: " if field else ""
    if slots > limit:
        raise InvalidInput(f"{named}this needs {slots} jobs at once and a user may have at most {limit} queued or "
                           "running jobs (MAX_ACTIVE_JOBS_PER_USER)", field)
    count = active_jobs(store, username)
    if count + slots > limit:
        needs = "" if slots == 1 else f" and this needs {slots}"
        raise TooManyJobs(f"{named}you have {count} queued or running jobs{needs}; the limit is {limit} per user "
                          "(MAX_ACTIVE_JOBS_PER_USER): wait for some to finish or cancel them", field)


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


def check_study_size(config: Config, store: Store, username: str | None, trials: int, epochs_per_trial: int,
                     images: int) -> None:
    """Refuse a non-admin's study whose trials together make more than ``MAX_SAMPLE_EPOCHS`` image passes.

    A study is held to the budget of one training run: its trials x epochs x training images, all trials
    counted, since nothing stops a study before its last trial.

    Raises:
        InvalidInput: naming ``epochs_per_trial`` when one trial alone is over the budget, else ``n_trials``.
    """
    user = store.get_user(username) if username else None
    total = trials * epochs_per_trial * images
    if user is None or user.role == "admin" or total <= config.max_sample_epochs:
        return
    field = "epochs_per_trial" if epochs_per_trial * images > config.max_sample_epochs else "n_trials"
    raise InvalidInput(f"{field}: n_trials {trials:,} x epochs_per_trial {epochs_per_trial:,} x {images:,} "
                       f"training images make {total:,} image passes; a study may make at most "
                       f"{config.max_sample_epochs:,} (MAX_SAMPLE_EPOCHS) unless an admin starts it", field)


def reserved_bytes(store: Store, but: str | None = None) -> int:
    """Disk that queued and running jobs have reserved (their ``reserved_bytes`` column), all but job ``but``.

    A generation reserves its estimate at submission, an import once its job knows the output's size
    (``JobContext.reserve_disk``); a job's reservation ends with the job.
    """
    return store.reserved_bytes(ACTIVE, but=but)


@contextmanager
def reservations_locked(config: Config):
    """One reservation at a time across the studio's processes (they share DATA_DIR, on one host)."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    with open(config.path(RESERVATIONS_LOCK), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        yield


def check_disk_room(config: Config, store: Store, job_id: str, needed: int, field: str, what: str,
                    advice: str = "") -> None:
    """Refuse ``needed`` more bytes on the datasets disk for job ``job_id`` beside what other jobs reserved.

    Called under :func:`reservations_locked` by the job runtime, which then records the reservation
    (``JobContext.reserve_disk``), so two jobs can never both count the same free bytes.

    Args:
        what: the job's output in words, for the message (e.g. ``"150 images at 1024x1024 make 0.47 GB"``).
        advice: how to ask for less, appended to the message.

    Raises:
        InsufficientStorage: naming ``field``, the free and reserved bytes.
    """
    folder = config.path("datasets")
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    reserved = reserved_bytes(store, but=job_id)
    if needed + reserved > free:
        raise InsufficientStorage(
            f"'{field}': {what}; the disk has {free / 1e9:.2f} GB free, of which {reserved / 1e9:.2f} GB are "
            f"reserved by queued or running jobs{'; ' + advice if advice else ''}", field)


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
            f"{reserved / 1e9:.1f} GB are reserved by queued or running generations and imports; wait for them, "
            "or lower number_backgrounds, angles, scales or image_size", field)


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
