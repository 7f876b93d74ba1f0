"""The studios tests run against: in this process (:class:`LocalStudio`: the API's app and its test client, the
catalog, Redis in memory), or real parts (:class:`Stack`: a Redis server, RQ worker processes, the API under
gunicorn, the UI under Streamlit)."""

from __future__ import annotations

import http.client
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
import socketio

from services.platform.config import REPO_ROOT, ROLES, Config
from services.platform.launcher import gunicorn_argv
from services.platform.redis_server import start_redis
from services.storage.store import open_store


def chromium() -> str | None:
    """Debian's Chromium for the browser tests, if this machine has it (CI installs it: see .ci/run)."""
    found = shutil.which("chromium") or "/usr/bin/chromium"
    return found if Path(found).exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process serving {url} exited with {proc.returncode}")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class LocalStudio:
    """The API's app on a DATA_DIR of its own, in this process, with one user per role: for the in-process tier
    (Redis is in memory there: tests/conftest.py). ``client()`` is Flask's test client; tokens are minted here."""

    config: Config
    app: object
    users: dict

    @classmethod
    def in_own_folder(cls, tmp_path_factory, name: str, **settings) -> LocalStudio:
        config = Config(data_dir=tmp_path_factory.mktemp(name) / "data", **settings)
        config.ensure_dirs()
        store = open_store(config.data_dir)
        for role in ROLES:
            store.create_user(role, secrets.token_urlsafe(12), role)
        from services.api import create_app

        return cls(config, create_app(config), {role: store.get_user(role) for role in ROLES})

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    def client(self):
        return self.app.test_client()

    def token(self, role: str) -> str:
        from services.api import issue_token

        with self.app.app_context():
            return issue_token(self.users[role])

    def headers(self, role: str, scheme: str = "JWT") -> dict:
        return {"Authorization": f"{scheme} {self.token(role)}"}

    def actor(self, role: str):
        from services.app import rules

        return rules.Actor(self.users[role], self.config, open_store(self.data_dir))


