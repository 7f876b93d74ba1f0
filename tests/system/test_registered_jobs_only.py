"""Whoever can write to Redis can queue a job; the worker runs only the studio's registered job kinds."""

from __future__ import annotations

import time

import pytest
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from services.jobs import runtime as jobs
from services.storage.store import open_store
from tests import fake_jobs  # noqa: F401  (registers the test job kind in this process)


def _ended_status(job: Job, timeout: float = 60) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job.get_status(refresh=True)
        if status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job.id} still {job.get_status(refresh=True)} after {timeout} s")


@pytest.mark.parametrize("serializer", [None, JSONSerializer], ids=["pickle", "json"])
def test_a_job_naming_any_other_function_is_refused_and_nothing_runs(stack, tmp_path, serializer):
    marker = tmp_path / "pwned"
    conn = jobs.redis_connection(stack.redis_url)
    attack = Queue(stack.config.queue_name, connection=conn, serializer=serializer).enqueue(
        "os.system", f"touch {marker}")
    assert _ended_status(attack) == JobStatus.FAILED
    time.sleep(0.5)
    assert not marker.exists()
    # The worker lives on and still runs the studio's own jobs.
    job_id = jobs.submit(stack.config, open_store(stack.data_dir), "test-count", {"n": 1, "delay": 0}, "operator")
    assert stack.wait_job(job_id)["status"] == "finished"


def test_a_callback_naming_any_other_function_is_never_called(stack, tmp_path):
    marker = tmp_path / "pwned-by-callback"
    conn = jobs.redis_connection(stack.redis_url)
    queue = Queue(stack.config.queue_name, connection=conn, serializer=JSONSerializer)
    attack = queue.enqueue("os.system", f"touch {marker}", on_failure="os.system")
    assert _ended_status(attack) == JobStatus.FAILED
    time.sleep(0.5)
    assert not marker.exists()
