"""The Jobs page under AppTest: a client sees the kinds and the newest jobs of their own, listed by the catalog."""

from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from services.config import REPO_ROOT
from services.store import open_store


@pytest.fixture
def page(tmp_path, monkeypatch):
    """The Jobs page over a catalog of finished jobs by two users, signed in as the client ``c1``."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    store = open_store(tmp_path)
    for i, (kind, owner) in enumerate([("train", "c1"), ("generate", "c2"), ("train", "c2"), ("tune", "c1"),
                                       ("train", "c1")]):
        store.create_job(f"job{i}", kind, {}, owner)
        store.update_job(f"job{i}", status="finished", created_at=1000.0 + i, result={"n": i})
    st.cache_resource.clear()  # the config is cached per process: make the page read this DATA_DIR
    st.cache_data.clear()
    at = AppTest.from_file(str(REPO_ROOT / "pages" / "jobs.py"), default_timeout=30)
    at.session_state["user"] = {"username": "c1", "role": "client"}
    yield at
    st.cache_resource.clear()


def test_a_client_lists_their_own_jobs_newest_first_and_filters_by_kind(page):
    page.run()
    assert not page.exception
    assert page.selectbox(key="jobs_kind").options == ["(all)", "train", "tune"]
    assert list(page.dataframe[0].value["id"]) == ["job4", "job3", "job0"]
    page.selectbox(key="jobs_kind").set_value("train").run()
    assert not page.exception
    assert list(page.dataframe[0].value["id"]) == ["job4", "job0"]
    assert page.selectbox(key="jobs_pick").options == ["job4", "job0"]
