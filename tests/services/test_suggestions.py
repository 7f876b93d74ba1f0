"""The suggestion head against a real stack: no suggestion before any label; N saved labels retrain it in the
background; the next upload's tags come from it, with scores; one retrain at a time.

The stack is this module's own, with ``SUGGEST_RETRAIN_EVERY`` = 9 (three photos of each of three labels).
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from engine.images import open_image, to_rgb_array
from services.app import suggestions
from services.app.suggestions import RETRAIN_KIND
from services.storage.store import open_store
from tests.harness import Stack
from tests.tagged_photos import LABELS, photo, tagged_photos

EVERY = 9


@pytest.fixture(scope="module")
def suggest_stack(tmp_path_factory, processes):
    s = Stack.in_own_folder(tmp_path_factory, "suggest", SUGGEST_RETRAIN_EVERY=str(EVERY)).start()
    yield s
    s.close()


def upload(stack, id_name: str, data: bytes) -> dict:
    r = requests.post(stack.url + "/imgup", files={"file": (f"{id_name}.jpg", data)}, data={"id_name": id_name},
                      headers=stack.headers("annotator"), timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def put_labels(stack, id_name: str, labels: list[str]) -> None:
    r = requests.put(f"{stack.url}/api/v1/annotations/{id_name}", json={"labels": labels},
                     headers=stack.headers("annotator"), timeout=30)
    assert r.status_code == 200, r.text


def decoded(data: bytes):
    return to_rgb_array(open_image(data, "file"))


def retrain_jobs(stack) -> list[dict]:
    return open_store(stack.data_dir).list_jobs(kind=RETRAIN_KIND)


def wait_for_retrain(stack, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(found := retrain_jobs(stack)) < count:
        assert time.monotonic() < deadline, f"no retrain job was queued: {found}"
        time.sleep(0.2)
    return found


def test_n_saved_labels_retrain_the_head_and_the_next_upload_is_suggested_its_tags(suggest_stack):
    stack = suggest_stack
    first = upload(stack, "before_any_label", photo("person", 90))
    assert first["predict_tags"] == []
    assert suggestions.suggest(stack.config, open_store(stack.data_dir), decoded(photo("person", 90))) == {
        "tags": [], "scores": {}, "model": None}

    photos = tagged_photos(per_label=3)
    assert len(photos) == EVERY
    for name, data, _labels in photos:
        upload(stack, name.removesuffix(".jpg"), data)
    for name, _data, labels in photos[:-1]:
        put_labels(stack, name.removesuffix(".jpg"), labels)
    assert retrain_jobs(stack) == [], "one label short of N: nothing is retrained yet"
    put_labels(stack, photos[-1][0].removesuffix(".jpg"), photos[-1][2])

    job = wait_for_retrain(stack, 1)[0]
    done = stack.wait_job(job["id"], timeout=180)
    assert done["status"] == "finished", done
    result = done["result"]
    assert result["labelled_images"] == EVERY and set(result["class_names"]) == set(LABELS)
    assert result["test_map"] >= 50, "three separable labels: the head must earn the right to suggest"
    assert done["history"] and done["progress"]["unit"] == "epoch"

    for label in LABELS:
        data = photo(label, 60)
        assert label in upload(stack, f"next_{label}", data)["predict_tags"]
        # The scores behind those tags, from the code the API ran, with the model the worker registered.
        found = suggestions.suggest(stack.config, open_store(stack.data_dir), decoded(data))
        assert found["model"] == result["model_id"] and set(found["scores"]) == set(LABELS)
        assert max(found["scores"], key=found["scores"].get) == label, found


def test_one_retrain_at_a_time_and_the_count_restarts_after_it(suggest_stack):
    """Labels saved while a retrain is queued or running queue no second one; N more after it queue the next."""
    stack = suggest_stack
    before = len(retrain_jobs(stack))
    photos = tagged_photos(per_label=3, start=10)
    for name, data, _labels in photos:
        upload(stack, name.removesuffix(".jpg"), data)
    for name, _data, labels in photos[:-1]:
        put_labels(stack, name.removesuffix(".jpg"), labels)
    assert len(retrain_jobs(stack)) == before
    # Two saves at once, each completing N: only one retrain is queued.
    last = photos[-1]
    again = photos[0]
    threads = [threading.Thread(target=put_labels, args=(stack, n.removesuffix(".jpg"), lab))
               for n, _d, lab in (last, again)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jobs = wait_for_retrain(stack, before + 1)
    time.sleep(1)
    assert len(retrain_jobs(stack)) == before + 1
    assert stack.wait_job(jobs[0]["id"], timeout=180)["status"] == "finished"
