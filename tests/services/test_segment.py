"""``POST /api/v1/segment`` and the object library against the running API.

Every picture is made here: a coloured disc on a textured background, so the true mask is known and the
cut-out can be scored by its IoU with it.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from engine.segmentation import grabcut, mask_iou
from services.app.segment import SegmentBody
from tests.scenes import CENTRE, LEGACY_BOX, RADIUS, SIZE, encode, scene


def legacy_body(ean: str = "0601472600", colour=(200, 40, 40)) -> dict:
    """The legacy API's body, key for key, values as strings."""
    image, _ = scene(colour)
    return {**LEGACY_BOX, "ean": ean, "image": encode(image)}


def post_segment(studio, body: dict, role: str = "operator"):
    return studio.http.post("/api/v1/segment", json=body, headers=studio.headers(role), timeout=60)


def alpha_on_canvas(png: bytes, bbox: list[int]) -> np.ndarray:
    """The cut-out's alpha placed back at its box on a full-size canvas (for the IoU with the true mask)."""
    img = Image.open(io.BytesIO(png))
    full = np.zeros((SIZE[1], SIZE[0]), bool)
    x1, y1, x2, y2 = bbox
    full[y1:y2, x1:x2] = np.asarray(img)[:, :, 3] >= 128
    return full


def test_the_legacy_box_of_strings_is_parsed_by_the_request_model_into_numbers_the_engine_cuts_with():
    image, truth = scene()
    body = SegmentBody.model_validate({**LEGACY_BOX, "ean": "0601472600", "image": encode(image, "PNG")})
    assert body.box() == (37, 35, 220, 179)
    assert mask_iou(grabcut(image, body.box()).mask, truth) >= 0.95


def test_legacy_body_gives_the_disc_as_an_rgba_cutout_and_saves_it(door):
    body = legacy_body()
    r = post_segment(door, body, role="annotator")
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"output_image", "object_id", "ean", "bbox", "status_code"}
    assert answer["status_code"] == "200" and answer["ean"] == "0601472600"
    png = base64.b64decode(answer["output_image"])
    img = Image.open(io.BytesIO(png))
    x1, y1, x2, y2 = answer["bbox"]
    assert img.format == "PNG" and img.mode == "RGBA" and img.size == (x2 - x1, y2 - y1)
    cx, cy = CENTRE
    # cropped to the object, not to the box the user drew
    assert abs(x1 - (cx - RADIUS)) <= 3 and abs(x2 - (cx + RADIUS + 1)) <= 3
    assert abs(y1 - (cy - RADIUS)) <= 3 and abs(y2 - (cy + RADIUS + 1)) <= 3
    _, truth = scene()
    assert mask_iou(alpha_on_canvas(png, answer["bbox"]), truth) >= 0.9
    stored = door.data_dir / "objects" / "0601472600" / f"{answer['object_id']}.png"
    assert stored.read_bytes() == png
    listed = door.http.get("/api/v1/objects", params={"class_name": "0601472600"},
                          headers=door.headers("operator"), timeout=10).json()
    row = next(o for o in listed["objects"] if o["id"] == answer["object_id"])
    assert row["bbox"] == answer["bbox"] and row["created_by"] == "annotator"
    assert (row["width"], row["height"]) == img.size and row["source"].startswith("sha256:")
    served = door.http.get(row["image_url"], headers=door.headers("annotator"), timeout=10)
    assert served.headers["Content-Type"] == "image/png" and served.content == png


