"""Soak: the hardening issue's attacks in a loop beside normal use, on one real stack, then the figures.

A real stack on a temporary DATA_DIR (Redis, one RQ worker, the API under gunicorn as ``make run`` starts
it, the Streamlit UI). Normal use runs throughout: trainings on real handwritten digits submitted one after
another (each must finish), predictions from a client every few tenths of a second, and a Chromium
session that signs in and walks the pages. ``GET /health`` is probed every 100 ms.

First ``--quiet`` minutes of normal use alone (the peer: the same stack, unattacked), then ``--minutes``
with every attack of the issue looping beside it:

1. HDF5 uploads that point at other files (external storage on the JWT key, an external link);
2. a 16 MB request line, and a request with 1,000 headers;
3. uploads to the UI's upload endpoint without signing in, and a 64 MB body to the UI's cookie route;
4. 10,000 Socket.IO ``subscribe`` events on one socket;
5. a zip of 100,000 tiny entries;
6. a sparse HDF5 that declares 12 GB of images, and a zip of 1x1 images to be resized to 1024 px;
7. a study over the work budget, from an operator;
8. the unexpired token of a user who was deleted and created again;
9. wrong passwords for ``admin`` from a second loopback address (while admin signs in from the first).

Afterwards the attacks stop, the stack idles ``--settle`` seconds, and the script prints per phase the
``/health`` latency (p50, p99, max, failures), the trainings finished, the predictions answered, the
browser's page visits, what each attack got back, and the RSS of the API, the UI and the worker: at the
start, at the peak, and after settling.

Usage: ``python bench/soak_attacks.py [--minutes 10] [--quiet 2] [--settle 60]``.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import io
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import psutil
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.digits import digits_body, digits_test_images, ensure_digits_hdf5  # noqa: E402
from tests.harness import Stack, chromium  # noqa: E402


class Tally:
    """Thread-safe counters of outcomes per name."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def add(self, name: str, outcome) -> None:
        with self._lock:
            self.counts[name][str(outcome)] += 1


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def rss_mb(pid: int) -> float:
    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20
    except psutil.Error:
        return float("nan")


class Tokens:
    """One token per role, renewed before it expires: a script signs in once, not at every request (a burst of
    parallel sign-ins of one account from one address counts against the sign-in throttle while in flight)."""

    def __init__(self, stack: Stack):
        self._stack, self._lock, self._held = stack, threading.Lock(), {}

    def headers(self, role: str) -> dict:
        with self._lock:
            held = self._held.get(role)
            if held is None or time.monotonic() - held[1] > 20 * 60:
                held = self._held[role] = (self._stack.headers(role), time.monotonic())
            return held[0]