@dataclass
class Stack:
    """A running studio on a temporary DATA_DIR: Redis, workers, API. Methods stop and restart parts."""

    data_dir: Path
    redis_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    ui_port: int = field(default_factory=free_port)
    redis: subprocess.Popen | None = None
    api: subprocess.Popen | None = None
    ui: subprocess.Popen | None = None
    workers: list = field(default_factory=list)
    passwords: dict = field(default_factory=dict)
    # Environment of every process of this stack, over the defaults of :attr:`env`.
    extra_env: dict = field(default_factory=dict)
    _minting_app: object = field(default=None, repr=False)

    @property
    def redis_password(self) -> str:
        return Config(data_dir=self.data_dir).redis_password()

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.redis_password}@127.0.0.1:{self.redis_port}/0"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def config(self) -> Config:
        return Config(data_dir=self.data_dir, redis_url=self.redis_url, api_port=self.api_port,
                      jwt_secret_key=None, token_minutes=30)

    @property
    def env(self) -> dict:
        return {**os.environ, "DATA_DIR": str(self.data_dir), "REDIS_URL": self.redis_url,
                "API_PORT": str(self.api_port), "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1",
                "JOB_MODULES": "tests.fake_jobs",
                # Off unless a test asks: a head trained behind a test's back would change what Annotate suggests.
                "SUGGEST_RETRAIN_EVERY": "0", **self.extra_env}

    def log(self, name: str):
        return open(self.data_dir / "logs" / f"{name}.log", "ab")

    def start_redis(self) -> None:
        self.redis = start_redis(self.redis_port, self.data_dir / "redis", self.data_dir / "logs" / "redis.log",
                                 password=self.redis_password)

    def stop_redis(self) -> None:
        self.redis.terminate()
        self.redis.wait(10)

    def start_worker(self) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "services.jobs.worker"], cwd=REPO_ROOT, env=self.env,
                                stdout=self.log("worker"), stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(proc)
        self.wait_workers(len([w for w in self.workers if w.poll() is None]))
        return proc

    def wait_workers(self, count: int, timeout: float = 30) -> None:
        """Wait until ``count`` live workers serve the queue (stale registrations of dead ones do not count)."""
        from services.jobs.runtime import live_workers

        deadline = time.monotonic() + timeout
        while True:
            try:
                if live_workers(self.config) >= count:
                    return
            except Exception:  # Redis may still be coming up
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than {count} live workers within {timeout} s")
            time.sleep(0.2)

    def start_api(self) -> None:
        self.api = subprocess.Popen(
            gunicorn_argv(self.config), cwd=REPO_ROOT, env=self.env,
            stdout=self.log("api"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(self.url + "/health", proc=self.api)

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def start_ui(self) -> None:
        """The Streamlit UI, started the way the launcher starts it."""
        if self.ui is not None and self.ui.poll() is None:
            return
        self.ui = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(REPO_ROOT / "ui_app.py"), "--server.port", str(self.ui_port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=REPO_ROOT, env=self.env, stdout=self.log("ui"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(self.ui_url + "/_stcore/health", proc=self.ui)

    @classmethod
    def in_own_folder(cls, tmp_path_factory, name: str, **extra_env: str) -> Stack:
        """A stack whose DATA_DIR is the only thing in a folder of its own, so a check for files written
        beside DATA_DIR watches a folder that no other stack (or its worker) writes to.

        Args:
            extra_env: environment variables of its processes (e.g. ``SUGGEST_RETRAIN_EVERY="9"``).
        """
        return cls(tmp_path_factory.mktemp(name) / "data", extra_env=extra_env)

    def start(self) -> Stack:
        self.config.ensure_dirs()
        self.config.secret_key()
        self.start_redis()
        self.start_worker()
        self.start_api()
        store = open_store(self.data_dir)
        for role in ("admin", "operator", "annotator", "client"):
            self.passwords[role] = secrets.token_urlsafe(12)
            store.create_user(role, self.passwords[role], role)
        return self

    def close(self) -> None:
        stop(self.ui)
        stop(self.api)
        for w in self.workers:
            stop(w)
        if self.redis and self.redis.poll() is None:
            self.stop_redis()

    def token(self, role: str) -> str:
        """A fresh access token for ``role``'s user, as ``POST /auth`` issues it, minted in this process with the
        stack's key: no scrypt check and no sign-in throttle per request (the sign-in tests call /auth)."""
        from services.api import issue_token

        user = open_store(self.data_dir).get_user(role)
        if user is None:
            raise LookupError(f"no user {role!r} on this stack")
        with self.minting_app().app_context():
            return issue_token(user)

    def minting_app(self):
        """The API's app for this stack's configuration, built once, to mint tokens in this process."""
        if self._minting_app is None:
            from services.api import create_app

            self._minting_app = create_app(self.config)
        return self._minting_app

    def headers(self, role: str, scheme: str = "JWT") -> dict:
        return {"Authorization": f"{scheme} {self.token(role)}"}

    def wait_job(self, job_id: str, role: str = "admin", statuses=("finished", "failed", "cancelled", "interrupted"),
                 timeout: float = 120) -> dict:
        headers = self.headers(role)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = requests.get(f"{self.url}/api/v1/jobs/{job_id}", headers=headers, timeout=10).json()
            if record.get("status") in statuses:
                return record
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not reach {statuses} within {timeout} s: {record}")


def post(stack, path: str, body: dict | None = None, role: str = "operator", **kwargs) -> requests.Response:
    return requests.post(stack.url + path, json=body, headers=stack.headers(role), timeout=60, **kwargs)


def get(stack, path: str, role: str = "operator", **kwargs) -> requests.Response:
    return requests.get(stack.url + path, headers=stack.headers(role), timeout=120, **kwargs)


def job_events_socket(stack, events: list) -> socketio.Client:
    """A Socket.IO client on ``/jobs`` that appends ``(event, data)`` for each ``epoch`` and ``finished``."""
    client = socketio.Client(reconnection=False)
    for name in ("epoch", "finished"):
        client.on(name, (lambda n: lambda data: events.append((n, data)))(name), namespace="/jobs")
    client.connect(stack.url, namespaces=["/jobs"], auth={"token": stack.token("operator")}, wait_timeout=10,
                   transports=["websocket"])
    return client


def peak_rss_during(process, work) -> tuple[int, int, object]:
    """``(RSS before, peak RSS during work(), work's result)`` of a psutil ``process`` and its children."""
    import threading

    def rss() -> int:
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])

    baseline, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return baseline, peak[0], result


@contextmanager
def app_page(page: str, user: dict, data_dir: Path, monkeypatch, **env: str):
    """A page under Streamlit's AppTest, reading ``data_dir`` (and ``env``), signed in as ``user``.

    Signed in as ``app.py`` signs in: a session in the catalog (the user is created there when missing), its
    token in the session state, because a page's live panels and buttons re-read the user through it.
    """
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DATA_DIR", str(data_dir))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    st.cache_resource.clear()  # the config is cached per process: make the page read this DATA_DIR
    st.cache_data.clear()
    at = AppTest.from_file(str(REPO_ROOT / "pages" / page), default_timeout=30)
    at.session_state["session_token"] = signed_in_session(open_store(data_dir), user)
    at.session_state["user"] = user
    try:
        yield at
    finally:
        st.cache_resource.clear()


def signed_in_session(store, user: dict) -> str:
    """A UI session token for ``user`` (created in the catalog, with a random password, when missing)."""
    from services.ui import sessions

    if store.get_user(user["username"]) is None:
        store.create_user(user["username"], secrets.token_urlsafe(16), user["role"])
    return sessions.create(store, store.get_user(user["username"]).to_dict())


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(3)}"


def stream_multipart(stack, path: Path, name: str) -> tuple[int, bytes]:
    """POST the file as multipart/form-data, sent from disk in 1 MB pieces with a Content-Length."""
    boundary = secrets.token_hex(16)
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{name}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: application/zip\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", stack.api_port, timeout=600)
    conn.putrequest("POST", "/api/v1/datasets")
    conn.putheader("Authorization", stack.headers("operator")["Authorization"])
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Content-Length", str(len(head) + path.stat().st_size + len(tail)))
    conn.endheaders()
    conn.send(head)
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            conn.send(chunk)
    conn.send(tail)
    answer = conn.getresponse()
    body = answer.read()
    conn.close()
    return answer.status, body
