"""One segment action at both doors: the API's ``POST /api/v1/segment`` and the Segment page's path (the
action ``services.app.segment.segment`` with the page's actor, a cut first, then the same request with a
class to save) give the same cut-out and the same saved object.

The photo is a real one (scikit-image's ``coffee``: a cup on a saucer on a wooden table) saved as JPEG
quality 90; the box holds cup and saucer, and a background stroke painted along the spoon takes it out.
"""

from __future__ import annotations

import base64
import io
import secrets

import numpy as np
import pytest
import skimage.data
from PIL import Image

from engine.segmentation import mask_iou
from services.app import rules, segment
from services.app.rules import Actor, Forbidden
from services.storage.store import open_store

BOX = (70, 10, 485, 392)  # cup and saucer
SPOON = [[410, 75], [395, 150], [380, 230], [365, 285]]  # down the spoon's handle into its bowl
WIDTH = 14


@pytest.fixture(scope="module")
def coffee() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def page_actor(studio, username: str) -> Actor:
    """The actor the page hands the action (``services.ui.page.actor``): the user re-read from the catalog."""
    store = open_store(studio.data_dir)
    return Actor(store.get_user(username), studio.config, store)


def api_segment(studio, body: segment.SegmentBody, role: str) -> dict:
    r = studio.http.post("/api/v1/segment", json=body.model_dump(exclude_none=True),
                      headers=studio.headers(role), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def page_cut(studio, username: str, data: bytes, fg=None, bg=None) -> segment.Cut:
    """What the page's "Run GrabCut" does."""
    return segment.segment(page_actor(studio, username),
                           segment.CutRequest.of_photo(data, BOX, fg, bg, stroke_width=WIDTH))


def page_save(studio, username: str, data: bytes, ean: str, fg=None, bg=None) -> segment.Cut:
    """What the page's "Save object" does: the request of the cut shown, with the class."""
    body = segment.SegmentBody.of_photo(data, BOX, fg, bg, stroke_width=WIDTH, ean=ean, source="coffee.jpg")
    return segment.segment(page_actor(studio, username), body)


def full_mask(png: bytes, bbox, shape=(400, 600)) -> np.ndarray:
    alpha = np.asarray(Image.open(io.BytesIO(png)))[:, :, 3] >= 128
    mask = np.zeros(shape, bool)
    x1, y1, x2, y2 = bbox
    mask[y1:y2, x1:x2] = alpha
    return mask


def spoon_pixels() -> np.ndarray:
    """The pixels the spoon stroke covers (a user would see the spoon gone from the cut-out there)."""
    import cv2

    painted = np.zeros((400, 600), np.uint8)
    cv2.polylines(painted, [np.asarray(SPOON, np.int32)], False, 1, WIDTH)
    return painted.astype(bool)


def test_the_same_request_at_both_doors_gives_the_same_cut_out_and_one_saved_object(studio, coffee):
    ean = "cup_" + secrets.token_hex(3)
    body = segment.SegmentBody.of_photo(coffee, BOX, stroke_width=WIDTH, ean=ean, source="coffee.jpg")
    answer = api_segment(studio, body, "operator")
    api_png = base64.b64decode(answer["output_image"])
    api_mask = full_mask(api_png, answer["bbox"])
    inside = api_mask[BOX[1]:BOX[3], BOX[0]:BOX[2]].mean()
    assert 0.5 < inside < 0.9  # cup and saucer, not the table round them

    shown = page_cut(studio, "annotator", coffee)  # another user: nothing of the API's cut is reused
    assert shown.how == "cut" and shown.row is None
    assert mask_iou(shown.result.mask, api_mask) == 1.0
    saved = page_save(studio, "annotator", coffee, ean)
    assert saved.how == "kept" and saved.png == api_png and list(saved.result.bbox) == answer["bbox"]
    assert saved.row["id"] == answer["object_id"] and not saved.created  # one object for one identical cut
    rows = open_store(studio.data_dir).list_objects(class_name=ean)
    assert [r["id"] for r in rows] == [answer["object_id"]] and rows[0]["class_name"] == ean
    assert (studio.data_dir / rows[0]["path"]).read_bytes() == api_png

    again = api_segment(studio, body, "operator")  # the API saves an identical cut once too
    assert again["object_id"] == answer["object_id"] and base64.b64decode(again["output_image"]) == api_png
    assert len(open_store(studio.data_dir).list_objects(class_name=ean)) == 1


def test_a_stroke_refines_the_last_cut_the_same_way_at_both_doors(studio, coffee):
    ean = "cup_" + secrets.token_hex(3)
    first = api_segment(studio, segment.SegmentBody.of_photo(coffee, BOX, stroke_width=WIDTH, ean=ean,
                                                            source="coffee.jpg"), "operator")
    stroked = segment.SegmentBody.of_photo(coffee, BOX, None, [SPOON], stroke_width=WIDTH, ean=ean,
                                           source="coffee.jpg")
    api_after = api_segment(studio, stroked, "operator")
    api_png = base64.b64decode(api_after["output_image"])
    before, after = full_mask(base64.b64decode(first["output_image"]), first["bbox"]), full_mask(api_png,
                                                                                              api_after["bbox"])
    spoon = spoon_pixels()
    assert before[spoon].mean() > 0.8 and after[spoon].mean() < 0.1  # the stroke took the spoon out

    page_cut(studio, "admin", coffee)
    refined = page_cut(studio, "admin", coffee, bg=[SPOON])
    assert refined.how == "refined" and mask_iou(refined.result.mask, after) == 1.0
    saved = page_save(studio, "admin", coffee, ean, bg=[SPOON])
    assert saved.how == "kept" and saved.png == api_png and saved.row["id"] == api_after["object_id"]
    assert len(open_store(studio.data_dir).list_objects(class_name=ean)) == 2  # the first cut and the refined one


def test_an_undone_stroke_or_other_iterations_cut_again_from_the_start(studio, coffee):
    actor = page_actor(studio, "operator")
    plain = segment.segment(actor, segment.CutRequest.of_photo(coffee, BOX, stroke_width=WIDTH))
    stroked = segment.segment(actor, segment.CutRequest.of_photo(coffee, BOX, None, [SPOON], stroke_width=WIDTH))
    assert stroked.how == "refined"
    undone = segment.segment(actor, segment.CutRequest.of_photo(coffee, BOX, stroke_width=WIDTH))
    assert undone.how == "cut" and mask_iou(undone.result.mask, plain.result.mask) == 1.0
    other = segment.segment(actor, segment.CutRequest.of_photo(coffee, BOX, None, [SPOON], stroke_width=WIDTH,
                                                               iterations=3))
    assert other.how == "cut" and other.result.mask[spoon_pixels()].mean() < 0.1


def test_a_role_that_may_not_cut_is_refused_at_both_doors(studio, coffee):
    body = segment.SegmentBody.of_photo(coffee, BOX, ean="refused", source="coffee.jpg")
    r = studio.http.post("/api/v1/segment", json=body.model_dump(exclude_none=True),
                      headers=studio.headers("client"), timeout=60)
    assert r.status_code == 403
    with pytest.raises(Forbidden, match="may not cut objects out of photos"):
        segment.segment(page_actor(studio, "client"), body)
    assert not rules.may("objects.segment", {"role": "client"})
    assert open_store(studio.data_dir).list_objects(class_name="refused") == []
