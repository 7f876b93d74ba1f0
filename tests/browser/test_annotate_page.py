"""Annotate in a real browser: drop two photos with GPS, confirm labels, see them listed and on the map."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.browser.conftest import assert_no_traceback, choose_option, login, shot

pytestmark = pytest.mark.browser


def photo_with_gps(path, lat_dms, lat_ref, lon_dms, lon_ref, seed):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0132] = "2021:06:01 10:00:00"
    gps = exif.get_ifd(0x8825)
    gps.update({1: lat_ref, 2: lat_dms, 3: lon_ref, 4: lon_dms})
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    path.write_bytes(buf.getvalue())
    return path


def test_drop_two_photos_confirm_labels_and_see_them_on_the_map(page, stack, tmp_path):
    a = photo_with_gps(tmp_path / "harbour_a.jpg", (43.0, 17.0, 30.0), "N", (5.0, 22.0, 0.0), "E", 1)
    b = photo_with_gps(tmp_path / "harbour_b.jpg", (33.0, 52.0, 0.0), "S", (151.0, 12.0, 0.0), "E", 2)
    login(page, stack, "annotator")
    page.locator("[data-testid='stSidebarNav'] a", has_text="Annotate").click()
    page.locator("h1", has_text="Annotate").wait_for()
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files([str(a), str(b)])
    page.get_by_text("harbour_b.jpg").first.wait_for()
    page.get_by_text("EXIF: 2021:06:01 10:00:00").first.wait_for()
    for i in range(2):  # confirm a label on each card
        choose_option(page, page.locator("[data-testid='stMultiSelect']").nth(i), "sea")
    shot(page, "annotate-upload")
    page.get_by_role("button", name="Save all (2)").click()
    page.get_by_text("Saved 2 of 2 images.").wait_for()
    page.get_by_role("tab", name="Browse & map").click()
    page.locator("[data-testid='stDataFrame']").wait_for()
    page.locator("[data-testid='stDeckGlJsonChart']").wait_for()
    assert_no_traceback(page)
    shot(page, "annotate-map")
    from services.store import open_store

    rows = {r["id_name"]: r for r in open_store(stack.data_dir).list_rows("images", order="uploaded_at DESC")}
    assert rows["harbour_a"]["labels"] == ["sea"] and rows["harbour_b"]["labels"] == ["sea"]
    assert rows["harbour_b"]["latitude"] == pytest.approx(-(33 + 52 / 60)) and rows["harbour_a"]["longitude"] > 5
