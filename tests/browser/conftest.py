"""A real browser (Playwright driving Debian's Chromium) against the UI started as `make run` starts it."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from services.platform.config import REPO_ROOT
from tests.harness import chromium

ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
CHROMIUM = chromium()


@pytest.fixture(scope="session")
def ui(stack):
    stack.start_ui()
    return stack


@pytest.fixture
def page(browser, ui):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


def shot(page, name: str) -> Path:
    """Save a full-page screenshot as a test artifact (tests/artifacts/<name>.png)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def assert_no_traceback(page) -> None:
    """A page must never show a Python traceback or Streamlit's exception box."""
    assert page.locator("[data-testid='stException']").count() == 0, page.inner_text("body")[:2000]
    assert "Traceback (most recent call last)" not in page.inner_text("body")


def choose_option(page, widget, option: str, attempts: int = 4) -> None:
    """Pick ``option`` in a Streamlit selectbox or multiselect (``widget``, a locator), as a person would.

    Typing filters the list. A rerun that lands between opening the list and the pick closes it again,
    so the list is reopened a few times before giving up.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(attempts):
        widget.locator("input").click()
        page.keyboard.type(option)
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=5_000)
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
            continue
        if widget.get_attribute("data-testid") == "stMultiSelect":
            page.keyboard.press("Escape")  # a multiselect keeps its list open for more picks
        return
    raise AssertionError(f"could not pick {option!r}: {widget.inner_text()!r}")


def choose_tags(page, box, labels: list[str], attempts: int = 3) -> None:
    """Pick ``labels`` in the multiselect ``box`` until it shows exactly them.

    A rerun that starts while a pick lands can redraw the box without it (Streamlit keeps the widget's
    last state the server saw), so a person would pick again: so does this, a few times at most.
    """
    for _ in range(attempts):
        wait_idle(page, 300)  # never start a pick while the last one's rerun is still drawing
        for label in labels:
            if label not in tags_in(box):
                choose_option(page, box, label)
        wait_idle(page, 300)
        if tags_in(box) == labels:
            return
    shot(page, "choose-tags-failed")
    raise AssertionError(f"the box shows {tags_in(box)!r}, not {labels!r}")


def tags_in(box) -> list[str]:
    """The tags a multiselect shows, in order."""
    return box.locator("[data-testid='stMultiSelectTagsContainer']").inner_text().split()


def canvas_box(page) -> dict:
    """The drawing surface (Fabric.js puts its mouse-catching canvas on top of the one it paints)."""
    upper = page.locator("canvas.upper-canvas")
    target = upper.first if upper.count() else page.locator("canvas").last
    target.wait_for()
    target.evaluate("canvas => canvas.scrollIntoView({block: 'center'})")  # the mouse only acts in the viewport
    page.wait_for_timeout(200)
    return target.bounding_box()


def to_screen(page, points, photo_width: int) -> list[tuple[float, float]]:
    """Photo pixels to screen pixels, wherever the canvas is now (reruns can move it)."""
    box = canvas_box(page)
    per_pixel = box["width"] / photo_width
    return [(box["x"] + x * per_pixel, box["y"] + y * per_pixel) for x, y in points]


def trace(page, points) -> None:
    """Drag the mouse through ``points`` (screen pixels), as a brush stroke."""
    page.mouse.move(*points[0])
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*point, steps=2)
    page.mouse.up()


LIVE = "[data-testid='stElementContainer']:not([data-stale='true'])"  # drawn by the current run, not a stale copy


def select_box(page, label: str):
    """The selectbox labelled ``label`` that the current run drew.

    A widget whose key changed (Train's test folder is keyed by the training folder, Objects' target class by
    the object) stands beside its stale old copy until the rerun ends.
    """
    return page.locator(f"{LIVE} [data-testid='stSelectbox']").filter(has_text=label)


def login(page, stack, role: str) -> None:
    page.goto(stack.ui_url)
    page.get_by_label("Username", exact=True).fill(role)
    page.get_by_label("Password", exact=True).fill(stack.passwords[role])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_test_id("stSidebarUserContent").get_by_text(f"Signed in as {role}").wait_for()
    wait_for_session_cookie(page)


def wait_for_session_cookie(page, timeout: float = 10.0) -> None:
    """Wait until the page script has stored the sign-in cookie (a reload or typed address needs it)."""
    import time

    deadline = time.monotonic() + timeout
    while not any(c["name"] == "studio_session" for c in page.context.cookies()):
        if time.monotonic() > deadline:
            raise AssertionError("the sign-in cookie was never written")
        page.wait_for_timeout(100)


def wait_idle(page, settle_ms: int = 500) -> None:
    """Wait for Streamlit's script run to end and for the page to drop the previous run's elements (during a
    rerun the old and the new stand side by side, the old marked stale), then a moment more."""
    from playwright.sync_api import expect

    page.locator("[data-testid='stApp'][data-test-script-state='notRunning']").wait_for()
    expect(page.locator("[data-stale='true']")).to_have_count(0, timeout=30_000)
    page.wait_for_timeout(settle_ms)


RECORDED = re.compile(r"Status:\s*(\w+)\s*·\s*(\d+) epochs recorded")


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(300)  # the rerun that takes the value


def watch_run(page, timeout: float) -> list[tuple[str, int]]:
    """The (status, epochs recorded) the page shows for the run just launched, sampled until it ends.

    Right after Launch the page may still show the previously selected (ended) run for a moment, so states
    count only from the first one of a live run (queued or started).
    """
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = RECORDED.search(page.inner_text("body"))
        if found and (seen or found.group(1) in ("queued", "started")):
            state = (found.group(1), int(found.group(2)))
            if not seen or seen[-1] != state:
                seen.append(state)
                if state == ("started", 1):
                    page.locator("[data-testid='stVegaLiteChart']").first.scroll_into_view_if_needed()
                    shot(page, "train-first-epoch")
            if state[0] in ("finished", "failed", "cancelled", "interrupted"):
                return seen
        time.sleep(0.5)
    raise AssertionError(f"the run did not end within {timeout:.0f} s: {seen}")
