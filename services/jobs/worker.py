"""An RQ worker for the studio's queue: ``python -m services.jobs.worker`` (forking ``Worker`` on Linux).

RQ's worker quits when its Redis connection drops. This one waits for Redis to come back and rejoins the
queue, so a Redis restart (or a network blip to a remote Redis) does not take the workers down with it.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import signal
import socket
import sys
import time
import uuid

from rq import Worker
from rq.serializers import JSONSerializer

import redis
from services.app.quotas import remove_stale_tmp
from services.jobs import runtime as jobs
from services.jobs.kinds import load_job_kinds
from services.jobs.runtime import RegisteredJob, queue_for, redis_connection
from services.platform.config import Config
from services.storage.store import open_store

log = logging.getLogger("services.jobs.worker")


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
MAINTENANCE_S = 60  # RQ's registry cleaning and our sweep; RQ's default is 10 minutes


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when ``parent_pid`` (its parent) dies; Linux only.

    RQ puts each work horse in a process group of its own, so a worker killed outright (SIGKILL, the OOM
    killer) would leave its horse running the job as an orphan: still writing checkpoints and history for
    a job the catalog reports interrupted, and racing the run that resumes it.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent_pid:  # the worker died before the request took effect
        os._exit(1)


class StudioWorker(Worker):
    """RQ's forking worker that remembers whether it was asked to stop (SIGTERM / SIGINT), whose work
    horses die with it, and that sweeps the catalog for jobs whose worker died."""

    stop_signalled = False
    _worker_pid = 0

    def __init__(self, *args, studio_config: Config, **kwargs):
        super().__init__(*args, **kwargs)
        self.studio_config = studio_config

    def request_stop(self, signum, frame):
        self.stop_signalled = True
        super().request_stop(signum, frame)

    def fork_work_horse(self, job, queue):
        self._worker_pid = os.getpid()  # read by the horse, which gets a copy of this object
        super().fork_work_horse(job, queue)

    def main_work_horse(self, job, queue):
        die_with_parent(self._worker_pid)
        super().main_work_horse(job, queue)

    def run_maintenance_tasks(self):
        """RQ's registry cleaning, then :func:`services.jobs.runtime.sweep` (at start and every minute): jobs
        whose worker died are reported interrupted and followed up (a study moves on to its next trial)
        even when nobody reads them; and temporary files that no running job writes are removed."""
        super().run_maintenance_tasks()
        store = open_store(self.studio_config.data_dir)
        try:
            jobs.sweep(self.studio_config, store)
        except Exception:
            log.exception("the sweep of started jobs failed; the next maintenance tries again")
        try:
            remove_stale_tmp(self.studio_config, store)
        except Exception:
            log.exception("removing stale temporary files failed; the next maintenance tries again")


def wait_for_redis_forever(url: str, stop: dict) -> None:
    """Block until Redis answers (or a stop signal arrives), backing off to one try every 5 s."""
    delay = 0.2
    client = redis_connection(url)
    while not stop["requested"]:
        try:
            client.ping()
            return
        except redis.exceptions.RedisError:
            log.warning("Redis at %s unreachable; retrying in %.1f s", url, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


# What the job bodies import when they run (the kinds' modules import no torch, so the web process that
# registers them stays light). Loaded once here, before forking, the work horses share it instead of
# importing torch for every job; nothing here runs a torch operation, so forking stays safe.
PRELOAD = ("torch", "services.app.train_run")


def preload_ml_stack() -> None:
    """Import :data:`PRELOAD` in the worker's parent process."""
    for module in PRELOAD:
        importlib.import_module(module)


def serve(config: Config) -> int:
    """Run workers one after another until asked to stop; each Redis loss starts a fresh one."""
    stop = {"requested": False}

    def on_signal(signum, _frame):
        stop["requested"] = True

    load_job_kinds(config)  # the kinds this worker may run, with their follow-ups
    preload_ml_stack()
    url = config.effective_redis_url
    while True:
        signal.signal(signal.SIGTERM, on_signal)  # RQ installs its own handlers while it works
        signal.signal(signal.SIGINT, on_signal)
        wait_for_redis_forever(url, stop)
        if stop["requested"]:
            return 0
        worker = StudioWorker([queue_for(config)], connection=redis_connection(url), studio_config=config,
                              job_class=RegisteredJob, serializer=JSONSerializer,
                              name=f"studio-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
                              maintenance_interval=MAINTENANCE_S)
        try:
            worker.work(with_scheduler=False, logging_level="INFO")
        except redis.exceptions.RedisError:
            pass  # RQ's teardown needs Redis too; what matters is whether a stop was asked for
        if worker.stop_signalled:
            return 0
        log.warning("worker %s lost Redis; rejoining when it is back", worker.name)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    sys.exit(serve(Config.from_env()))


if __name__ == "__main__":
    main()
