"""A 2-process (DDP, gloo) training job over HTTP: live epochs, cancel, resume, and no rank left behind;
a run over two workers that meet through Redis, as two machines would.

Against the real stack (Redis, a forking RQ worker whose work horse launches the ranks, gunicorn), on
scikit-learn's real digits written as the legacy API's HDF5 file.
"""

from __future__ import annotations

import json
import os
import time

import psutil
import pytest

from services.storage.store import open_store
from tests.digits import digits_body, ensure_digits_hdf5
from tests.harness import job_events_socket, post, stop

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two processes need two cores")


@pytest.fixture(scope="module")
def digits(stack):
    return ensure_digits_hdf5(stack.data_dir)


def ranks_of(stack) -> list[psutil.Process]:
    """The training processes the worker's work horses launched (spawned children running spawn_main)."""
    found = []
    for worker in stack.workers:
        try:
            for proc in psutil.Process(worker.pid).children(recursive=True):
                if "spawn_main" in " ".join(proc.cmdline()):
                    found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def wait_no_ranks(stack, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while ranks_of(stack) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ranks_of(stack), "a training process outlived its job"


@pytest.mark.parametrize(
    "change, field",
    [({"world_size": "0"}, "world_size"), ({"nproc": 65}, "nproc"), ({"world_size": "two"}, "world_size"),
     ({"world_size": 2, "batch_size": 33}, "batch_size")],
)
def test_bad_process_counts_are_400_naming_the_field(stack, digits, change, field):
    r = post(stack, "/api/v1/train", digits_body(**change))
    assert r.status_code == 400, r.text
    assert field in r.text


def test_a_two_process_job_runs_with_live_epochs(stack, digits):
    events: list = []
    client = job_events_socket(stack, events)
    try:
        r = post(stack, "/api/v1/train", digits_body(num_epochs="4", nproc="2"))
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        assert client.call("subscribe", {"job_id": job_id}, namespace="/jobs", timeout=10)["ok"] is True
        deadline = time.monotonic() + 120
        while len(ranks_of(stack)) < 2:
            assert time.monotonic() < deadline, "the two training processes never started"
            time.sleep(0.2)
        record = stack.wait_job(job_id, timeout=180)
    finally:
        client.disconnect()
    assert record["status"] == "finished", record["error"]
    assert record["params"]["world_size"] == 2
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3, 4]
    assert record["result"]["best_accuracy"] >= 90.0, record["history"]
    live = [d["metrics"]["epoch"] for _, d in events if d.get("job_id") == job_id and "metrics" in d]
    assert live and live == sorted(live) and live[-1] == 4, live
    wait_no_ranks(stack)


def test_cancel_stops_both_processes_and_resume_continues(stack, digits):
    r = post(stack, "/api/v1/train", digits_body(num_epochs="30", world_size=2))
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 150
    while len(stack.wait_job(job_id, statuses=("started",))["history"]) < 2:
        assert time.monotonic() < deadline, "two epochs did not complete in time"
        time.sleep(0.2)
    assert post(stack, f"/api/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    stopped = stack.wait_job(job_id)
    done = [h["epoch"] for h in stopped["history"]]
    assert stopped["status"] == "cancelled" and done == list(range(1, len(done) + 1)) and len(done) < 30
    wait_no_ranks(stack)
    r = post(stack, f"/api/v1/jobs/{job_id}/resume?num_epochs={len(done) + 2}")
    assert r.status_code == 202, r.text
    resumed = stack.wait_job(r.json()["job_id"], timeout=180)
    assert resumed["status"] == "finished", resumed["error"]
    assert resumed["params"]["world_size"] == 2
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, len(done) + 3))
    assert resumed["history"][: len(done)] == stopped["history"]
    wait_no_ranks(stack)


def test_a_run_over_two_workers_meets_through_redis_as_two_machines_would(stack, digits):
    extra = stack.start_worker()  # the second "machine": a worker of its own on the same queue
    try:
        r = post(stack, "/api/v1/train", digits_body(num_epochs="3", nodes=2, world_size=1))
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        record = stack.wait_job(job_id, timeout=300)
        assert record["status"] == "finished", record["error"]
        assert [h["epoch"] for h in record["history"]] == [1, 2, 3]
        assert record["result"]["best_accuracy"] >= 85.0, record["history"]
        nodes = [j for j in open_store(stack.data_dir).list_jobs(kind="train_node")
                 if (j["params"] if isinstance(j["params"], dict) else json.loads(j["params"]))["run_id"] == job_id]
        assert len(nodes) == 1
        node = stack.wait_job(nodes[0]["id"], timeout=60)
        assert node["status"] == "finished", node["error"]
        assert node["result"] == {"run_id": job_id, "node_rank": 1}
        wait_no_ranks(stack)
    finally:
        stop(extra)
        stack.workers.remove(extra)
