"""The platform: sign-in, tokens, roles and jobs in-process; against real parts (Redis, a forking RQ worker
process, the API under gunicorn) what only they prove: health, live events, Redis restarts and outages, a killed
worker, the secret file, the command line."""

from __future__ import annotations

import os
import stat
import time
from datetime import timedelta

import pytest
import requests
import socketio
from flask_jwt_extended import create_access_token

from services.api import create_app
from services.jobs import runtime as jobs
from services.storage.store import open_store
from tests import fake_jobs  # noqa: F401  (registers the test job kind in this process)


def submit(stack, n: int, delay: float = 0.05, user: str = "operator") -> str:
    return jobs.submit(stack.config, open_store(stack.data_dir), "test-count", {"n": n, "delay": delay}, user)


def test_health_reports_redis_and_workers(stack):
    body = requests.get(stack.url + "/health", timeout=10).json()
    assert body["redis"] is True and body["workers"] >= 1 and body["status_code"] == "200"


@pytest.mark.parametrize("scheme", ["JWT", "Bearer"])
def test_both_authorization_header_forms_are_accepted(studio, scheme):
    r = studio.http.get("/api/v1/jobs", headers=studio.headers("operator", scheme), timeout=10)
    assert r.status_code == 200 and "jobs" in r.json()


def test_wrong_password_is_401_with_the_error_shape(studio):
    r = studio.http.post("/auth", json={"username": "admin", "password": "nope"}, timeout=10)
    assert r.status_code == 401
    assert r.json() == {"error": "bad_credentials", "message": "wrong username or password", "field": None}


def test_expired_and_tampered_tokens_are_401(studio):
    app = create_app(studio.config)
    with app.app_context():
        expired = create_access_token("admin", expires_delta=timedelta(seconds=-5))
    good = studio.token("admin")
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    for token, why in ((expired, "expired"), (tampered, "invalid")):
        r = studio.http.get("/api/v1/jobs", headers={"Authorization": f"JWT {token}"}, timeout=10)
        assert r.status_code == 401 and why in r.json()["message"]


def _route_table(config):
    """Every protected (method, path, roles) of the real app, so a new route cannot be forgotten."""
    app = create_app(config)
    table = []
    for rule in app.url_map.iter_rules():
        meta = getattr(app.view_functions[rule.endpoint], "endpoint_meta", None)
        assert meta is not None or rule.endpoint == "static", f"{rule.rule} declares no roles"
        if meta is None or meta.roles is None:
            continue
        path = rule.rule
        for arg in rule.arguments:
            path = path.replace(f"<{arg}>", "x").replace(f"<path:{arg}>", "x")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            table.append((method, path, meta.roles))
    return table


def test_every_protected_route_is_401_without_token_and_403_for_other_roles(studio):
    table = _route_table(studio.config)
    assert len(table) >= 4
    tokens = {role: studio.token(role) for role in ("operator", "annotator", "client")}
    for method, path, roles in table:
        r = studio.http.request(method, path, timeout=10)
        assert r.status_code == 401, (method, path, r.status_code)
        assert set(r.json()) == {"error", "message", "field"}
        for role, token in tokens.items():
            if role in roles:
                continue
            r = studio.http.request(method, path, headers={"Authorization": f"JWT {token}"}, timeout=10)
            assert r.status_code == 403, (method, path, role, r.status_code)


def test_job_runs_with_progress_and_a_durable_record(door):
    studio = door
    job_id = submit(studio, n=5)
    record = studio.wait_job(job_id)
    assert record["status"] == "finished" and record["result"] == {"counted": 5}
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3, 4, 5]
    assert record["progress"]["done"] == 5 and record["started_at"] <= record["ended_at"]
    legacy = studio.http.post(f"/api/v1/jobs/{job_id}", headers=studio.headers("operator"), timeout=10).json()
    assert legacy["training_loss"] == [1.0, 0.5, 1 / 3, 0.25, 0.2] and legacy["testing_accuracy"][-1] == 0.5


def test_client_reads_only_its_own_jobs(studio):
    job_id = submit(studio, n=1, user="operator")
    studio.wait_job(job_id)
    r = studio.http.get(f"/api/v1/jobs/{job_id}", headers=studio.headers("client"), timeout=10)
    assert r.status_code == 404
    listed = studio.http.get("/api/v1/jobs", headers=studio.headers("client"), timeout=10).json()["jobs"]
    assert all(j["created_by"] == "client" for j in listed)


