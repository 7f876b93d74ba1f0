"""Hardening figures on a real stack (loopback only, bounded loops): idle sockets, image memory, guessing.

Prints, side by side, the API under gunicorn's threaded worker (how it ran before) and under the gevent
worker (how it runs now):

1. ``GET /health`` latency (p50/p99, timeouts) while N authenticated, idle Socket.IO websockets and M
   slow-header connections are held open.
2. 20 parallel 49 MP predictions (16-bit RGBA PNGs, and 8-bit RGB PNGs under the budget): the answers
   and the API's peak and settled RSS.
3. 1,000 wrong passwords for one user: how many were evaluated (401) and how many refused (429).

Usage: ``python -m bench.bench_security [--idle 500] [--slow 200]`` (about two minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from services.platform.config import REPO_ROOT
from tests.harness import Stack, wait_http


def ws_frame(text: str) -> bytes:
    """One masked client text frame (RFC 6455)."""
    payload = text.encode()
    mask = os.urandom(4)
    size = len(payload)
    head = struct.pack("!BB", 0x81, 0x80 | size) if size < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def open_idle_socketio(port: int, token: str) -> socket.socket | None:
    """A websocket that joins ``/jobs`` with a token and then says nothing; None if refused."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    try:
        if b" 101 " not in sock.recv(4096):  # a full thread pool answers nothing: recv times out
            sock.close()
            return None
        sock.sendall(ws_frame('40/jobs,' + json.dumps({"token": token})))
    except OSError:
        sock.close()
        return None
    return sock


def open_slow_header(port: int) -> socket.socket:
    """A connection that starts a request and never finishes its headers."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    return sock


def health_latencies(url: str, samples: int, timeout: float) -> tuple[list[float], int]:
    times, failed = [], 0
    for _ in range(samples):
        start = time.perf_counter()
        try:
            requests.get(url + "/health", timeout=timeout)
            times.append(time.perf_counter() - start)
        except requests.RequestException:
            failed += 1
        time.sleep(0.02)
    return times, failed


def p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] * 1000


def bench_idle(stack: Stack, idle: int, slow: int, samples: int, timeout: float) -> dict:
    token = stack.token("operator")
    held = []
    for _ in range(idle):  # stop at the first refusal: a threaded server that is full answers no more
        sock = open_idle_socketio(stack.api_port, token)
        if sock is None:
            break
        held.append(sock)
    held_slow = []
    for _ in range(slow):
        try:
            held_slow.append(open_slow_header(stack.api_port))
        except OSError:
            break
    time.sleep(1.0)
    try:
        times, failed = health_latencies(stack.url, samples, timeout)
    finally:
        for s in held + held_slow:
            s.close()
    return {"websockets": len(held), "slow": len(held_slow), "p50": p(times, 0.5), "p99": p(times, 0.99),
            "timeouts": failed, "samples": samples}


def png(width: int, height: int, bit_depth: int, colour_type: int, channels: int) -> bytes:
    """A black PNG written chunk by chunk (a 7000x7000 16-bit RGBA one is ~381 KB)."""
    row = b"\x00" + bytes(width * channels * bit_depth // 8)
    raw = row * height

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def rss_mb(pid: int, key: str) -> float:
    """VmRSS or VmHWM (peak) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def api_worker_pid(stack: Stack) -> int:
    children = Path(f"/proc/{stack.api.pid}/task/{stack.api.pid}/children").read_text().split()
    return int(children[0]) if children else stack.api.pid


def bench_images(stack: Stack, image: bytes, parallel: int = 20) -> dict:
    pid = api_worker_pid(stack)
    before = rss_mb(pid, "VmRSS")
    body = {"image": "data:image/png;base64," + base64.b64encode(image).decode()}
    headers = stack.headers("operator")

    def post(_):
        start = time.perf_counter()
        try:
            r = requests.post(stack.url + "/api/v1/predict", json=body, headers=headers, timeout=120)
            return r.status_code, time.perf_counter() - start
        except requests.RequestException:
            return "error", time.perf_counter() - start

    with ThreadPoolExecutor(parallel) as pool:
        answers = list(pool.map(post, range(parallel)))
    peak = rss_mb(pid, "VmHWM")
    time.sleep(10)
    settled = rss_mb(pid, "VmRSS")
    codes: dict = {}
    for code, _ in answers:
        codes[code] = codes.get(code, 0) + 1
    return {"codes": codes, "slowest_s": max(t for _, t in answers), "rss_before": before, "rss_peak": peak,
            "rss_after_10s": settled}