def test_real_numbers_png_without_prefix_and_strokes(studio):
    image, truth = scene((40, 160, 60), seed=3)
    cx, cy = CENTRE
    band = cy - RADIUS // 2  # a background stroke across the top of the disc
    body = {"x1": 37, "y1": 35, "x2": 220, "y2": 179, "ean": "green disc", "image": encode(image, "PNG", False),
            "iterations": "3", "fg_strokes": [[[cx - 10, cy], [cx + 10, cy]]],
            "bg_strokes": [[[cx - RADIUS, band], [cx + RADIUS, band]]], "stroke_width": 6}
    r = post_segment(studio, body)
    assert r.status_code == 200, r.text
    alpha = alpha_on_canvas(base64.b64decode(r.json()["output_image"]), r.json()["bbox"])
    assert not alpha[band, cx - 20 : cx + 20].any()  # the user said: not the object
    below = truth.copy()
    below[: band + 6] = False  # the part of the disc under the stroke must all be kept
    assert (alpha & below).sum() >= 0.97 * below.sum()
    assert (alpha & truth).sum() >= 0.97 * alpha.sum()  # and nothing of the background


BAD = [
    ({"x1": "220", "x2": "37"}, "x2"),
    ({"x2": "400"}, "x2"),
    ({"y1": "-5"}, "y1"),
    ({"y2": "abc"}, "y2"),
    ({"image": "@@@@ not base64 @@@@"}, "image"),
    ({"image": base64.b64encode(b"just some text, not a picture").decode()}, "image"),
    ({"image": ""}, "image"),
    ({"ean": "../escape"}, "ean"),
    ({"ean": "a/b"}, "ean"),
    ({"ean": ".hidden"}, "ean"),
    ({"ean": "x" * 65}, "ean"),
    ({"iterations": 0}, "iterations"),
    ({"fg_strokes": [[[1, 2, 3]]]}, "fg_strokes"),
]


@pytest.mark.parametrize(("change", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_input_is_400_naming_the_field_and_writes_nothing(studio, change, field):
    before = sorted(p.relative_to(studio.data_dir) for p in (studio.data_dir / "objects").rglob("*"))
    outside = sorted(studio.data_dir.parent.iterdir())
    r = post_segment(studio, {**legacy_body(ean="bad_inputs"), **change})
    assert r.status_code == 400, r.text
    assert r.json()["field"].split(".")[0] == field and r.json()["error"]
    assert sorted(p.relative_to(studio.data_dir) for p in (studio.data_dir / "objects").rglob("*")) == before
    assert sorted(studio.data_dir.parent.iterdir()) == outside


def test_box_with_nothing_in_it_is_400(studio):
    image = np.full((SIZE[1], SIZE[0], 3), 128, np.uint8)  # flat grey: GrabCut has nothing to find
    r = post_segment(studio, {**LEGACY_BOX, "ean": "nothing", "image": encode(image, "PNG")})
    assert r.status_code == 400 and r.json()["field"] in ("box", "image")


def test_more_pixels_than_the_limit_is_413(studio):
    buf = io.BytesIO()
    Image.new("L", (8000, 7000)).save(buf, "PNG")  # 56 MP > the 50 MP default; a few hundred KB
    r = post_segment(studio, {**LEGACY_BOX, "ean": "huge", "image": base64.b64encode(buf.getvalue()).decode()})
    assert r.status_code == 413 and r.json()["field"] == "image"


def test_roles_listing_and_delete(studio):
    r = post_segment(studio, legacy_body(ean="to_delete"), role="client")
    assert r.status_code == 403
    object_id = post_segment(studio, legacy_body(ean="to_delete")).json()["object_id"]
    path = studio.data_dir / "objects" / "to_delete" / f"{object_id}.png"
    assert path.is_file()
    listing = studio.http.get("/api/v1/objects", headers=studio.headers("annotator"), timeout=10).json()
    assert listing["classes"]["to_delete"] >= 1 and all(set(o) >= {"id", "class_name"} for o in listing["objects"])
    url = f"/api/v1/objects/{object_id}"
    assert studio.http.delete(url, headers=studio.headers("annotator"), timeout=10).status_code == 403
    r = studio.http.delete(url, headers=studio.headers("operator"), timeout=10)
    assert r.status_code == 200 and r.json()["deleted"] == object_id and not path.exists()
    assert studio.http.delete(url, headers=studio.headers("operator"), timeout=10).status_code == 404
    image = studio.http.get(url + "/image", headers=studio.headers("operator"), timeout=10)
    assert image.status_code == 404 and image.json()["field"] == "object_id"