def wait_job(stack: Stack, tokens: Tokens, job_id: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = requests.get(f"{stack.url}/api/v1/jobs/{job_id}", headers=tokens.headers("admin"), timeout=10).json()
        if record.get("status") in ("finished", "failed", "cancelled", "interrupted"):
            return record
        time.sleep(0.5)
    return {"status": "did not end", "id": job_id}


# ------------------------------------------------------------------------------------------ normal use
def probe_health(stack: Stack, stop: threading.Event, out: list) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        try:
            ok = requests.get(stack.url + "/health", timeout=5).ok
            out.append((time.monotonic(), time.perf_counter() - start if ok else None))
        except requests.RequestException:
            out.append((time.monotonic(), None))
        stop.wait(0.1)


def train_forever(stack: Stack, tokens: Tokens, stop: threading.Event, tally: Tally, models: list) -> None:
    while not stop.is_set():
        r = requests.post(stack.url + "/api/v1/train", json=digits_body(num_epochs="3"),
                          headers=tokens.headers("operator"), timeout=60)
        if r.status_code != 202:
            tally.add("training", f"refused {r.status_code}")
            stop.wait(5)
            continue
        record = wait_job(stack, tokens, r.json()["job_id"])
        tally.add("training", record["status"])
        if record["status"] == "finished":
            models.append(record["id"])


def predict_forever(stack: Stack, tokens: Tokens, stop: threading.Event, tally: Tally, models: list,
                    latencies: list) -> None:
    images, _ = digits_test_images()
    buf = io.BytesIO()
    Image.fromarray(np.kron(images[0], np.ones((4, 4, 1), np.uint8))).save(buf, "JPEG", quality=90)
    image = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    while not stop.is_set() and not models:
        stop.wait(1)
    while not stop.is_set():
        start = time.perf_counter()
        try:
            r = requests.post(stack.url + "/api/v1/predict", json={"image": image}, headers=tokens.headers("client"),
                              timeout=30)
            tally.add("prediction", r.status_code)
            if r.ok:
                latencies.append(time.perf_counter() - start)
        except requests.RequestException as exc:
            tally.add("prediction", type(exc).__name__)
        stop.wait(0.3)


def browse_forever(stack: Stack, stop: threading.Event, tally: Tally) -> None:
    from playwright.sync_api import sync_playwright

    if chromium() is None:
        tally.add("browser", "no chromium")
        return
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.set_default_timeout(60_000)
        page.goto(stack.ui_url)
        page.get_by_label("Username", exact=True).fill("operator")
        page.get_by_label("Password", exact=True).fill(stack.passwords["operator"])
        page.get_by_role("button", name="Sign in").click()
        page.locator("h1", has_text="PyTorch Automation Studio").wait_for()
        while not stop.is_set():
            for title in ("Jobs", "Train", "Datasets", "Models"):
                try:
                    page.locator("[data-testid='stSidebarNav'] a", has_text=title).click()
                    page.locator("h1", has_text=title).wait_for()
                    broken = page.locator("[data-testid='stException']").count() > 0
                    tally.add("browser", "traceback" if broken else "page shown")
                except Exception as exc:  # a page that did not come up counts, the walk goes on
                    tally.add("browser", type(exc).__name__)
                stop.wait(3)
        browser.close()


# ------------------------------------------------------------------------------------------ the attacks
def _outcome(fn) -> str:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - an attack's own failure is counted, and the loop goes on
        return type(exc).__name__


def hdf5_pointing_elsewhere(folder: Path, secret: Path) -> list[Path]:
    external = folder / "external.h5"
    with h5py.File(external, "w") as f:
        size = secret.stat().st_size
        f.create_dataset("X_train", shape=(1, size, 1), dtype="u1", external=[(str(secret), 0, size)])
        f["y_train"] = np.zeros(1, np.int64)
        f["X_test"], f["y_test"] = np.zeros((1, 8, 8), np.uint8), np.zeros(1, np.int64)
    linked = folder / "linked.h5"
    with h5py.File(linked, "w") as f:
        f["X_train"] = h5py.ExternalLink(str(external), "X_train")
        f["y_train"], f["X_test"], f["y_test"] = np.zeros(1, np.int64), np.zeros((1, 8, 8), np.uint8), np.zeros(1)
    return [external, linked]


def sparse_hdf5(folder: Path) -> Path:
    path = folder / "sparse.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("X_train", shape=(60_000, 256, 256, 3), dtype="u1", chunks=(1, 256, 256, 3))
        f["y_train"] = np.zeros(60_000, np.int64)
        f.create_dataset("X_test", shape=(1000, 256, 256, 3), dtype="u1", chunks=(1, 256, 256, 3))
        f["y_test"] = np.zeros(1000, np.int64)
    return path


def many_entries_zip(folder: Path, count: int = 100_000) -> Path:
    path = folder / "many.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(count):
            zf.writestr(f"photos/c{i % 2}/{i}.png", b"x")
    return path


def tiny_images_zip(folder: Path) -> Path:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 10, 10)).save(buf, "PNG")
    path = folder / "tiny.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(2000):
            zf.writestr(f"c{i % 2}/{i}.png", buf.getvalue())
    return path


def upload(stack: Stack, tokens: Tokens, path: Path, **form) -> str:
    with open(path, "rb") as fh:
        r = requests.post(stack.url + "/api/v1/datasets", headers=tokens.headers("operator"),
                          files={"file": (path.name, fh)},
                          data={"name": f"soak{time.monotonic_ns()}", **form}, timeout=60)
    if r.status_code != 202:
        return str(r.status_code)
    return f"202 then {wait_job(stack, tokens, r.json()['job_id'], timeout=300)['status']}"


def long_request_line(stack: Stack) -> str:
    with socket.create_connection(("127.0.0.1", stack.api_port), timeout=10) as s:
        s.sendall(b"GET /health?x=")
        chunk = b"a" * 65536
        try:
            for _ in range(256):  # 16 MB
                s.sendall(chunk)
        except OSError as exc:
            return f"closed while sending ({type(exc).__name__})"
        return s.recv(64).split(b"\r\n")[0].decode(errors="replace") or "closed"


