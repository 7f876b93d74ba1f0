"""The studios tests run against: in this process (:class:`LocalStudio`: the API's app and its test client, the
catalog, Redis in memory), or real parts (:class:`Stack`: a Redis server, RQ worker processes, the API under
gunicorn, the UI under Streamlit)."""

from __future__ import annotations

import http.client
import io
import json
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


class Tokens:
    """Access tokens for a studio's users, as ``POST /auth`` issues them, minted in this process with the studio's
    key (no scrypt check and no sign-in throttle per request: the sign-in tests call /auth). One per user, minted
    again only when the user's role or token version changed, it was revoked, or it nears its expiry."""

    def __init__(self, data_dir: Path, app_for_minting):
        self.data_dir, self._app_for_minting, self._app, self._minted = data_dir, app_for_minting, None, {}

    def for_user(self, username: str) -> str:
        from flask_jwt_extended import decode_token

        from services.api import issue_token

        store = open_store(self.data_dir)
        user = store.get_user(username)
        if user is None:
            raise LookupError(f"no user {username!r} in this studio")
        key = (username, user["role"], user["token_version"])
        token, jti, expires = self._minted.get(key, (None, "", 0.0))
        if token is None or expires - time.time() < 120 or store.is_token_revoked(jti):
            if self._app is None:
                self._app = self._app_for_minting()
            with self._app.app_context():
                token = issue_token(user)
                claims = decode_token(token)
            self._minted[key] = (token, claims["jti"], float(claims["exp"]))
        return token


class Answer:
    """A Flask test client's response, read as tests read a ``requests`` response."""

    def __init__(self, response):
        self._response = response
        self.status_code, self.headers = response.status_code, response.headers
        self.content = response.get_data()

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.content)


class Verbs:
    """``get``/``post``/``put``/``patch``/``delete`` of a path, through the subclass's ``request``."""

    def request(self, method: str, path: str, **kwargs):
        raise NotImplementedError

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs):
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs):
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs):
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs):
        return self.request("DELETE", path, **kwargs)


class InProcessHttp(Verbs):
    """``requests``' calling convention (``get``/``post``/``put``/``patch``/``delete`` of a path, with ``json``,
    ``data``, ``files``, ``params``, ``headers``) over the app's test client: the same tests read the same
    answers in-process as over HTTP (:attr:`Stack.http`)."""

    def __init__(self, app):
        self.app = app

    def request(self, method: str, path: str, *, json=None, data=None, files=None, params=None, headers=None,
                timeout=None, stream=False, allow_redirects=True) -> Answer:
        """As ``requests.request``; ``timeout`` and ``stream`` mean nothing in-process."""
        form = dict(data) if isinstance(data, dict) else data
        for name, value in (files or {}).items():
            if isinstance(value, tuple):
                filename, content, *kind = value
            else:
                filename, content, kind = Path(getattr(value, "name", name)).name, value, []
            content = content.read() if hasattr(content, "read") else content
            form = form if isinstance(form, dict) else {}
            form[name] = (io.BytesIO(content), filename, *kind)
        with self.app.test_client() as client:
            return Answer(client.open(path, method=method.upper(), json=json, data=form, query_string=params,
                                      headers=headers or {}, follow_redirects=allow_redirects))


class OverHttp(Verbs):
    """``requests`` rooted at a running API's address (:attr:`Stack.http`)."""

    def __init__(self, url: str):
        self.url = url

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, self.url + path, **{"timeout": 120, **kwargs})


TERMINAL = ("finished", "failed", "cancelled", "interrupted")


