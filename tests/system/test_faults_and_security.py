"""The whole product the way its users and attackers meet it: concurrency, outages, hostile input, secrets."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from services.jobs import runtime as jobs
from services.storage.store import open_store
from tests import fake_jobs  # noqa: F401  (registers the test job kind)


def jpeg(seed: int, size=(64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_fifty_concurrent_uploads_lose_nothing_and_mix_nothing_up(stack):
    headers = stack.headers("annotator")
    payloads = {f"conc_{i}": jpeg(i, (40 + i, 30 + i)) for i in range(50)}

    def upload(item):
        id_name, data = item
        return requests.post(stack.url + "/imgup", files={"file": (f"{id_name}.jpg", data)},
                             data={"id_name": id_name}, headers=headers, timeout=60)

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(upload, payloads.items()))
    assert [a.status_code for a in answers] == [200] * 50
    assert sorted(a.json()["image_id"] for a in answers) == sorted(payloads)
    for id_name, data in payloads.items():  # each stored file is byte-identical to what its client sent
        assert (stack.data_dir / "newdata" / "images" / f"{id_name}.jpg").read_bytes() == data
    rows = {r["id_name"]: r for r in open_store(stack.data_dir).list_images()}
    assert all(rows[f"conc_{i}"]["width"] == 40 + i for i in range(50))


@pytest.mark.parametrize("name,data", [
    ("truncated.jpg", jpeg(7)[:300]),
    ("text.jpg", b"this is not an image at all, only text" * 10),
    ("empty.png", b""),
])
def test_broken_images_get_a_clear_400_and_the_server_keeps_serving(stack, name, data):
    r = requests.post(stack.url + "/imgup", files={"file": (name, data)}, data={"id_name": name.split(".")[0]},
                      headers=stack.headers("annotator"), timeout=30)
    assert r.status_code == 400 and r.json()["field"] == "file", r.text
    assert requests.get(stack.url + "/health", timeout=10).status_code == 200


def test_a_decompression_bomb_is_refused_without_decoding_it(stack):
    buf = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(buf, "PNG")  # 144 MP of zeros: a few hundred KB on the wire
    start = time.monotonic()
    r = requests.post(stack.url + "/imgup", files={"file": ("bomb.png", buf.getvalue())}, data={"id_name": "bomb"},
                      headers=stack.headers("annotator"), timeout=60)
    assert r.status_code == 413 and time.monotonic() - start < 10
    assert not list((stack.data_dir / "newdata" / "images").glob("bomb.*"))


def test_redis_outage_gives_503_on_routes_that_need_it_then_recovers(stack):
    operator = stack.headers("operator")
    job_id = jobs.submit(stack.config, open_store(stack.data_dir), "test-count", {"n": 400, "delay": 0.05}, "operator")
    stack.wait_job(job_id, statuses=("started",))
    stack.stop_redis()
    try:
        r = requests.post(f"{stack.url}/api/v1/jobs/{job_id}/cancel", headers=operator, timeout=30)
        assert r.status_code == 503 and r.json()["error"] == "queue_unavailable"
        assert requests.get(stack.url + "/health", timeout=10).status_code == 503
        ok = requests.get(stack.url + "/imginfo/conc_1", headers=stack.headers("annotator"), timeout=10)
        assert ok.status_code in (200, 404)  # what does not need Redis keeps working
    finally:
        stack.start_redis()
    stack.wait_workers(1, timeout=60)
    assert requests.get(stack.url + "/health", timeout=10).json()["redis"] is True
    assert stack.workers and all(w.poll() is None for w in stack.workers)  # the workers rode out the outage
    record = stack.wait_job(job_id, timeout=60)
    assert record["status"] == "finished" and len(record["history"]) == 400  # the running job did too
    follow = jobs.submit(stack.config, open_store(stack.data_dir), "test-count", {"n": 1}, "operator")
    assert stack.wait_job(follow, timeout=30)["status"] == "finished"


def test_secrets_never_appear_in_responses_or_logs(stack):
    secret = (stack.data_dir / "jwt_secret.key").read_text().strip()
    bodies = [requests.post(stack.url + "/auth", json={"username": "admin", "password": "wrong"}, timeout=10).text,
              requests.get(stack.url + "/api/v1/openapi.json", timeout=10).text,
              requests.get(stack.url + "/health", timeout=10).text]
    logs = "".join(p.read_text(errors="replace") for p in (stack.data_dir / "logs").glob("*.log"))
    for needle in [secret, *stack.passwords.values()]:
        assert all(needle not in body for body in bodies)
        assert needle not in logs
