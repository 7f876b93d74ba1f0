"""One Socket.IO connection cannot stall the API: a flood of events, before or after sign-in, is refused.

Each connection spends a token per packet (``services.api.SOCKET_EVENT_BURST`` at once, then
``SOCKET_EVENTS_PER_SECOND``); one over budget is told once (a ``refused`` event) and closed, with one log
line. The attacks speak Socket.IO by hand over a real websocket, to send what no polite client would.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from contextlib import contextmanager

import psutil
import pytest
import requests
import socketio
import websocket

from services.api import SOCKET_EVENT_BURST, SOCKET_MAX_JOB_ROOMS, SOCKET_MAX_MESSAGE_BYTES
from services.jobs import runtime as jobs
from services.storage.store import open_store
from tests import fake_jobs  # noqa: F401  (registers the test job kind in this process)
from tests.harness import peak_rss_during

FLOOD = 10_000  # events the attack of issue 21 sent on one socket in 0.4 s
# Before the fix /health took up to 14 s. A few dozen probes on a busy 2-core CI machine see an occasional
# 0.2 s scheduling hiccup, so the bound here is 1 s; the 200 ms p99 is the soak's (bench/soak_attacks.py).
HEALTH_P99_SECONDS = 1.0
HELD_BYTES = 64e6  # the API's RSS may move this much (it went from 0.9 to 2.6 GB)
PASSWORD = "socketio-flood-passphrase-7"


class RawSocket:
    """Engine.IO v4 / Socket.IO v5 spoken by hand over one websocket."""

    def __init__(self, stack):
        url = stack.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.ws = websocket.create_connection(url, timeout=10)
        assert self.ws.recv().startswith("0{")  # the Engine.IO handshake

    def connect(self, namespace: str, token: str) -> str:
        self.ws.send(f"40{namespace}," + json.dumps({"token": token}))
        return self.ws.recv()

    @staticmethod
    def frames(messages) -> bytes:
        """The messages as websocket frames, made before a test times ``/health`` (framing holds the GIL)."""
        return b"".join(websocket.ABNF.create_frame(m, websocket.ABNF.OPCODE_TEXT).format() for m in messages)

    def send_all(self, data: bytes) -> None:
        """Send frames in one write, as fast as the network allows; the server may close the connection halfway."""
        try:
            self.ws.sock.sendall(data)
        except OSError:
            pass

    def read_until_closed(self, seconds: float = 10.0) -> tuple[list[str], bool]:
        """Every message the server sends until it closes the connection; ``(messages, closed)``."""
        messages, deadline = [], time.monotonic() + seconds
        self.ws.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                message = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (OSError, websocket.WebSocketException):
                return messages, True
            if not message:
                return messages, True
            messages.append(message)
        return messages, False

    def read(self, count: int, seconds: float = 10.0) -> list[str]:
        """The next ``count`` messages (fewer if they do not come within ``seconds``)."""
        messages, deadline = [], time.monotonic() + seconds
        self.ws.settimeout(0.5)
        while len(messages) < count and time.monotonic() < deadline:
            try:
                messages.append(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
        return messages

    def close(self) -> None:
        self.ws.close()


def api_process(stack) -> psutil.Process:
    """The gunicorn worker that serves the API (the master only supervises it)."""
    return psutil.Process(stack.api.pid).children()[0]


@contextmanager
def health_timings(stack, settle: float = 1.0):
    """Time ``GET /health`` from another thread while the block runs and for ``settle`` seconds after it."""
    timings, done = [], threading.Event()

    def probe():
        while not done.is_set():
            started = time.perf_counter()
            requests.get(stack.url + "/health", timeout=60)
            timings.append(time.perf_counter() - started)
            time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        yield timings
        time.sleep(settle)
    finally:
        done.set()
        prober.join()


def p99(timings: list[float]) -> float:
    ordered = sorted(timings)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


def settled(measure, limit: float, seconds: float = 10.0) -> float:
    """``measure()`` once it is at most ``limit``, or its last value after ``seconds``."""
    deadline = time.monotonic() + seconds
    value = measure()
    while value > limit and time.monotonic() < deadline:
        time.sleep(0.2)
        value = measure()
    return value


def new_user(stack, role: str) -> tuple[str, str]:
    """A user of its own (so this file's jobs count against nobody else's quota) and a token for it."""
    name = f"sio_{secrets.token_hex(4)}"
    open_store(stack.data_dir).create_user(name, PASSWORD, role)
    r = requests.post(stack.url + "/auth", json={"username": name, "password": PASSWORD}, timeout=10)
    return name, r.json()["access_token"]


def refusals(messages: list[str]) -> list[dict]:
    return [json.loads(m[m.index("["):])[1] for m in messages if m.startswith("42") and '"refused"' in m]


FLOODS = {
    # after sign-in: the attack of issue 21, subscribe events with acknowledgements on /jobs
    "subscribe": lambda: (f'42/jobs,{i}["subscribe",{{"job_id":"{i:032x}"}}]' for i in range(FLOOD)),
    # before sign-in: namespace connects without a token
    "connect without a token": lambda: ("40/jobs," for _ in range(FLOOD)),
    # packets Socket.IO cannot parse (each logged a traceback)
    "malformed": lambda: ('42/jobs,["subscribe", {' for _ in range(FLOOD)),
    # Engine.IO upgrade packets, each answered with a packet whether the client reads them or not
    "upgrade packets": lambda: ("5" for _ in range(FLOOD)),
    # frames that are no Engine.IO packet (one escaped the read loop as a traceback)
    "undecodable frames": lambda: ("x" for _ in range(FLOOD)),
}


@pytest.mark.parametrize("flood", FLOODS)
def test_a_flood_on_one_socket_is_refused_and_leaves_the_api_as_it_was(stack, flood):
    api, log = api_process(stack), stack.data_dir / "logs" / "api.log"
    fds, rss, log_size = api.num_fds(), api.memory_info().rss, log.stat().st_size
    attacker = RawSocket(stack)
    if flood == "subscribe":
        assert attacker.connect("/jobs", stack.token("operator")).startswith("40/jobs,")
    frames = RawSocket.frames(FLOODS[flood]())

    def attack():
        attacker.send_all(frames)
        return attacker.read_until_closed()

    with health_timings(stack) as timings:
        started = time.monotonic()
        _, peak, (messages, closed) = peak_rss_during(api, attack)
        took = time.monotonic() - started
    attacker.close()

    assert closed, f"the server kept the flooding socket open ({len(messages)} messages)"
    told = refusals(messages)
    if flood == "subscribe":  # a socket that joined a namespace hears why, once
        assert len(told) == 1 and "too many events" in told[0]["error"], messages[-3:]
        assert len([m for m in messages if m.startswith("43/jobs,")]) <= SOCKET_EVENT_BURST  # acks
    if flood == "connect without a token":  # each connect it was allowed is refused, naming the token
        errors = [json.loads(m[len("44/jobs,"):]) for m in messages if m.startswith("44/jobs,")]
        assert 0 < len(errors) <= SOCKET_EVENT_BURST and all("a token is required" in e["message"] for e in errors)
    assert took < 15
    assert p99(timings) < HEALTH_P99_SECONDS, sorted(timings)[-5:]
    assert peak < rss + HELD_BYTES
    assert settled(api.num_fds, fds + 5) <= fds + 5
    assert settled(lambda: api.memory_info().rss, rss + HELD_BYTES) <= rss + HELD_BYTES
    grown = log.read_text(errors="replace")[log_size:]
    assert len(grown) < 2_000 and "Traceback" not in grown, grown[:2_000]
    assert grown.count("Socket.IO connection") == 1, grown


def subscribe_frames(count: int) -> bytes:
    return RawSocket.frames(f'42/jobs,{i}["subscribe",{{"job_id":"{i:032x}"}}]' for i in range(count))


def test_events_within_budget_on_many_sockets_hold_no_files(stack):
    """Each event's greenlet once opened a catalog connection of its own, whose files SQLite kept open."""
    api, token = api_process(stack), stack.token("operator")
    sockets = [RawSocket(stack) for _ in range(40)]
    try:
        for sock in sockets:
            assert sock.connect("/jobs", token).startswith("40/jobs,")
        fds, frames = api.num_fds(), subscribe_frames(SOCKET_EVENT_BURST - 5)
        for sock in sockets:
            sock.send_all(frames)
        for sock in sockets:
            answers = sock.read(SOCKET_EVENT_BURST - 5)
            assert len(answers) == SOCKET_EVENT_BURST - 5 and all('"ok":false' in a for a in answers), answers[-2:]
        assert settled(api.num_fds, fds + 10) <= fds + 10
    finally:
        for sock in sockets:
            sock.close()