@dataclass
class LocalStudio:
    """The API's app on a DATA_DIR of its own, in this process, with one user per role: for the in-process tier
    (Redis is in memory there: tests/conftest.py). :attr:`http` calls its routes as :attr:`Stack.http` does over
    HTTP; queued jobs run in this process, through RQ, when a test waits for one (:meth:`run_jobs`)."""

    config: Config
    app: object
    users: dict
    tokens: Tokens | None = None

    @classmethod
    def in_own_folder(cls, tmp_path_factory, name: str, **settings) -> LocalStudio:
        # What the stack's processes are told (Stack.env): no suggestion head trained behind a test's back.
        settings = {"suggest_retrain_every": 0, **settings}
        config = Config(data_dir=tmp_path_factory.mktemp(name) / "data", **settings)
        config.ensure_dirs()
        store = open_store(config.data_dir)
        for role in ROLES:
            store.create_user(role, secrets.token_urlsafe(12), role)
        from services.api import create_app

        return cls(config, create_app(config), {role: store.get_user(role) for role in ROLES})

    def __post_init__(self):
        self.tokens = Tokens(self.config.data_dir, lambda: self.app)
        self.http = InProcessHttp(self.app)

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    def client(self):
        return self.app.test_client()

    def token(self, role: str) -> str:
        return self.tokens.for_user(role)

    def headers(self, role: str, scheme: str = "JWT") -> dict:
        return {"Authorization": f"{scheme} {self.token(role)}"}

    def actor(self, role: str):
        from services.app import rules

        return rules.Actor(self.users[role], self.config, open_store(self.data_dir))

    def run_jobs(self) -> None:
        """Run every queued job to its end, one after another, in this process: RQ's ``SimpleWorker`` (no fork)
        in burst mode over the in-memory Redis, through the same registered-job check, lifecycle and callbacks
        as the studio's workers; the job reads this studio's configuration as a worker reads its environment."""
        from unittest import mock

        from rq import SimpleWorker
        from rq.serializers import JSONSerializer

        from services.jobs.runtime import RegisteredJob, queue_for, redis_connection

        worker = SimpleWorker([queue_for(self.config)], connection=redis_connection(self.config.effective_redis_url),
                              job_class=RegisteredJob, serializer=JSONSerializer)
        with mock.patch.object(Config, "from_env", classmethod(lambda cls, env=None: self.config)):
            worker.work(burst=True, with_scheduler=False, logging_level="WARNING")

    def wait_job(self, job_id: str, role: str = "admin", statuses=TERMINAL, timeout: float = 0) -> dict:
        """The job's record once the queued jobs have run (``timeout`` is the stack's; nothing waits here)."""
        self.run_jobs()
        record = self.http.get(f"/api/v1/jobs/{job_id}", headers=self.headers(role)).json()
        assert record.get("status") in statuses, f"job {job_id} ended {record.get('status')}: {record}"
        return record


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
    tokens: Tokens | None = field(default=None, repr=False)

    def __post_init__(self):
        self.tokens = Tokens(self.data_dir, self.minting_app)

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
        """An access token for ``role``'s user (:class:`Tokens`)."""
        return self.tokens.for_user(role)

    def minting_app(self):
        """The API's app for this stack's configuration, to mint tokens in this process."""
        from services.api import create_app

        return create_app(self.config)

    @property
    def http(self) -> OverHttp:
        return OverHttp(self.url)

    def headers(self, role: str, scheme: str = "JWT") -> dict:
        return {"Authorization": f"{scheme} {self.token(role)}"}

    def wait_job(self, job_id: str, role: str = "admin", statuses=TERMINAL, timeout: float = 120) -> dict:
        headers = self.headers(role)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = requests.get(f"{self.url}/api/v1/jobs/{job_id}", headers=headers, timeout=10).json()
            if record.get("status") in statuses:
                return record
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not reach {statuses} within {timeout} s: {record}")


def post(studio, path: str, body: dict | None = None, role: str = "operator", **kwargs):
    """POST ``body`` as JSON with ``role``'s token, to a :class:`Stack` over HTTP or a :class:`LocalStudio`."""
    return studio.http.post(path, json=body, headers=studio.headers(role), **kwargs)


def get(studio, path: str, role: str = "operator", **kwargs):
    return studio.http.get(path, headers=studio.headers(role), **kwargs)


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
