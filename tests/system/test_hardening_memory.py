"""Memory per request: images are refused by what decoding them would cost, and heavy requests queue."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib

import pytest
import requests
from PIL import Image

from engine.exceptions import ImageTooLarge
from engine.images import decoded_bytes, open_image
from services.api import create_app
from services.platform.config import Config
from services.web import http as web


def png_16bit_rgba(width: int, height: int) -> bytes:
    """A black 16-bit RGBA PNG written chunk by chunk as any encoder would (7000x7000 is ~381 KB)."""
    raw = b"".join(b"\x00" + bytes(width * 8) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_16bit_rgba(7000, 7000)


def test_the_cost_is_read_from_the_header_at_the_files_bit_depth(bomb):
    img = Image.open(io.BytesIO(bomb))
    assert decoded_bytes(img) == 7000 * 7000 * 4 * 2
    start = time.monotonic()
    with pytest.raises(ImageTooLarge, match="MiB"):
        open_image(bomb, "image")
    assert time.monotonic() - start < 1.0  # refused from the header, nothing decoded


@pytest.mark.parametrize("path,body", [("/api/v1/predict", "json"), ("/api/v1/segment", "json"), ("/imgup", "file")])
def test_a_small_16_bit_png_of_49_megapixels_is_a_413_at_every_door(stack, bomb, path, body):
    """Refused from its header (the in-process test above times that: under a second); the round trip over the
    shared stack is not timed, as a busy CI machine stretches it."""
    role = {"/imgup": "annotator"}.get(path, "operator")
    image = "data:image/png;base64," + base64.b64encode(bomb).decode()
    if body == "file":
        r = requests.post(stack.url + path, files={"file": ("b.png", bomb)}, data={"id_name": "b16"},
                          headers=stack.headers(role), timeout=60)
    else:
        payload = {"image": image, "x1": 1, "y1": 1, "x2": 50, "y2": 50, "ean": "bomb"}
        r = requests.post(stack.url + path, json=payload if path.endswith("segment") else {"image": image},
                          headers=stack.headers(role), timeout=60)
    assert r.status_code == 413, r.text
    assert "MiB" in r.json()["message"] and "to decode" in r.json()["message"]


def test_a_big_jpeg_for_prediction_is_decoded_reduced():
    buf = io.BytesIO()
    Image.new("RGB", (8000, 6000), (90, 120, 200)).save(buf, "JPEG", quality=85)  # 48 MP
    img = open_image(buf.getvalue(), "image", max_side=1024)
    assert img.size == (2000, 1500)  # 1/4 scale, both sides still >= 1024: 9 MB decoded instead of 144 MB


def test_heavy_requests_beyond_the_slots_get_503_with_retry_after(tmp_path, monkeypatch, stack):
    monkeypatch.setattr(web, "HEAVY_WAIT_SECONDS", 0.2)
    app = create_app(Config(data_dir=tmp_path, redis_url=stack.redis_url, heavy_requests=1))
    holding, release = threading.Event(), threading.Event()

    def hold():
        with app.app_context(), web.heavy_slot():
            holding.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    try:
        assert holding.wait(5)
        with app.app_context(), pytest.raises(web.ApiError) as refused:
            with web.heavy_slot():
                pass
        assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "5"
    finally:
        release.set()
        worker.join()
    with app.app_context(), web.heavy_slot():  # free again once the first is done
        pass