def many_headers(stack: Stack) -> str:
    headers = {f"X-H{i}": "v" for i in range(1000)}
    return str(requests.get(stack.url + "/health", headers=headers, timeout=10).status_code)


def ui_upload_unsigned(stack: Stack) -> str:
    def body():
        for _ in range(64):
            yield b"\0" * 2**20

    url = f"{stack.ui_url}/_stcore/upload_file/{time.monotonic_ns()}/f1"
    return str(requests.put(url, data=body(), headers={"Content-Type": "application/octet-stream"},
                            timeout=30).status_code)


def cookie_route_big_body(stack: Stack) -> str:
    def body():
        for _ in range(64):
            yield b"a" * 2**20

    return str(requests.post(f"{stack.ui_url}/_studio/session", data=body(), timeout=30,
                             headers={"Origin": stack.ui_url, "Sec-Fetch-Site": "same-origin"}).status_code)


def socketio_flood(stack: Stack, token: str) -> str:
    import socketio

    client = socketio.Client(reconnection=False)
    client.connect(stack.url, namespaces=["/jobs"], auth={"token": token}, wait_timeout=10, transports=["websocket"])
    sent = 0
    try:
        for i in range(10_000):
            try:
                client.emit("subscribe", {"job_id": f"j{i}"}, namespace="/jobs")
            except socketio.exceptions.SocketIOError:  # the server closed it: what the attack should meet
                break
            sent += 1
        time.sleep(1)
        return "disconnected" if not client.connected else f"still connected after {sent}"
    finally:
        client.disconnect()


def study_over_budget(stack: Stack, tokens: Tokens) -> str:
    body = {**digits_body(), "n_trials": 1000, "epochs_per_trial": 100_000, "parallel": 64,
            "space": {"learning_rate": [0.001, 0.1]}}
    return str(requests.post(stack.url + "/api/v1/tune", json=body, headers=tokens.headers("operator"),
                             timeout=30).status_code)


def resurrected_token(stack: Stack, old_token: str) -> str:
    return str(requests.get(stack.url + "/api/v1/jobs", headers={"Authorization": f"JWT {old_token}"},
                            timeout=10).status_code)


def wrong_password_from_elsewhere(stack: Stack) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", stack.api_port, timeout=10, source_address=("127.0.0.2", 0))
    conn.request("POST", "/auth", json.dumps({"username": "admin", "password": "not-the-password"}),
                 {"Content-Type": "application/json"})
    status = conn.getresponse().status
    conn.close()
    return str(status)


def owner_signs_in(stack: Stack) -> str:
    r = requests.post(stack.url + "/auth", json={"username": "admin", "password": stack.passwords["admin"]},
                      timeout=10)
    return str(r.status_code)


def attack_forever(name: str, fn, stop: threading.Event, tally: Tally, pause: float) -> None:
    while not stop.is_set():
        tally.add(name, _outcome(fn))
        stop.wait(pause)


def start_attacks(stack: Stack, tokens: Tokens, folder: Path, stop: threading.Event,
                  tally: Tally) -> list[threading.Thread]:
    admin = tokens.headers("admin")
    victim = f"victim{int(time.time())}"
    requests.post(stack.url + "/api/v1/users", headers=admin, timeout=30,
                  json={"username": victim, "password": "pw-" + victim, "role": "operator"})
    old = requests.post(stack.url + "/auth", json={"username": victim, "password": "pw-" + victim}, timeout=10)
    old_token = old.json().get("access_token", "")
    requests.delete(f"{stack.url}/api/v1/users/{victim}", headers=admin, timeout=30)
    requests.post(stack.url + "/api/v1/users", headers=admin, timeout=30,
                  json={"username": victim, "password": "pw2-" + victim, "role": "admin"})
    pointing = hdf5_pointing_elsewhere(folder, stack.data_dir / "jwt_secret.key")
    sparse, many, tiny = sparse_hdf5(folder), many_entries_zip(folder), tiny_images_zip(folder)
    token = tokens.headers("operator")["Authorization"].split()[1]
    plan = {
        "1 hdf5 external storage": (lambda: upload(stack, tokens, pointing[0]), 2),
        "1 hdf5 external link": (lambda: upload(stack, tokens, pointing[1]), 2),
        "2 16 MB request line": (lambda: long_request_line(stack), 2),
        "2 1,000 headers": (lambda: many_headers(stack), 1),
        "3 UI upload, not signed in": (lambda: ui_upload_unsigned(stack), 1),
        "3 64 MB cookie body": (lambda: cookie_route_big_body(stack), 1),
        "4 10,000 subscribes": (lambda: socketio_flood(stack, token), 3),
        "5 100,000-entry zip": (lambda: upload(stack, tokens, many), 3),
        "6 sparse 12 GB hdf5": (lambda: upload(stack, tokens, sparse), 3),
        "6 1x1 zip to 1024 px": (lambda: upload(stack, tokens, tiny, image_size="1024"), 3),
        "7 study over budget": (lambda: study_over_budget(stack, tokens), 2),
        "8 resurrected token": (lambda: resurrected_token(stack, old_token), 1),
        "9 wrong password, other address": (lambda: wrong_password_from_elsewhere(stack), 0.2),
        "9 owner signs in meanwhile": (lambda: owner_signs_in(stack), 5),
    }
    threads = [threading.Thread(target=attack_forever, args=(name, fn, stop, tally, pause), daemon=True)
               for name, (fn, pause) in plan.items()]
    for thread in threads:
        thread.start()
    return threads


