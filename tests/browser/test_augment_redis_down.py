"""When Redis goes away under an open Augment page, Cancel says so in one sentence instead of a traceback.

A studio of its own (Redis, API, UI; its worker stopped so the job stays queued): stopping Redis here must not
disturb the session's stack that every other browser test uses.
"""

from __future__ import annotations

import io

import pytest
import requests
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from engine.augment.backgrounds import make_background
from services.app import generate, rules
from services.storage.store import open_store
from tests.browser.conftest import assert_no_traceback, login, set_number, shot
from tests.harness import Stack, stop
from tests.scenes import LEGACY_BOX, encode, scene


@pytest.fixture
def own_stack(tmp_path_factory, browser):
    """A studio with an object, one background per split, and no worker."""
    studio = Stack.in_own_folder(tmp_path_factory, "redis_down").start()
    try:
        image, _ = scene((30, 90, 200), seed=7)
        r = requests.post(studio.url + "/api/v1/segment", json={**LEGACY_BOX, "ean": "redis_down_blue",
                          "image": encode(image)}, headers=studio.headers("operator"), timeout=60)
        assert r.status_code == 200, r.text
        for seed, split in ((1, "train"), (2, "test")):
            buf = io.BytesIO()
            Image.fromarray(make_background("noise", 96, seed)).save(buf, "PNG")
            admin = rules.Actor({"username": "admin", "role": "admin"}, studio.config, open_store(studio.data_dir))
            generate.add_background(admin, buf.getvalue(), split)
        for worker in studio.workers:  # the job must stay queued, with Cancel on the page
            stop(worker)
        studio.start_ui()
        yield studio
    finally:
        studio.close()


def test_cancel_with_redis_gone_shows_the_queue_message_not_a_traceback(browser, own_stack):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        login(page, own_stack, "operator")
        page.locator("[data-testid='stSidebarNav'] a", has_text="Augment").click()
        page.locator("h1", has_text="Augment").wait_for()
        set_number(page, "Image size (px)", 64)  # a small preview: the page's rerun stays quick
        page.get_by_text("samples of 64 px").wait_for()
        page.get_by_role("button", name="Generate dataset").click()
        page.get_by_text("queued").first.wait_for()
        own_stack.stop_redis()
        message = page.get_by_text("The job queue (Redis) is unreachable; try again shortly.")
        for _ in range(3):  # the panel redraws every second: a click landing on a redraw is lost, click again
            page.get_by_role("button", name="Cancel job").click()
            try:
                message.wait_for(timeout=20_000)
                break
            except PlaywrightTimeout:
                continue
        message.wait_for()
        assert_no_traceback(page)
        assert page.get_by_text("queued").count() >= 1  # the panel still shows the job as recorded
        shot(page, "augment-redis-down")
    finally:
        context.close()