def test_cancel_running_and_queued_jobs(stack):
    running = submit(stack, n=400, delay=0.05)
    queued = submit(stack, n=3)
    stack.wait_job(running, statuses=("started",))
    headers = stack.headers("operator")
    r = requests.post(f"{stack.url}/api/v1/jobs/{queued}/cancel", headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = requests.post(f"{stack.url}/api/v1/jobs/{running}/cancel", headers=headers, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    done = stack.wait_job(running)
    assert done["status"] == "cancelled" and len(done["history"]) < 400
    time.sleep(1.0)
    assert stack.wait_job(queued)["history"] == []  # it never ran
    again = requests.post(f"{stack.url}/api/v1/jobs/{running}/cancel", headers=headers, timeout=10)
    assert again.status_code == 409
    follow = submit(stack, n=2)  # the worker is still alive and takes new work
    assert stack.wait_job(follow)["status"] == "finished"


def _client(stack, role: str, namespace: str, events: list, names: tuple) -> socketio.Client:
    client = socketio.Client(reconnection=False)
    for name in names:
        client.on(name, (lambda n: lambda data: events.append((n, data)))(name), namespace=namespace)
    client.connect(stack.url, namespaces=[namespace], auth={"token": stack.token(role)}, wait_timeout=10,
                   transports=["websocket"])
    return client


def test_socketio_client_receives_events_emitted_by_the_worker(stack):
    job_events, legacy_events = [], []
    jobs_client = _client(stack, "operator", "/jobs", job_events, ("epoch", "finished", "started"))
    legacy_client = _client(stack, "operator", "/test", legacy_events, ("my_response",))
    try:
        job_id = submit(stack, n=3, delay=0.3)
        ack = jobs_client.call("subscribe", {"job_id": job_id}, namespace="/jobs", timeout=10)
        assert ack["ok"] is True
        stack.wait_job(job_id)
        deadline = time.monotonic() + 10
        while not any(n == "finished" for n, _ in job_events) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        jobs_client.disconnect()
        legacy_client.disconnect()
    epochs = [d["metrics"]["epoch"] for n, d in job_events if n == "epoch" and d["job_id"] == job_id]
    assert epochs[-1] == 3 and epochs == sorted(epochs)
    assert any(n == "finished" and d["result"] == {"counted": 3} for n, d in job_events)
    mine = [d for _, d in legacy_events if d["job_id"] == job_id]
    assert mine and set(mine[-1]) == {"job_id", "job_status", "job_progress"}
    assert set(mine[-1]["job_progress"]) == {"epoch", "training", "testing", "best_accuracy"}
    assert mine[-1]["job_progress"]["epoch"] == 3


def test_socketio_refuses_a_connection_without_a_valid_token(stack):
    for auth in (None, {"token": "not-a-jwt"}):
        client = socketio.Client(reconnection=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            client.connect(stack.url, namespaces=["/jobs"], auth=auth, wait_timeout=5, transports=["websocket"])
        client.disconnect()


def test_clients_do_not_receive_events_of_other_users_jobs(stack):
    events = []
    client = _client(stack, "client", "/test", events, ("my_response",))
    try:
        job_id = submit(stack, n=2, delay=0.1, user="operator")
        stack.wait_job(job_id)
        time.sleep(0.5)
    finally:
        client.disconnect()
    assert not [d for _, d in events if d["job_id"] == job_id]


def test_history_and_queued_jobs_survive_a_redis_restart(stack):
    finished = submit(stack, n=2)
    stack.wait_job(finished)
    for w in stack.workers:  # no worker: the next job stays queued across the restart
        w.terminate()
        w.wait(10)
    stack.workers.clear()
    queued = submit(stack, n=2)
    time.sleep(1.2)  # appendfsync everysec
    stack.stop_redis()
    r = requests.get(f"{stack.url}/api/v1/jobs/{finished}", headers={"Authorization": "x"}, timeout=10)
    assert r.status_code == 401
    stack.start_redis()
    stack.start_worker()
    assert stack.wait_job(queued)["status"] == "finished"
    record = stack.wait_job(finished)
    assert record["status"] == "finished" and len(record["history"]) == 2


def test_a_job_whose_worker_is_killed_is_reported_interrupted(stack):
    import signal

    job_id = submit(stack, n=400, delay=0.05)
    stack.wait_job(job_id, statuses=("started",))
    victim = stack.workers.pop(0)
    os.killpg(victim.pid, signal.SIGKILL)  # as when a machine dies (the horse dies with its worker)
    victim.wait(10)
    record = stack.wait_job(job_id, timeout=30)
    assert record["status"] == "interrupted" and "worker" in record["error"]
    assert requests.get(stack.url + "/health", timeout=10).json()["workers"] == 0
    stack.start_worker()
    assert stack.wait_job(submit(stack, n=1))["status"] == "finished"


def test_jwt_secret_file_is_owner_only(stack):
    mode = stat.S_IMODE(os.stat(stack.data_dir / "jwt_secret.key").st_mode)
    assert mode == 0o600


def test_create_user_cli_reads_the_password_from_stdin(stack):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "flask", "--app", "services.api", "create-user", "newbie",
                        "--role", "annotator"], input="a-long-password\n", capture_output=True, text=True,
                       env=stack.env, timeout=60)
    assert r.returncode == 0, r.stderr
    token = requests.post(stack.url + "/auth", json={"username": "newbie", "password": "a-long-password"},
                          timeout=10).json()
    assert token["role"] == "annotator"
    assert "a-long-password" not in r.stdout + r.stderr


def test_requests_get_503_while_redis_is_down_and_recover(stack):
    headers = stack.headers("operator")
    stack.stop_redis()
    try:
        r = requests.get(stack.url + "/health", timeout=10)
        assert r.status_code == 503 and r.json()["redis"] is False
    finally:
        stack.start_redis()
    stack.wait_workers(1, timeout=60)
    assert requests.get(stack.url + "/api/v1/jobs", headers=headers, timeout=10).status_code == 200
