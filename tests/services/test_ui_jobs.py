"""The shared live-job panel when Redis is gone: the page says so in one sentence, never with a traceback.

The panel is drawn the way the Augment page draws its generation job (status line, progress bar, Cancel),
against a catalog whose job is running and a Redis address where nothing listens.
"""

from __future__ import annotations

import os

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from services.storage.store import open_store
from tests.harness import signed_in_session

JOB_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


def augment_like_panel() -> None:
    """A page script (AppTest runs its source alone, so it imports what it uses)."""
    import streamlit as st

    from services.ui.live import cancel_button, is_live, job_state, live_panel, progress_bar, status_line
    from services.ui.page import get_config, get_store, require_page

    require_page("pages/augment.py")
    config, store = get_config(), get_store()
    job_id = st.session_state["job"]

    def panel() -> str:
        record = job_state(config, store, job_id)
        progress_bar(record, status_line("Job", record, "samples"))
        if is_live(record["status"]):
            cancel_button(config, store, job_id, key="augment_cancel")
        return record["status"]

    live_panel("augment_job_panel", job_state(config, store, job_id, warn=False)["status"], panel, every=1)


@pytest.fixture
def page(tmp_path, monkeypatch, unreachable_redis_url):
    """The panel over a catalog with one started generation job, and Redis unreachable; an operator signed in."""
    data_dir = tmp_path / "data"
    store = open_store(data_dir)
    store.create_job(JOB_ID, "generate", {}, "operator")
    store.update_job(JOB_ID, status="started", progress={"done": 40, "total": 100, "fraction": 0.4})
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    monkeypatch.setenv("REDIS_URL", unreachable_redis_url)
    st.cache_resource.clear()  # the config and catalog are cached per process: read this DATA_DIR
    at = AppTest.from_function(augment_like_panel, default_timeout=30)
    at.session_state["job"] = JOB_ID
    operator = {"username": "operator", "role": "operator"}
    at.session_state["session_token"], at.session_state["user"] = signed_in_session(store, operator), operator
    yield at
    st.cache_resource.clear()


def test_the_panel_shows_the_recorded_state_while_redis_is_unreachable(page):
    page.run()
    assert not page.exception
    assert page.get("progress")[0].proto.text == f"Job {JOB_ID[:8]}: started · 40 / 100 samples"
    assert page.button(key="augment_cancel").label == "Cancel job"


def test_cancel_says_the_queue_is_unreachable_instead_of_raising(page):
    page.run()
    page.button(key="augment_cancel").click().run()
    assert not page.exception
    assert [e.value for e in page.error] == ["The job queue (Redis) is unreachable; try again shortly."]
    assert page.get("progress")[0].proto.text.endswith("started · 40 / 100 samples")  # the panel is still there
    assert open_store(os.environ["DATA_DIR"]).get_job(JOB_ID)["status"] == "started"  # nothing was half-done


def test_the_message_outlives_the_panels_redraws_until_cancel_is_pressed_again(page):
    page.run()
    page.button(key="augment_cancel").click().run()
    for _ in range(3):  # what the live panel's redraws every second do: run again, no click
        page.run()
        assert [e.value for e in page.error] == ["The job queue (Redis) is unreachable; try again shortly."]
    store = open_store(os.environ["DATA_DIR"])
    store.create_job("f" * 32, "generate", {}, "operator")
    page.session_state["job"] = "f" * 32  # the panel now shows another job: the old failure is not about it
    page.run()
    assert not page.error
    assert page.button(key="augment_cancel").label == "Cancel job"


def test_an_ended_job_is_still_shown_without_polling(page):
    open_store(os.environ["DATA_DIR"]).update_job(JOB_ID, status="finished",
                                                  progress={"done": 100, "total": 100, "fraction": 1.0})
    page.run()
    assert not page.exception
    assert page.get("progress")[0].proto.text == f"Job {JOB_ID[:8]}: finished · 100 / 100 samples"
    assert not page.button  # nothing left to cancel