# ------------------------------------------------------------------------------------------ the run
def memory(stack: Stack) -> dict[str, float]:
    return {"api": rss_mb(stack.api.pid), "ui": rss_mb(stack.ui.pid), "worker": rss_mb(stack.workers[0].pid)}


def watch_memory(stack: Stack, stop: threading.Event, peak: dict) -> None:
    while not stop.is_set():
        for name, value in memory(stack).items():
            peak[name] = max(peak.get(name, 0.0), value)
        stop.wait(0.5)


def phase(stack: Stack, tokens: Tokens, minutes: float, folder: Path | None) -> dict:
    stop, tally, health, models, predict_times, peak = threading.Event(), Tally(), [], [], [], {}
    workers = [threading.Thread(target=probe_health, args=(stack, stop, health)),
               threading.Thread(target=train_forever, args=(stack, tokens, stop, tally, models)),
               threading.Thread(target=predict_forever, args=(stack, tokens, stop, tally, models, predict_times)),
               threading.Thread(target=browse_forever, args=(stack, stop, tally)),
               threading.Thread(target=watch_memory, args=(stack, stop, peak))]
    start_mem = memory(stack)
    for thread in workers:
        thread.start()
    attackers = start_attacks(stack, tokens, folder, stop, tally) if folder else []
    time.sleep(minutes * 60)
    stop.set()
    for thread in workers + attackers:
        thread.join(timeout=900)
    return {"health": [t for _, t in health], "tally": tally.counts, "predict": predict_times,
            "start_mem": start_mem, "peak_mem": peak}


def report(name: str, result: dict) -> None:
    ok = [t * 1000 for t in result["health"] if t is not None]
    failed = sum(t is None for t in result["health"])
    print(f"\n== {name}")
    print(f"  /health: {len(ok)} answers, p50 {percentile(ok, 50):.1f} ms, p99 {percentile(ok, 99):.1f} ms, "
          f"max {max(ok, default=float('nan')):.0f} ms, {failed} failed or over 5 s")
    times = [t * 1000 for t in result["predict"]]
    if times:
        print(f"  predictions answered: p50 {statistics.median(times):.0f} ms, p99 {percentile(times, 99):.0f} ms")
    for what, counts in sorted(result["tally"].items()):
        print(f"  {what}: " + ", ".join(f"{k} x{v}" for k, v in counts.most_common()))
    peaks = result["peak_mem"]
    print("  RSS MB (start -> peak): " + ", ".join(
        f"{k} {v:.0f} -> {peaks.get(k, float('nan')):.0f}" for k, v in result["start_mem"].items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--quiet", type=float, default=2.0)
    parser.add_argument("--settle", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp) / "data").start()
        try:
            stack.start_ui()
            ensure_digits_hdf5(stack.data_dir)
            tokens = Tokens(stack)
            quiet = phase(stack, tokens, args.quiet, None)
            report(f"normal use alone, {args.quiet:g} min (the peer)", quiet)
            folder = Path(tmp) / "attacks"
            folder.mkdir()
            attacked = phase(stack, tokens, args.minutes, folder)
            report(f"normal use beside the attacks, {args.minutes:g} min", attacked)
            time.sleep(args.settle)
            after = memory(stack)
            print(f"\nRSS MB after {args.settle:g} s idle: " + ", ".join(
                f"{k} {v:.0f} (before the attacks, warm: {attacked['start_mem'][k]:.0f})" for k, v in after.items()))
        finally:
            stack.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
