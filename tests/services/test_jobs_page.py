"""The Jobs page under AppTest: a client sees the kinds and the newest jobs of their own, listed by the catalog."""

from __future__ import annotations

import pytest

from services.storage.store import open_store
from tests.harness import app_page


@pytest.fixture
def page(tmp_path, monkeypatch):
    """The Jobs page over a catalog of finished jobs by two users, signed in as the client ``c1``."""
    store = open_store(tmp_path)
    for i, (kind, owner) in enumerate([("train", "c1"), ("generate", "c2"), ("train", "c2"), ("tune", "c1"),
                                       ("train", "c1")]):
        store.create_job(f"job{i}", kind, {}, owner)
        store.update_job(f"job{i}", status="finished", created_at=1000.0 + i, result={"n": i})
    with app_page("jobs.py", {"username": "c1", "role": "client"}, tmp_path, monkeypatch) as at:
        yield at


def test_a_client_lists_their_own_jobs_newest_first_and_filters_by_kind(page):
    page.run()
    assert not page.exception
    assert page.selectbox(key="jobs_kind").options == ["(all)", "train", "tune"]
    assert list(page.dataframe[0].value["id"]) == ["job4", "job3", "job0"]
    page.selectbox(key="jobs_kind").set_value("train").run()
    assert not page.exception
    assert list(page.dataframe[0].value["id"]) == ["job4", "job0"]
    assert page.selectbox(key="jobs_pick").options == ["job4", "job0"]
