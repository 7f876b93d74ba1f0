"""Strokes over ``POST /api/v1/segment`` refine the user's last cut of the same photo and box.

The photo is a JPEG (q85) of an object with a brown shadow ring round it: the box alone keeps the ring,
a halo a user would paint away.
"""

from __future__ import annotations

import base64
import hashlib
import io

import numpy as np
import pytest
import requests
from PIL import Image

from engine.segmentation import mask_iou
from services.app.segment import decode_kept
from services.jobs.runtime import redis_connection
from services.platform.config import Config
from tests.photo_scenes import with_shadow


def body_for(data: bytes, box, **extra) -> dict:
    x1, y1, x2, y2 = box
    image = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
    return {"x1": str(x1), "y1": str(y1), "x2": str(x2), "y2": str(y2), "ean": "cup", "image": image, **extra}


def mask_of(answer: dict, shape) -> np.ndarray:
    """The answer's cut-out alpha placed back at its bbox on a canvas of the photo's size."""
    alpha = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["output_image"]))))[:, :, 3] >= 128
    full = np.zeros(shape, bool)
    x1, y1, x2, y2 = answer["bbox"]
    full[y1:y2, x1:x2] = alpha
    return full


def post(stack, body: dict, role: str = "operator") -> dict:
    r = requests.post(stack.url + "/api/v1/segment", json=body, headers=stack.headers(role), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_background_stroke_on_the_halo_raises_the_iou(stack):
    data, truth, box, ring, stroke, width = with_shadow(400, 300)
    first = mask_of(post(stack, body_for(data, box)), truth.shape)
    assert first[ring].mean() > 0.9
    answer = post(stack, body_for(data, box, bg_strokes=[stroke], stroke_width=width))
    assert set(answer) == {"output_image", "object_id", "ean", "bbox", "status_code"}
    second = mask_of(answer, truth.shape)
    assert mask_iou(second, truth) > mask_iou(first, truth) + 0.05
    assert second[truth].mean() > 0.99
    keys = redis_connection(stack.redis_url).keys("segment:last-cut:operator:*")
    assert keys and 0 < redis_connection(stack.redis_url).ttl(keys[0]) <= 15 * 60


def test_strokes_on_a_photo_never_cut_before_start_over(stack):
    data, truth, box, ring, stroke, width = with_shadow(400, 300)
    answer = post(stack, body_for(data, box, bg_strokes=[stroke], stroke_width=width), role="annotator")
    mask = mask_of(answer, truth.shape)
    assert mask[truth].mean() > 0.99
    left = ring & (np.arange(truth.shape[1])[None, :] < np.mean(np.nonzero(truth)[1]))
    assert mask[left].mean() < 0.2


def test_a_photo_sent_again_is_decoded_once_and_nobody_can_draw_on_the_kept_pixels(tmp_path):
    config = Config(data_dir=tmp_path)
    photos = [body_for(with_shadow(200 + 40 * i, 150)[0], (0, 0, 1, 1))["image"] for i in range(3)]
    digests = [hashlib.sha256(p.encode()).hexdigest() for p in photos]
    first = decode_kept(config, photos[0], digests[0])
    assert first.shape == (150, 200, 3)
    assert decode_kept(config, photos[0], digests[0]) is first  # a stroke re-sends its photo: no second decode
    with pytest.raises(ValueError):
        first[0, 0] = 0
    for photo, digest in zip(photos[1:], digests[1:], strict=True):
        decode_kept(config, photo, digest)
    again = decode_kept(config, photos[0], digests[0])  # only the last two photos are kept
    assert again is not first and np.array_equal(again, first)
