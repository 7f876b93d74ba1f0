"""The object library in a real browser: browse a class, move an object to another class, delete one."""

from __future__ import annotations

from playwright.sync_api import expect

from services.app import segment
from services.storage.store import open_store
from tests.browser.conftest import assert_no_traceback, choose_option, login, select_box, shot, wait_idle
from tests.shapes import noise_png as png


def test_move_an_object_to_another_class_then_delete_one(page, stack):
    store = open_store(stack.data_dir)
    rows = [segment.save_once(stack.config, store, "browser_cup", png(seed, side=40), source=f"p{seed}.jpg",
                              bbox=[1, 2, 41, 42], created_by="operator", size=(40, 40))[0] for seed in (1, 2)]
    login(page, stack, "operator")
    page.locator("[data-testid='stSidebarNav'] a", has_text="Objects").click()
    page.locator("h1", has_text="Objects").wait_for()
    choose_option(page, select_box(page, "Class").first, "browser_cup (2 objects)")
    choose_option(page, select_box(page, "Object"), f"{rows[0]['id'][:8]} · 40×40 px · by operator")
    # Both objects share a box: wait for this one's own source, so the rerun for the choice has landed.
    page.get_by_text("Source: p1.jpg", exact=False).wait_for()
    page.get_by_text("box x1=1, y1=2, x2=41, y2=42").wait_for()
    thumbs = page.locator("[data-testid='stImage'] img")
    assert thumbs.first.bounding_box()["width"] <= 41  # natural size, not blown up to the column
    shot(page, "objects-class")
    move_to = select_box(page, "Move to class")
    for _ in range(3):  # under load a rerun can redraw the box mid-typing: type the new class again then
        move_to.locator("input").click()
        page.keyboard.type("browser_mug")
        page.wait_for_timeout(300)
        page.keyboard.press("Enter")
        wait_idle(page)  # the new class name reaches the server in a rerun, which enables Move
        if "browser_mug" in move_to.inner_text():
            break
    move = page.get_by_role("button", name="Move", exact=True)
    expect(move).to_be_enabled(timeout=30_000)
    move.click()
    page.get_by_text(f"Moved object {rows[0]['id'][:8]} to 'browser_mug'.").wait_for()
    moved = store.get_object(rows[0]["id"])
    assert moved["class_name"] == "browser_mug" and segment.object_file(stack.config, moved).is_file()

    choose_option(page, select_box(page, "Class").first, "browser_cup (1 objects)")
    wait_idle(page)
    page.get_by_text(f"{rows[1]['id'][:8]} · 40×40", exact=True).first.wait_for()
    page.get_by_text("Source: p2.jpg", exact=False).wait_for()
    wait_idle(page)
    page.get_by_text("Yes, delete this object").click()
    page.get_by_role("button", name="Delete object").click()
    page.get_by_text(f"Deleted object {rows[1]['id'][:8]}.").wait_for()
    assert store.get_object(rows[1]["id"]) is None
    assert not segment.object_file(stack.config, rows[1]).exists()
    assert_no_traceback(page)
    shot(page, "objects-after-delete")