def test_long_polling_posts_are_bounded_and_hold_nothing(stack):
    """Before any sign-in: an oversized POST held its request for good (Engine.IO waited for a poll that
    never came), a POST of too many packets logged a traceback, and many small POSTs were free."""
    api, log = api_process(stack), stack.data_dir / "logs" / "api.log"
    base = stack.url + "/socket.io/?EIO=4&transport=polling"
    fds, log_size = api.num_fds(), log.stat().st_size

    def session() -> str:
        return base + "&sid=" + json.loads(requests.get(base, timeout=5).text[1:])["sid"]

    for body in ("x" * (SOCKET_MAX_MESSAGE_BYTES + 1), "\x1e".join(["40/jobs,"] * 17)):
        for _ in range(20):
            assert requests.post(session(), data=body, timeout=3).status_code in (200, 400)
    url = session()
    answers = [requests.post(url, data="\x1e".join(["40/jobs,"] * 10), timeout=3).status_code for _ in range(10)]
    assert answers[:3] == [200] * 3 and answers[-1] == 400  # the session was closed once over budget
    assert settled(api.num_fds, fds + 5) <= fds + 5
    grown = log.read_text(errors="replace")[log_size:]
    assert "Traceback" not in grown and len(grown) < 10_000, grown[:2_000]


