"""Hyperparameter search against the running stack: real Redis, ONE worker, the API under gunicorn (the
request's checks in-process).

The data is scikit-learn's digits at 16 x 16 written as an HDF5 file in the legacy API's layout, so a trial
trains in about a second and the studies below finish with the single worker of the ``stack`` fixture.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from types import SimpleNamespace

import optuna
import pytest
import requests

from services.app import tuning
from services.jobs.runtime import MEMBERS_KEY, TERMINAL
from services.storage.store import open_store
from tests.digits import write_digits_hdf5
from tests.harness import app_page

DIGITS = "tune_digits.h5"
OMIT = object()  # a field left out of the body
SPACE = {"learning_rate": [0.005, 0.1], "batch_size": [32, 64], "weight_decay": [0.0, 0.001],
         "optimizer": ["sgd", "adam"], "model_name": ["lenet5", "convnetj"]}


def write_digits(studio) -> str:
    """The digits as ``DATA_DIR/datasets/tune_digits.h5``: uint8 N x 16 x 16 x 3, class names as JSON."""
    write_digits_hdf5(studio.data_dir / "datasets" / DIGITS, train=slice(0, 800), scale=2)
    return DIGITS


@pytest.fixture(scope="module")
def digits(stack) -> str:
    return write_digits(stack)


@pytest.fixture(scope="module")
def local_digits(studio) -> str:
    """The same file in the in-process studio, for the checks a request meets before any job runs."""
    return write_digits(studio)


def study_body(**overrides) -> dict:
    return {"dataset": "hdf5", "hdf5_path": DIGITS, "num_classes": 10, "image_size": 16, "num_epochs": 2,
            "seed": 0, "n_trials": 3, "epochs_per_trial": 2, "parallel": 2, "space": SPACE, **overrides}


def launch(stack, body: dict) -> dict:
    r = requests.post(f"{stack.url}/api/v1/tune", json=body, headers=stack.headers("operator"), timeout=30)
    assert r.status_code == 202, r.text
    return r.json()


def study(stack, study_id: str) -> dict:
    r = requests.get(f"{stack.url}/api/v1/tune/{study_id}", headers=stack.headers("operator"), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def within_space(params: dict) -> bool:
    low_lr, high_lr = SPACE["learning_rate"]
    low_wd, high_wd = SPACE["weight_decay"]
    return (low_lr <= params["learning_rate"] <= high_lr and low_wd <= params["weight_decay"] <= high_wd
            and params["batch_size"] in SPACE["batch_size"] and params["optimizer"] in SPACE["optimizer"]
            and params["model_name"] in SPACE["model_name"])


@pytest.fixture(scope="module")
def finished_study(stack, digits) -> dict:
    """A study of 3 trials x 2 epochs, launched with parallel=2 and run to its end by the one worker."""
    launched = launch(stack, study_body())
    stack.wait_job(launched["study_id"], timeout=120)
    return {"launched": launched, "view": study(stack, launched["study_id"])}


def test_tiny_study_completes_with_one_worker(stack, finished_study):
    launched, view = finished_study["launched"], finished_study["view"]
    assert launched["job_id"] == launched["study_id"] == launched["jobs"]
    assert len(launched["trial_jobs"]) == 2  # parallel=2 trials were queued at once, the third came later
    assert view["status"] == "finished"
    assert view["progress"]["done"] == 3 == view["progress"]["total"]
    trials = view["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]
    assert all(t["job_status"] == "finished" and t["state"] in ("complete", "pruned") for t in trials)
    assert all(within_space(t["params"]) for t in trials)
    # Trials run in separate processes: each must draw its own configuration, not the same seeded one.
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 3
    complete = [t for t in trials if t["state"] == "complete"]
    assert len(complete) >= 2  # the pruner waits for two finished trials before it compares
    best = view["best"]
    assert best["value"] == max(t["value"] for t in complete) > 50  # test accuracy (%) after 2 epochs
    assert within_space(best["params"])
    assert best["train_request"]["l2_reg"] == best["params"]["weight_decay"]
    assert best["train_request"]["num_epochs"] == 2 and best["train_request"]["hdf5_path"] == DIGITS
    for trial in complete:
        assert len(trial["intermediate"]) == 2 and max(trial["intermediate"]) == trial["value"]


def test_trials_are_jobs_with_epoch_history_and_the_study_job_records_the_best(stack, finished_study):
    view = finished_study["view"]
    headers = stack.headers("operator")
    study_job = requests.get(f"{stack.url}/api/v1/jobs/{view['study_id']}", headers=headers, timeout=10).json()
    assert study_job["kind"] == "tune" and study_job["status"] == "finished"
    assert study_job["result"]["best"] == view["best"]
    for trial in view["trials"]:
        job = requests.get(f"{stack.url}/api/v1/jobs/{trial['job_id']}", headers=headers, timeout=10).json()
        assert job["kind"] == "tune-trial"
        assert [h["test_accuracy"] for h in job["history"]] == trial["intermediate"]
        assert job["result"]["trial"] == trial["number"]
    assert not list((stack.data_dir / "checkpoints").glob(f"{view['trials'][0]['job_id']}*"))


def test_train_best_launches_a_full_training_with_the_best_parameters(stack, finished_study):
    view = finished_study["view"]
    headers = stack.headers("operator")
    r = requests.post(f"{stack.url}/api/v1/tune/{view['study_id']}/train-best", headers=headers, timeout=30)
    assert r.status_code == 202, r.text
    assert r.json()["jobs"] == r.json()["job_id"] and r.json()["trial"] == view["best"]["trial"]
    job = requests.get(f"{stack.url}/api/v1/jobs/{r.json()['job_id']}", headers=headers, timeout=10).json()
    best = view["best"]["params"]
    assert job["kind"] == "train"
    assert {k: job["params"][k] for k in ("learning_rate", "batch_size", "l2_reg", "optimizer", "model_name")} == {
        "learning_rate": best["learning_rate"], "batch_size": best["batch_size"], "l2_reg": best["weight_decay"],
        "optimizer": best["optimizer"], "model_name": best["model_name"]}
    assert job["params"]["num_epochs"] == 2  # the study's num_epochs (the full run), not epochs_per_trial
    # The training itself is the train feature's to test; the worker is needed for the next tests.
    requests.post(f"{stack.url}/api/v1/jobs/{job['id']}/cancel", headers=headers, timeout=30)


def test_an_ended_study_leaves_redis_in_a_week_and_is_then_served_from_the_catalog(stack, finished_study):
    import redis

    view = finished_study["view"]
    conn = redis.Redis.from_url(stack.redis_url)
    keys = [*conn.scan_iter(match=tuning.JOURNAL_PREFIX.format(view["study_id"]) + ":*"),
            MEMBERS_KEY.format(view["study_id"]).encode()]
    assert len(keys) > 3
    assert all(0 < conn.ttl(key) <= tuning.RESULT_TTL for key in keys)
    for key in keys:  # as when they expire (renamed back afterwards: later tests read this study)
        conn.rename(key, b"expired:" + key)
    try:
        expired = study(stack, view["study_id"])
    finally:
        for key in keys:
            conn.rename(b"expired:" + key, key)
    assert expired["best"] == view["best"] and expired["trials"] == view["trials"]
    assert expired["status"] == "finished"


def test_stopped_study_stops_its_trial_and_enqueues_no_more(stack, digits):
    body = study_body(n_trials=10, parallel=1, epochs_per_trial=500,
                      space={"learning_rate": [0.01, 0.05], "model_name": ["lenet5"]})
    study_id = launch(stack, body)["study_id"]
    headers = stack.headers("operator")
    first = wait_until(lambda: (study(stack, study_id)["trials"] or [None])[0], 30, "the first trial")
    wait_until(lambda: requests.get(f"{stack.url}/api/v1/jobs/{first['job_id']}", headers=headers,
                                    timeout=10).json()["history"], 60, "the first epoch")
    early = requests.post(f"{stack.url}/api/v1/tune/{study_id}/train-best", headers=headers, timeout=30)
    assert early.status_code == 409 and "no completed trial" in early.json()["message"]
    r = requests.post(f"{stack.url}/api/v1/tune/{study_id}/stop", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    trial_job = stack.wait_job(first["job_id"], timeout=60)
    assert trial_job["status"] == "cancelled" and len(trial_job["history"]) < 500
    time.sleep(1.5)  # time enough for a (wrong) next trial to be queued
    view = study(stack, study_id)
    assert view["status"] == "cancelled" and len(view["trials"]) == 1
    assert view["trials"][0]["state"] == "pruned"  # what it measured stays in the study
    again = requests.post(f"{stack.url}/api/v1/tune/{study_id}/stop", headers=headers, timeout=30)
    assert again.status_code == 409 and again.json()["field"] == "study_id"


def test_a_study_whose_worker_died_goes_on_once_a_worker_is_back_without_anyone_reading_it(stack, digits):
    body = study_body(n_trials=2, parallel=1, epochs_per_trial=40,
                      space={"learning_rate": [0.01, 0.05], "model_name": ["lenet5"]})
    launched = launch(stack, body)
    study_id, first = launched["study_id"], launched["trial_jobs"][0]
    catalog = open_store(stack.data_dir)  # only the catalog is read: no API call may be what repairs the study
    wait_until(lambda: catalog.get_job(first)["history"], 60, "the first trial's first epoch")
    victim = stack.workers.pop(0)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)
    stack.start_worker()
    ended = wait_until(lambda: catalog.get_job(study_id)["status"] in TERMINAL and catalog.get_job(study_id),
                       120, "the study's end")
    assert ended["status"] == "finished"
    assert catalog.get_job(first)["status"] == "interrupted"
    view = study(stack, study_id)
    assert [(t["job_status"], t["state"]) for t in view["trials"]] == [("interrupted", "fail"),
                                                                        ("finished", "complete")]
    assert view["best"]["trial"] == 1 and view["best"]["value"] > 50


@pytest.mark.parametrize("change, field, words", [
    ({"space": {**SPACE, "model_name": ["lenet5", "resnet99"]}}, "space.model_name", "lenet5"),
    ({"space": {**SPACE, "learning_rate": [0.1, 0.001]}}, "space.learning_rate", "must not exceed"),
    ({"space": {**SPACE, "weight_decay": [0.5, 0.1]}}, "space.weight_decay", "must not exceed"),
    ({"space": {**SPACE, "optimizer": ["sgd", "rmsprop"]}}, "space.optimizer", "adam"),
    ({"space": {**SPACE, "batch_size": []}}, "space.batch_size", "at least one"),
    ({"space": {**SPACE, "model_name": ["lenet5", "alexnet"]}}, "space.model_name", "alexnet"),  # 16 px < 64
    ({"space": {}}, "space", "at least one"),
    ({"space": OMIT, "model_name": "lenet5"}, "space", "at least one"),  # no space: nothing to search
    ({"hdf5_path": "missing.h5"}, "hdf5_path", "tune_digits.h5"),
    ({"num_classes": 3}, "num_classes", "10 classes"),
    ({"parallel": 0}, "parallel", "greater than or equal to 1"),
])
def test_bad_request_is_400_naming_the_field(studio, local_digits, change, field, words):
    body = {key: value for key, value in study_body(**change).items() if value is not OMIT}
    r = studio.http.post("/api/v1/tune", json=body, headers=studio.headers("operator"))
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and words in r.json()["message"]


def test_roles_and_unknown_studies(studio, local_digits):
    r = studio.http.post("/api/v1/tune", json=study_body(), headers=studio.headers("client"))
    assert r.status_code == 403
    headers = studio.headers("operator")
    for method, path in (("get", ""), ("post", "/stop"), ("post", "/train-best")):
        r = studio.http.request(method, f"/api/v1/tune/nope{path}", headers=headers)
        assert r.status_code == 404 and r.json()["field"] == "study_id"
    listed = studio.http.get("/api/v1/tune", headers=headers)
    assert listed.status_code == 200 and isinstance(listed.json()["studies"], list)


def test_a_trial_far_below_the_median_is_pruned_after_its_first_epoch(stack, digits):
    req = tuning.TuneRequest.model_validate(study_body(epochs_per_trial=4, space={"model_name": ["lenet5"]}))
    study_id = uuid.uuid4().hex
    optuna.create_study(study_name=study_id, storage=tuning.study_storage(stack.config, study_id), direction="maximize")
    study = tuning.load_study(stack.config, study_id, req)
    for value in (97.0, 98.0):  # two finished trials that were excellent at every epoch
        trial = study.ask()
        for epoch in range(1, 5):
            trial.report(value, epoch)
        study.tell(trial, value)
    epochs, reported = [], []
    ctx = SimpleNamespace(config=stack.config, job_id=uuid.uuid4().hex, epoch=epochs.append)
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):  # a learning rate this small cannot reach 97 % in one epoch
        tuning.train_trial(ctx, req, {"learning_rate": 1e-6, "model_name": "lenet5"}, trial, lambda: False, reported)
    assert len(epochs) == len(reported) == 1  # one epoch of four was spent
    assert not (stack.data_dir / "checkpoints" / ctx.job_id).exists()


@pytest.fixture
def page(stack, monkeypatch):
    """The Tune page against the running stack, signed in as an operator."""
    user = {"username": "operator", "role": "operator"}
    with app_page("tune.py", user, stack.data_dir, monkeypatch, REDIS_URL=stack.redis_url) as at:
        yield at


def test_page_shows_the_study_and_trains_the_best(stack, finished_study, page):
    study_id = finished_study["view"]["study_id"]
    page.session_state["tune_study"] = study_id
    page.run()
    assert not page.exception and page.title[0].value == "Tune"
    table = page.dataframe[0].value
    assert list(table["trial"]) == [0, 1, 2]
    best = finished_study["view"]["best"]
    assert any(f"trial {best['trial']}" in m.value for m in page.markdown if m.value.startswith("**Best:**"))
    assert len(page.get("vega_lite_chart")) == 2  # objective per trial, test metric per epoch
    page.button(key="tune_train_best").click().run()
    assert not page.exception and "queued with the best parameters" in page.success[0].value
    job_id = page.success[0].value.split()[2]
    record = stack.wait_job(job_id, statuses=("queued", "started", "finished"), timeout=10)
    assert record["kind"] == "train" and record["params"]["model_name"] == best["params"]["model_name"]
    requests.post(f"{stack.url}/api/v1/jobs/{job_id}/cancel", headers=stack.headers("operator"), timeout=30)


def test_page_reports_a_bad_space_without_a_traceback(stack, digits, page):
    page.run()
    page.number_input(key="tune_lr_low").set_value(0.5)
    page.number_input(key="tune_lr_high").set_value(0.01)
    page.button(key="tune_launch").click().run()
    assert not page.exception
    assert any(e.value.startswith("Learning rate") and "must not exceed" in e.value for e in page.error)  # its label
