"""``make run``: Redis (embedded unless REDIS_URL is set), RQ workers, the API and the UI as one group.

Ctrl-C or SIGTERM stops every child; a child that dies is reported and restarted (a few times a minute at
most, then the whole group stops with an error rather than limping on).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from services.platform.config import REPO_ROOT, Config
from services.platform.redis_server import redis_argv, wait_for_redis
from services.storage.store import open_store

MAX_RESTARTS_PER_MINUTE = 3
# What gunicorn reads of a request's head before the API sees it. Unbounded, reading a long request line is
# quadratic: a 16 MB line froze the API for 35 s. 8190 bytes is gunicorn's ceiling, over twice the longest
# URL the API serves (ids and query values are a few hundred characters; a 3,000-character id still gets
# the API's JSON 404). Past it, gunicorn answers 400 itself.
MAX_REQUEST_LINE_BYTES = 8190
MAX_HEADER_FIELDS = 100  # a browser sends about 20, a proxy adds a few
MAX_HEADER_FIELD_BYTES = 8190  # a token is under 1 KB; cookies of the UI on the same host are smaller


@dataclass
class Child:
    """A supervised process and how to start it again."""

    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)
    umask: int = -1  # -1: inherit the launcher's

    def start(self, env: dict) -> None:
        # Each child leads its own process group, so a signal reaches what it started too. (RQ's work horses
        # have groups of their own: a worker forwards SIGTERM to its horse, and a killed worker's horse dies
        # with it, see services/worker.die_with_parent.)
        self.proc = subprocess.Popen(self.argv, env=env, cwd=REPO_ROOT, start_new_session=True, umask=self.umask)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass


def gunicorn_argv(config: Config, connections: int = 2000) -> list[str]:
    """The API under gunicorn's gevent worker: one process, one event loop, a greenlet per connection.

    An idle websocket or a client that sends its headers slowly then costs a greenlet, not one of a few
    dozen threads, so none of them can stall ``/health``. Work that holds the CPU (image decoding,
    predictions, GrabCut, password hashing) runs in real threads (see ``services.web.http``). One worker
    process, because Socket.IO keeps its sessions in memory. The request line and the headers are bounded
    (:data:`MAX_REQUEST_LINE_BYTES`, :data:`MAX_HEADER_FIELDS`, :data:`MAX_HEADER_FIELD_BYTES`): within them a
    query value over its declared maximum length gets the API's JSON 400 naming the field; past them,
    gunicorn's own 400 (a short HTML page) comes before any of the API's code runs.
    """
    return [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gevent", "--worker-connections", str(connections),
            "--timeout", "120", "--graceful-timeout", "10", "--keep-alive", "5",
            "--limit-request-line", str(MAX_REQUEST_LINE_BYTES), "--limit-request-fields", str(MAX_HEADER_FIELDS),
            "--limit-request-field_size", str(MAX_HEADER_FIELD_BYTES),
            "-b", f"{config.api_host}:{config.api_port}", "services.web.wsgi:app"]


def plan(config: Config, what: str) -> list[Child]:
    """The children to run: ``all`` (the default) or ``worker`` (workers only, for scale-out)."""
    py = sys.executable
    children: list[Child] = []
    if what == "all" and not config.redis_url:
        argv = redis_argv(config.redis_port, config.path("redis"), config.redis_password())
        children.append(Child("redis", argv, umask=0o077))
    children += [Child(f"worker-{i + 1}", [py, "-m", "services.jobs.worker"]) for i in range(config.workers)]
    if what == "all":
        children.append(Child("api", gunicorn_argv(config)))
        children.append(Child("ui", [py, "-m", "streamlit", "run", str(REPO_ROOT / "ui_app.py"),
                                     "--server.port", str(config.ui_port), "--server.address", config.api_host,
                                     "--server.headless", "true", "--browser.gatherUsageStats", "false"]))
    return children


def first_admin(config: Config) -> None:
    """On the very first run, create an ``admin`` user with a random password, printed once."""
    store = open_store(config.data_dir)
    if store.count_users() == 0:
        password = secrets.token_urlsafe(12)
        store.create_user("admin", password, "admin")
        print(f"\n  First run: created user 'admin' with password: {password}\n"
              "  (shown once; add users with: flask --app services.api create-user NAME --role ROLE)\n", flush=True)


def supervise(children: list[Child], env: dict) -> int:
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopping:
            for child in children:
                if child.proc.poll() is not None and not stopping and not _restart(child, env):
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        shutdown(children)


def _restart(child: Child, env: dict) -> bool:
    print(f"[launcher] {child.name} exited with code {child.proc.returncode}; restarting", file=sys.stderr, flush=True)
    now = time.monotonic()
    child.restarts = [t for t in child.restarts if now - t < 60] + [now]
    if len(child.restarts) > MAX_RESTARTS_PER_MINUTE:
        print(f"[launcher] {child.name} keeps dying; stopping everything", file=sys.stderr, flush=True)
        return False
    child.start(env)
    return True


def shutdown(children: list[Child], timeout: float = 10.0) -> None:
    """SIGTERM every child (API and UI first, Redis last), then SIGKILL what is left after ``timeout``."""
    for child in reversed(children):
        child.stop()
    deadline = time.monotonic() + timeout
    for child in reversed(children):
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.stop(signal.SIGKILL)
            child.proc.wait()


def _without_password(url: str) -> str:
    """The URL as it may be printed: any password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", choices=("all", "worker"), default="all")
    args = parser.parse_args(argv)
    config = Config.from_env()
    config.ensure_dirs()
    if args.what == "all":
        first_admin(config)
    env = {**os.environ, "DATA_DIR": str(config.data_dir), "REDIS_URL": config.effective_redis_url}
    children = plan(config, args.what)
    for child in children:
        child.start(env)
        if child.name == "redis":
            wait_for_redis(config.effective_redis_url, proc=child.proc)
    print(f"[launcher] Redis  {_without_password(config.effective_redis_url)}"
          f"{'' if config.redis_url else ' (embedded, password in redis_password.key)'}", flush=True)
    print(f"[launcher] {config.workers} worker(s) on queue '{config.queue_name}'", flush=True)
    if args.what == "all":
        print(f"[launcher] API    {config.api_url}  (docs: {config.api_url}/api/v1/docs)", flush=True)
        print(f"[launcher] UI     http://{config.api_host}:{config.ui_port}", flush=True)
    print("[launcher] Ctrl-C stops everything.", flush=True)
    return supervise(children, env)


if __name__ == "__main__":
    sys.exit(main())
