"""Segment and Augment in a real browser: box drawn with the mouse, GrabCut, save; preview, generate, browse."""

from __future__ import annotations

import io
import secrets

import numpy as np
import requests
from PIL import Image

from engine.augment.backgrounds import make_background
from services.storage.store import open_store
from tests.browser.conftest import (
    assert_no_traceback,
    choose_option,
    login,
    select_box,
    shot,
    to_screen,
    trace,
    wait_idle,
)
from tests.scenes import CENTRE, LEGACY_BOX, RADIUS, encode, scene

ZOOM = 5  # the 320×240 scene becomes a 1600×1200 photo, shown downscaled on the canvas


def open_page(page, stack, role: str, title: str) -> None:
    login(page, stack, role)
    page.locator("[data-testid='stSidebarNav'] a", has_text=title).click()
    page.locator("h1", has_text=title).wait_for()


def save_an_object(stack, ean: str, colour) -> None:
    """Put an object in the library through the API (so the class list is not empty)."""
    image, _ = scene(colour, seed=5)
    r = requests.post(stack.url + "/api/v1/segment", json={**LEGACY_BOX, "ean": ean, "image": encode(image)},
                      headers=stack.headers("operator"), timeout=60)
    assert r.status_code == 200, r.text


def test_segment_draw_a_box_with_the_mouse_cut_out_and_save(page, stack, tmp_path):
    save_an_object(stack, "browser_existing", (200, 200, 40))
    image, _ = scene((30, 90, 200), seed=11)
    photo = tmp_path / "big_photo.jpg"
    Image.fromarray(image).resize((320 * ZOOM, 240 * ZOOM), Image.Resampling.NEAREST).save(photo, quality=92)
    open_page(page, stack, "operator", "Segment")
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(photo))
    page.get_by_text("1600×1200 px, shown at 50%").wait_for()
    cx, cy, margin = CENTRE[0] * ZOOM, CENTRE[1] * ZOOM, (RADIUS + 12) * ZOOM

    def drag(start: tuple[float, float], end: tuple[float, float]) -> None:
        """Drag the mouse from ``start`` to ``end`` (photo pixels) through their midpoint."""
        middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        trace(page, to_screen(page, [start, middle, end], 320 * ZOOM))

    drag((cx - margin, cy - margin), (cx + margin, cy + margin))
    page.get_by_text("0 background strokes").wait_for()
    caption = page.get_by_text("Box: x1=").inner_text()
    drawn = [int(caption.split(f"{k}=")[1].split(",")[0].split(" ")[0]) for k in ("x1", "y1", "x2", "y2")]
    expected = [cx - margin, cy - margin, cx + margin, cy + margin]
    assert all(abs(a - b) <= 8 for a, b in zip(drawn, expected, strict=True)), caption  # photo px, not canvas px
    page.get_by_text("Mark background", exact=True).click()
    page.get_by_text("Paint red strokes").wait_for()  # the rerun has reached the canvas...
    wait_idle(page)  # ...and finished, so the canvas has its new tool
    drag((cx - margin + 10, cy - margin + 10), (cx - margin + 120, cy - margin + 10))
    page.get_by_text("1 background strokes").wait_for()
    shot(page, "segment-box")
    page.get_by_role("button", name="Run GrabCut").click()
    page.get_by_text("checkerboard = transparent").wait_for()
    choose_option(page, select_box(page, "Class"), "(new class)")
    name = "browser_" + secrets.token_hex(3)
    field = page.get_by_label("New class name", exact=True)
    field.fill(name)  # waits until the rerun has enabled it
    field.press("Enter")
    page.get_by_role("button", name="Save object").click()
    page.get_by_text(f"as '{name}'").wait_for()
    assert_no_traceback(page)
    shot(page, "segment-grabcut")
    rows = open_store(stack.data_dir).list_objects(class_name=name)
    assert len(rows) == 1 and rows[0]["created_by"] == "operator"
    side = 2 * RADIUS * ZOOM  # the disc, cut out at the photo's full resolution
    assert abs(rows[0]["width"] - side) <= 3 * ZOOM and abs(rows[0]["height"] - side) <= 3 * ZOOM
    cutout = np.asarray(Image.open(stack.data_dir / rows[0]["path"]))
    assert cutout.shape[2] == 4 and cutout[0, 0, 3] == 0 and cutout[side // 2, side // 2, 3] == 255


def background_png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(make_background("noise", 96, seed)).save(buf, "PNG")
    return buf.getvalue()


def test_augment_preview_generate_and_browse(page, stack, tmp_path):
    save_an_object(stack, "browser_yellow", (220, 180, 30))
    open_page(page, stack, "operator", "Augment")
    page.get_by_text("Backgrounds", exact=True).click()
    for split in ("train", "test"):  # through the page's own uploader
        path = tmp_path / f"bg_{split}.png"
        path.write_bytes(background_png(secrets.randbelow(10**9)))
        page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(str(path))
        page.get_by_text(path.name).wait_for()
        page.locator("[data-testid='stRadio']").filter(has_text="Into").get_by_text(split, exact=True).click()
        wait_idle(page)  # the button must belong to the run that has this file and this split
        page.get_by_role("button", name="Add background").click()
        page.get_by_text(f"to the {split} backgrounds").wait_for()
    size = page.get_by_label("Image size (px)")
    size.fill("64")
    size.press("Enter")
    page.get_by_text("samples of 64 px").wait_for()
    page.get_by_role("tab", name="Training samples").wait_for()
    page.locator("[data-testid='stImage']").first.wait_for()
    assert page.locator("[data-testid='stImage']").count() >= 2
    page.get_by_role("tab", name="Training samples").scroll_into_view_if_needed()
    shot(page, "augment-preview")
    name = "browser_ds_" + secrets.token_hex(3)
    page.get_by_label("Dataset name (optional)").fill(name)
    page.get_by_label("Dataset name (optional)").press("Enter")
    page.get_by_role("button", name="Generate dataset").click()
    page.get_by_text("finished").first.wait_for(timeout=90_000)
    page.locator("[data-testid='stDataFrame']").wait_for()
    page.get_by_text(f"datasets/{name}.hdf5").wait_for()
    assert_no_traceback(page)
    page.locator("[data-testid='stDataFrame']").scroll_into_view_if_needed()
    shot(page, "augment-dataset")
    row = open_store(stack.data_dir).get_dataset(name)
    assert row is not None and "browser_yellow" in row["class_names"] and row["image_size"] == 64
