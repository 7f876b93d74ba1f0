"""Annotate in a real browser: drop two photos with GPS, confirm labels, see them listed and on the map."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.browser.conftest import (
    assert_no_traceback,
    choose_option,
    choose_tags,
    login,
    select_box,
    shot,
    wait_idle,
)


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
    wait_idle(page)
    # Both photos carry the label just saved: filtering by it keeps both, each with where it was taken.
    choose_option(page, select_box(page, "Filter by label"), "sea")
    wait_idle(page)
    page.locator("[data-testid='stDeckGlJsonChart']").wait_for()
    where = page.get_by_text("of these photos carry a GPS position").inner_text()
    assert where.startswith("2 of these photos carry a GPS position"), where
    # 43°17'30" N 5°22' E and 33°52' S 151°12' E, signed as a map wants them.
    assert "harbour_a at 43.2917, 5.3667" in where and "harbour_b at -33.8667, 151.2000" in where, where
    assert_no_traceback(page)
    shot(page, "annotate-map")


@pytest.fixture
def tagger(stack):
    """A tiny multi-label model of three labels whose thresholds are 0: used, it would preselect all three."""

    from engine import checkpoints
    from engine.datasets import ArrayDataset
    from engine.training import TrainConfig, fit
    from services.app import training
    from services.storage.store import open_store

    names = ["sea", "boat", "person"]
    config = TrainConfig("lenet5", num_classes=3, epochs=1, batch_size=4, learning_rate=0.01, image_size=32,
                         multi_label=True, seed=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    data = ArrayDataset(images, rng.integers(0, 2, (8, 3)).astype(np.float32), config.preprocessing())
    job_id = f"tagger-{rng.integers(1 << 30)}"
    folder = stack.data_dir / "checkpoints" / job_id
    fit(config, data, data, names, folder)
    for name in ("best.pt", "last.pt"):
        ckpt = checkpoints.load(folder / name)
        ckpt.evaluation["thresholds"] = [0.0] * 3
        checkpoints.save(ckpt, folder / name)
    store = open_store(stack.data_dir)
    row = training.register_model(stack.config, store, job_id, "operator")
    yield store, row
    training.delete_model(stack.config, store, row["id"])


def upload_and_read_tags(page, stack, image) -> tuple[str, int]:
    """Open Annotate afresh, drop ``image``; the suggestion status line and how many tags are preselected."""
    page.goto(stack.ui_url + "/annotate")
    page.locator("h1", has_text="Annotate").wait_for()
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(image))
    page.get_by_text("EXIF:").first.wait_for()
    page.wait_for_timeout(500)
    status = page.get_by_text("suggestions", exact=False).first.inner_text()
    return status, preselected(page)


def preselected(page) -> int:
    """How many of the tagger's labels the card's Labels box holds (its chips are its only text besides the label)."""
    chips = page.locator("[data-testid='stMultiSelectTagsContainer']").first.inner_text()
    return sum(name in chips.split() for name in ("sea", "boat", "person"))


def test_annotate_preselects_nothing_from_an_unactivated_or_weak_model(page, stack, tagger, tmp_path):
    store, row = tagger
    image = photo_with_gps(tmp_path / "cup.jpg", (1.0, 0.0, 0.0), "N", (1.0, 0.0, 0.0), "E", 3)
    login(page, stack, "annotator")
    status, tags = upload_and_read_tags(page, stack, image)
    assert "no multi-label model is activated" in status and tags == 0
    shot(page, "annotate-unactivated-model")

    store.set_active_model(row["id"])
    # The catalog keeps mAP in percent, as training records it; the page shows it as a fraction.
    store.update_model(row["id"], metrics={**row["metrics"], "test_map": 12.0})
    status, tags = upload_and_read_tags(page, stack, image)
    assert "validation mAP of 0.12, below the 0.50" in status and tags == 0
    assert page.get_by_text("Suggested (").count() == 0
    shot(page, "annotate-weak-model")

    store.update_model(row["id"], metrics={**row["metrics"], "test_map": 91.0})
    status, _ = upload_and_read_tags(page, stack, image)
    shot(page, "annotate-good-model")
    page.get_by_text("Suggested (✓ preselected").wait_for()
    tags = preselected(page)
    assert "validation mAP 0.91" in status and tags == 3  # a good model's tags over its thresholds
    page.get_by_role("button", name="Save all (1)").click()
    page.get_by_text("carry suggested tags that nobody changed or confirmed").wait_for()
    page.get_by_role("button", name="Yes, save with the suggested tags").click()
    page.get_by_text("Saved 1 of 1 images.").wait_for()
    assert_no_traceback(page)
    shot(page, "annotate-good-model")
    store.update_model(row["id"], active=0)


@pytest.fixture(scope="module")
def retraining_ui(tmp_path_factory, processes):
    """A stack of its own whose suggestion head retrains after every 9 saved labels, with the UI running."""
    from tests.harness import Stack

    s = Stack.in_own_folder(tmp_path_factory, "suggest-ui", SUGGEST_RETRAIN_EVERY="9").start()
    try:
        s.start_ui()
        yield s
    finally:
        s.close()


def wait_for_head(stack, timeout: float = 90) -> dict:
    """The suggestion head, once the retrain that the page's saves queued has registered it."""
    import time

    from services.app.suggestions import latest_head
    from services.storage.store import open_store

    deadline = time.monotonic() + timeout
    while (head := latest_head(open_store(stack.data_dir))) is None:
        assert time.monotonic() < deadline, "no suggestion head was trained"
        time.sleep(0.5)
    return head


def test_labelling_n_photos_trains_the_head_that_suggests_tags_for_the_next(browser, retraining_ui, tmp_path):
    from tests.tagged_photos import photo, tagged_photos

    stack = retraining_ui
    photos = []
    for name, data, labels in tagged_photos(per_label=3):
        (tmp_path / name).write_bytes(data)
        photos.append((tmp_path / name, labels[0]))
    (tmp_path / "next_person.jpg").write_bytes(photo("person", 60))
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(30_000)
    login(page, stack, "annotator")
    page.goto(stack.ui_url + "/annotate")
    page.locator("h1", has_text="Annotate").wait_for()
    page.get_by_text("no suggestion head is trained yet").wait_for()  # before any label: nothing suggested

    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files([str(p) for p, _ in photos])
    page.get_by_text(photos[-1][0].name).first.wait_for()
    wait_idle(page)
    assert page.get_by_text("Suggested (").count() == 0
    for i, (_path, label) in enumerate(photos):
        box = page.locator("[data-testid='stMultiSelect']").nth(i)
        choose_tags(page, box, [label])  # each pick reruns the page; the next card is picked on the page that follows
    page.get_by_role("button", name=f"Save all ({len(photos)})").click()
    page.get_by_text(f"Saved {len(photos)} of {len(photos)} images.").wait_for()
    head = wait_for_head(stack)

    page.goto(stack.ui_url + "/annotate")
    page.locator("h1", has_text="Annotate").wait_for()
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(tmp_path / "next_person.jpg"))
    status = page.get_by_text("Suggested by efficientnet-lite0").first
    status.wait_for()
    caption = page.get_by_text("Suggested (✓ preselected").first
    caption.wait_for()
    wait_idle(page)
    shot(page, "annotate-suggestion-head")
    assert f"({head['id'][:8]}), trained " in status.inner_text() and "on 9 labelled photos" in status.inner_text()
    assert "person" in caption.inner_text() and "%" in caption.inner_text()
    assert "person" in page.locator("[data-testid='stMultiSelectTagsContainer']").first.inner_text().split()
    assert_no_traceback(page)
    page.context.close()
