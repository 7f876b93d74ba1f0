"""Signing in and out, and the pages each role can reach, in a real browser."""

import re
import time

from playwright.sync_api import expect

from services.app import sign_in
from services.jobs import runtime as jobs
from services.storage.store import open_store
from tests.browser.conftest import assert_no_traceback, choose_option, login, select_box, shot


def nav_links(page) -> list[str]:
    page.locator("[data-testid='stSidebarNav']").wait_for()
    return [t.strip().split("\n")[-1] for t in page.locator("[data-testid='stSidebarNav'] a").all_inner_texts()]


def test_wrong_password_is_refused(page, stack):
    page.goto(stack.ui_url)
    page.get_by_label("Username", exact=True).fill("operator")
    page.get_by_label("Password", exact=True).fill("wrong-password")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Wrong username or password.").wait_for()
    shot(page, "login-refused")


def failures_counted(stack, username: str) -> int:
    """The failed sign-ins this browser's address has made for ``username`` (read from Redis; Streamlit reports
    a browser on 127.0.0.1 as no address)."""
    key = sign_in.Keys.of(username, None).pair
    return int(jobs.redis_connection(stack.config.effective_redis_url).hget(key, "failures") or 0)


def guess_in_form(page, stack, username: str, password: str, counted: int | None) -> None:
    """Sign in through the form; when ``counted`` is given, wait until Redis holds that many of the address's
    failures for ``username`` (each wrong answer looks like the last one)."""
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_test_id("stAlert").last.wait_for()
    deadline = time.monotonic() + 30
    while counted is not None and failures_counted(stack, username) < counted:
        assert time.monotonic() < deadline, f"guess {counted} was never counted"
        page.wait_for_timeout(100)


def test_guessing_passwords_in_the_form_makes_the_address_wait_and_locks_only_that_username(page, stack):
    open_store(stack.data_dir).create_user("guessed", "the-right-password-1", "annotator")
    page.goto(stack.ui_url)
    free = stack.config.sign_in_free_failures
    for attempt in range(free):
        guess_in_form(page, stack, "guessed", f"guess-{attempt}", counted=attempt + 1)
    # The address now waits 1 s; each guess heard after a wait doubles it. Two more make it 4 s, long enough
    # for the right password, typed next, to fall inside it on a slow machine too.
    for extra, wait_s in enumerate((1, 2), start=1):
        page.wait_for_timeout(wait_s * 1000 + 100)
        guess_in_form(page, stack, "guessed", f"late-guess-{extra}", counted=free + extra)
    guess_in_form(page, stack, "guessed", "the-right-password-1", counted=None)
    # Even the right password now waits: a guesser cannot tell it from a wrong one.
    page.get_by_text(re.compile(r"Too many failed sign-ins; try again in [1-4] s")).wait_for()
    assert page.get_by_test_id("stSidebarUserContent").count() == 0
    shot(page, "login-throttled")
    login(page, stack, "operator")  # someone else's guesses lock nobody else out, even at the same address


def test_annotator_sees_only_annotate_segment_predict_and_cannot_reach_train(page, stack):
    login(page, stack, "annotator")
    links = nav_links(page)
    assert "Train" not in links and "Augment" not in links and "Jobs" not in links
    page.locator("h1", has_text="PyTorch Automation Studio").wait_for()
    start = page.locator("[data-testid='stPageLink'] a", has_text="start here")
    start.wait_for()  # Home links the role's pages, its starting point marked
    assert start.inner_text().strip().endswith("Annotate · start here")
    assert page.locator("[data-testid='stPageLink'] a", has_text="Train").count() == 0
    shot(page, "home-annotator")
    assert_no_traceback(page)
    page.goto(stack.ui_url + "/train")  # typing the address: still signed in, but no Train for this role
    page.get_by_test_id("stSidebarUserContent").get_by_text("Signed in as annotator").wait_for()
    page.wait_for_timeout(1000)
    assert page.locator("h1", has_text="Train").count() == 0
    assert_no_traceback(page)
    shot(page, "annotator-no-train")


def test_operator_cancels_a_running_job_on_the_jobs_page_and_signs_out(page, stack):
    import tests.fake_jobs  # noqa: F401  (registers the slow counting job kind)

    job_id = jobs.submit(stack.config, open_store(stack.data_dir), "test-count", {"n": 1200, "delay": 0.05},
                         "operator")
    stack.wait_job(job_id, statuses=("started",))
    login(page, stack, "operator")
    assert "Jobs" in nav_links(page)
    page.locator("[data-testid='stSidebarNav'] a", has_text="Jobs").click()
    page.locator("h1", has_text="Jobs").wait_for()
    page.locator("[data-testid='stDataFrame']").wait_for()
    choose_option(page, select_box(page, "Job"), job_id)

    def epochs_done() -> int:
        text = page.locator("[data-testid='stProgress']").get_by_text(re.compile(r"of 1200 epochs")).inner_text()
        return int(text.split()[0])

    before = epochs_done()
    page.wait_for_timeout(3_000)  # the panel re-reads the job every 2 s
    assert epochs_done() > before
    shot(page, "jobs")
    page.get_by_role("button", name="Cancel job").click()
    assert stack.wait_job(job_id, timeout=30)["status"] == "cancelled"
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)  # an ended job has nothing to cancel
    assert_no_traceback(page)
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in").wait_for()


def test_a_reload_and_a_deep_link_keep_the_sign_in_and_sign_out_ends_it(page, stack, browser):
    login(page, stack, "operator")
    page.goto(stack.ui_url + "/train")  # a typed address: a new Streamlit session, the same sign-in
    page.locator("h1", has_text="Train").wait_for()
    page.reload()
    page.locator("h1", has_text="Train").wait_for()
    page.get_by_test_id("stSidebarUserContent").get_by_text("Signed in as operator").wait_for()
    assert_no_traceback(page)
    shot(page, "reload-keeps-sign-in")
    cookie = next(c for c in page.context.cookies() if c["name"] == "studio_session")
    assert cookie["sameSite"] == "Strict" and cookie["expires"] > 0
    # HttpOnly: no script on the page can read the token, and the reload above still kept the sign-in.
    assert cookie["httpOnly"] and "studio_session" not in page.evaluate("document.cookie")
    assert cookie["value"] not in page.content()
    from services.ui.sessions import _hash

    catalog = open_store(stack.data_dir)
    with catalog.connect(write=False) as conn:
        rows = conn.execute("SELECT token_hash FROM sessions WHERE username = 'operator'").fetchall()
    assert _hash(cookie["value"]) in {r[0] for r in rows} and cookie["value"] not in {r[0] for r in rows}

    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in").wait_for()
    page.reload()  # the old cookie, if the browser still sends it, is revoked
    page.get_by_role("button", name="Sign in").wait_for()
    assert page.locator("h1", has_text="Train").count() == 0

    fresh = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        other = fresh.new_page()
        other.goto(stack.ui_url + "/models")  # a deep link, signed out: sign in, then the page asked for
        other.get_by_label("Username", exact=True).fill("operator")
        other.get_by_label("Password", exact=True).fill(stack.passwords["operator"])
        other.get_by_role("button", name="Sign in").click()
        other.locator("h1", has_text="Models").wait_for(timeout=30_000)
        assert other.url.rstrip("/").endswith("/models")
        assert_no_traceback(other)
    finally:
        fresh.close()