def bench_guessing(stack: Stack, attempts: int = 1000) -> dict:
    from services.storage.store import open_store

    open_store(stack.data_dir).create_user("bench_victim", "bench-victim-passphrase", "client")
    codes: dict = {}
    session = requests.Session()
    start = time.perf_counter()
    for i in range(attempts):
        code = session.post(stack.url + "/auth", json={"username": "bench_victim", "password": f"g{i}"},
                            timeout=30).status_code
        codes[code] = codes.get(code, 0) + 1
    return {"codes": codes, "seconds": time.perf_counter() - start}


class ThreadedStack(Stack):
    """The stack with the API under gunicorn's threaded worker, 64 threads: how it ran before."""

    def start_api(self) -> None:
        argv = [sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "64", "--timeout", "120",
                "-b", f"127.0.0.1:{self.api_port}", "services.web.wsgi:app"]
        self.api = subprocess.Popen(argv, cwd=REPO_ROOT, env=self.env, stdout=self.log("api"),
                                    stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(self.url + "/health", proc=self.api)


def start_stack(worker: str) -> Stack:
    """A stack whose API runs under ``worker``: ``gevent`` (now) or ``gthread`` (64 threads, as before)."""
    kind = ThreadedStack if worker == "gthread" else Stack
    return kind(Path(tempfile.mkdtemp(prefix=f"bench-sec-{worker}-"))).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=int, default=500, help="idle authenticated websockets")
    parser.add_argument("--slow", type=int, default=200, help="slow-header connections")
    parser.add_argument("--samples", type=int, default=100, help="/health requests measured")
    args = parser.parse_args()
    bomb = png(7000, 7000, 16, 6, 4)
    rgb8 = png(7000, 7000, 8, 2, 3)
    results = {}
    for worker in ("gthread", "gevent"):
        stack = start_stack(worker)
        try:
            results[worker] = {"idle": bench_idle(stack, args.idle, args.slow,
                                                  args.samples if worker == "gevent" else 10, timeout=2.0)}
            if worker == "gevent":
                results[worker].update(bomb=bench_images(stack, bomb), rgb8=bench_images(stack, rgb8),
                                       guess=bench_guessing(stack))
        finally:
            stack.close()
    report(results, args)


def report(results: dict, args) -> None:
    print(f"\n/health while {args.idle} idle authenticated websockets and {args.slow} slow-header connections are open")
    print(f"{'':28}{'gthread, 64 threads (before)':>32}{'gevent worker (now)':>24}")
    a, b = results["gthread"]["idle"], results["gevent"]["idle"]
    print(f"{'connections held (ws/slow)':28}{a['websockets']:>26}/{a['slow']:<5}{b['websockets']:>18}/{b['slow']:<5}")
    print(f"{'p50 ms':28}{a['p50']:>32.1f}{b['p50']:>24.1f}")
    print(f"{'p99 ms':28}{a['p99']:>32.1f}{b['p99']:>24.1f}")
    print(f"{'timed out (2 s) / samples':28}{a['timeouts']:>28}/{a['samples']:<3}{b['timeouts']:>20}/{b['samples']:<3}")
    print("\n20 parallel 7000x7000 PNG predictions (API worker RSS, MB)")
    for key, name in (("bomb", "16-bit RGBA"), ("rgb8", "8-bit RGB")):
        r = results["gevent"][key]
        print(f"  {name:12} answers {r['codes']}  slowest {r['slowest_s']:.1f} s  RSS before "
              f"{r['rss_before']:.0f}, peak {r['rss_peak']:.0f}, 10 s after {r['rss_after_10s']:.0f}")
    g = results["gevent"]["guess"]
    print(f"\n1,000 wrong passwords for one user in {g['seconds']:.1f} s: answers {g['codes']}")


if __name__ == "__main__":
    main()
