"""Soak check: ``make run``'s launcher used in Chromium for ``--minutes``; its log must hold no watcher warnings.

Starts ``python -m services.platform.launcher all`` exactly as ``make run`` does (embedded Redis, a worker, the API,
the UI) on a temporary DATA_DIR and free ports, with its stdout and stderr in one log. Chromium signs in
as the first-run admin (the password the launcher prints) and uses the product the way a person browsing
it does: every page in turn, a reload and a deep link now and then, and idle spells on the Train page.
Meanwhile a second thread writes and deletes files in the repository and under DATA_DIR, the activity
that made Streamlit's file watcher flood the log with "Inotify queue overflowed" lines.

At the end it prints the minutes used, the page visits, the UI process's CPU share, and every log line
that mentions a watcher, inotify or a traceback. It exits 1 if there is any.

Usage: ``python bench/soak_ui.py [--minutes 10]``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_ui import cpu_seconds  # noqa: E402
from tests.browser.conftest import CHROMIUM  # noqa: E402

PAGES = ("Segment", "Augment", "Datasets", "Train", "Tune", "Models", "Predict", "Annotate", "Objects", "Jobs",
         "Home")
DEEP_LINKS = ("train", "jobs", "models")
WARNINGS = re.compile(r"inotify|watchdog|file ?watcher|Traceback", re.IGNORECASE)
PASSWORD = re.compile(r"created user 'admin' with password: (\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_launcher(data_dir: Path, log_path: Path) -> tuple[subprocess.Popen, dict]:
    ports = {"API_PORT": free_port(), "UI_PORT": free_port(), "REDIS_PORT": free_port()}
    env = {**os.environ, "DATA_DIR": str(data_dir), **{k: str(v) for k, v in ports.items()}}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "services.platform.launcher", "all"], cwd=REPO, env=env,
                            stdout=log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    return proc, ports


def wait_until_up(log_path: Path, ports: dict, timeout: float = 180) -> str:
    """The admin password, once the API and the UI answer."""
    deadline = time.monotonic() + timeout
    password = None
    while time.monotonic() < deadline:
        found = PASSWORD.search(log_path.read_text(errors="replace"))
        password = found.group(1) if found else None
        try:
            api = requests.get(f"http://127.0.0.1:{ports['API_PORT']}/health", timeout=2).ok
            ui = requests.get(f"http://127.0.0.1:{ports['UI_PORT']}/_stcore/health", timeout=2).ok
        except requests.RequestException:
            api = ui = False
        if password and api and ui:
            return password
        time.sleep(1)
    raise SystemExit(f"the launcher did not come up in {timeout:.0f} s; see {log_path}")


def churn_files(folders: list[Path], stop: threading.Event) -> int:
    """Write and delete small files, as an editor, a git checkout or a dataset import would."""
    count = 0
    while not stop.is_set():
        for folder in folders:
            path = folder / f".soak-{count % 50}.tmp"
            path.write_bytes(os.urandom(256))
            path.unlink()
            count += 1
        stop.wait(0.05)
    return count


def use_the_product(page, ui_url: str, password: str, minutes: float) -> int:
    page.goto(ui_url)
    page.get_by_label("Username", exact=True).fill("admin")
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.locator("h1", has_text="PyTorch Automation Studio").wait_for()
    visits, deadline, turn = 0, time.monotonic() + minutes * 60, 0
    while time.monotonic() < deadline:
        for title in PAGES:
            page.locator("[data-testid='stSidebarNav'] a", has_text=title).click()
            page.locator("h1", has_text=title if title != "Home" else "PyTorch Automation Studio").wait_for()
            page.wait_for_timeout(1500)
            visits += 1
        link = DEEP_LINKS[turn % len(DEEP_LINKS)]
        page.goto(f"{ui_url}/{link}")
        page.locator("h1").first.wait_for()
        page.reload()
        page.locator("h1").first.wait_for()
        visits += 2
        page.locator("[data-testid='stSidebarNav'] a", has_text="Train").click()
        page.wait_for_timeout(20_000)  # a person reading the Train page
        turn += 1
    return visits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        data_dir, log_path = Path(tmp) / "data", Path(tmp) / "launcher.log"
        proc, ports = start_launcher(data_dir, log_path)
        stop = threading.Event()
        churn = threading.Thread(target=churn_files, args=([REPO / "engine", REPO / "pages", Path(tmp)], stop))
        try:
            password = wait_until_up(log_path, ports)
            ui = next(p for p in psutil.Process(proc.pid).children(recursive=True)
                      if "streamlit" in " ".join(p.cmdline()))
            churn.start()
            before, started = cpu_seconds(ui.pid), time.monotonic()
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.set_default_timeout(60_000)
                visits = use_the_product(page, f"http://127.0.0.1:{ports['UI_PORT']}", password, args.minutes)
                browser.close()
            used, elapsed = cpu_seconds(ui.pid) - before, time.monotonic() - started
        finally:
            stop.set()
            if churn.is_alive():
                churn.join()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        lines = log_path.read_text(errors="replace").splitlines()
    flagged = [line for line in lines if WARNINGS.search(line)]
    print(f"used the product for {elapsed / 60:.1f} min: {visits} page visits, files churned beside it")
    print(f"UI process CPU: {used:.1f} CPU-s = {100 * used / elapsed:.1f} % of a core (while in use)")
    print(f"launcher log: {len(lines)} lines, {len(flagged)} mention a watcher, inotify or a traceback "
          "(peer, from the issue: ~14,000 'Inotify queue overflowed')")
    for line in flagged[:20]:
        print("  " + line)
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