def test_a_message_over_the_size_limit_is_refused_while_it_arrives(stack):
    api = api_process(stack)
    attacker = RawSocket(stack)  # no sign-in needed to send a message
    size = 4000 * SOCKET_MAX_MESSAGE_BYTES  # 64 MB
    big = RawSocket.frames(['42/jobs,["subscribe",{"job_id":"' + "x" * size + '"}]'])

    def attack():
        attacker.send_all(big)
        return attacker.read_until_closed(5)

    with health_timings(stack) as timings:
        rss, peak, (_, closed) = peak_rss_during(api, attack)
    attacker.close()
    assert closed
    assert peak < rss + size / 4, f"{(peak - rss) / 1e6:.0f} MB held while the message arrived"
    assert p99(timings) < HEALTH_P99_SECONDS, sorted(timings)[-5:]


def test_a_socket_follows_a_bounded_number_of_jobs(stack):
    name, token = new_user(stack, "client")
    store = open_store(stack.data_dir)
    job_ids = [secrets.token_hex(16) for _ in range(SOCKET_MAX_JOB_ROOMS + 1)]
    for job_id in job_ids:
        store.create_job(job_id, "test-count", {"n": 1}, name)
        store.update_job(job_id, status="finished")
    client = socketio.Client(reconnection=False)
    client.connect(stack.url, namespaces=["/jobs"], auth={"token": token}, wait_timeout=10, transports=["websocket"])
    try:
        for job_id in job_ids[:-1]:  # paced, to stay within the event budget
            assert client.call("subscribe", {"job_id": job_id}, namespace="/jobs", timeout=10)["ok"] is True
            time.sleep(0.1)
        refused = client.call("subscribe", {"job_id": job_ids[-1]}, namespace="/jobs", timeout=10)
        assert refused["ok"] is False and refused["field"] == "job_id"
        assert f"at most {SOCKET_MAX_JOB_ROOMS} jobs" in refused["error"]
        again = client.call("subscribe", {"job_id": job_ids[0]}, namespace="/jobs", timeout=10)
        assert again["ok"] is True  # one it already follows
        assert client.call("unsubscribe", {"job_id": job_ids[0]}, namespace="/jobs", timeout=10)["ok"] is True
        assert client.call("subscribe", {"job_id": job_ids[-1]}, namespace="/jobs", timeout=10)["ok"] is True
        for bad in ({"job_id": "x" * 1000}, {"job_id": 7}, [1, 2]):
            answer = client.call("subscribe", bad, namespace="/jobs", timeout=10)
            assert answer["ok"] is False and answer["field"] == "job_id" and len(json.dumps(answer)) < 200
    finally:
        client.disconnect()


def test_a_well_behaved_client_gets_its_job_events_beside_a_flood(stack):
    name, token = new_user(stack, "client")
    attacker = RawSocket(stack)
    assert attacker.connect("/jobs", token).startswith("40/jobs,")
    events = []
    client = socketio.Client(reconnection=False)
    for event in ("epoch", "finished"):
        client.on(event, (lambda e: lambda data: events.append((e, data)))(event), namespace="/jobs")
    client.connect(stack.url, namespaces=["/jobs"], auth={"token": token}, wait_timeout=10, transports=["websocket"])
    try:
        job_id = jobs.submit(stack.config, open_store(stack.data_dir), "test-count", {"n": 3, "delay": 0.3}, name)
        assert client.call("subscribe", {"job_id": job_id}, namespace="/jobs", timeout=10)["ok"] is True
        attacker.send_all(RawSocket.frames(FLOODS["subscribe"]()))  # the same user, on another socket
        assert attacker.read_until_closed()[1]
        assert client.connected
        stack.wait_job(job_id)
        deadline = time.monotonic() + 10
        while not any(e == "finished" for e, _ in events) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        client.disconnect()
        attacker.close()
    assert [d["metrics"]["epoch"] for e, d in events if e == "epoch"] == [1, 2, 3]
    assert any(e == "finished" and d["job_id"] == job_id for e, d in events)
