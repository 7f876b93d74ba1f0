"""`make run`'s launcher: four parts up, the first admin printed once, nothing left behind after SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from services.platform.config import REPO_ROOT
from tests.harness import free_port, wait_http


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children started in sessions of their own included)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_launcher_starts_everything_and_sigterm_leaves_no_process(tmp_path, processes):
    ports = {"API_PORT": free_port(), "UI_PORT": free_port(), "REDIS_PORT": free_port()}
    env = {**os.environ, "DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1",
           **{k: str(v) for k, v in ports.items()}}
    env.pop("REDIS_URL", None)
    log = tmp_path / "launcher.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.platform.launcher"], cwd=REPO_ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{ports['API_PORT']}/health", timeout=90, proc=proc)
        deadline = time.monotonic() + 30
        while (health := requests.get(f"http://127.0.0.1:{ports['API_PORT']}/health", timeout=5).json())["workers"] < 1:
            assert time.monotonic() < deadline, health
            time.sleep(0.5)
        assert health["redis"] is True
        wait_http(f"http://127.0.0.1:{ports['UI_PORT']}/_stcore/health", timeout=90, proc=proc)
        printed = log.read_text()
        password = re.search(r"created user 'admin' with password: (\S+)", printed).group(1)
        token = requests.post(f"http://127.0.0.1:{ports['API_PORT']}/auth",
                              json={"username": "admin", "password": password}, timeout=10)
        assert token.status_code == 200
        assert f"API    http://127.0.0.1:{ports['API_PORT']}" in printed and "UI     http://" in printed
        assert (tmp_path / "redis" / "appendonly.aof").exists()  # the embedded Redis persists
        children = descendants(proc.pid)
        assert len(children) >= 4  # redis, worker, gunicorn, streamlit (and their own children)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    time.sleep(0.5)
    assert proc.returncode == 0
    assert not [pid for pid in children if alive(pid)]
