"""Quotas, roles and ownership hold at every door: the API over HTTP and the page path give the same answer.

Break 7 of the hardening issue: the per-user quota of active jobs was checked only by the API's decorator, so
jobs started from the pages, dataset imports and study trials escaped it; a study could ask for any amount of
work; a page left open by a demoted or deleted user could still press Cancel in its self-refreshing panel; and
an annotator could replace another annotator's photo through the Annotate page. Each case below is
parametrized over (role, action, door) and asserts one answer, allowed / forbidden / over quota / signed out,
whichever door was used:

- ``api``: a request to the API's routes (its app in-process, as the fast tier calls it), signed in with a token.
- ``page``: what a page does, signed in as that user: its first line (``require_page``, run under Streamlit's
  AppTest), then the service function its button calls; or the page itself under AppTest, for the live panel,
  the Annotate page and the Tune page's words.
- ``browser``: Chromium on the real UI, where a click inside a live panel re-runs only the panel (slow).

One in-process studio of its own, with ``MAX_ACTIVE_JOBS_PER_USER=3``, whose queued jobs are never run: the
``operator`` has three queued jobs of the test kind (``tests/fake_jobs.py``) and so no room for a fourth. The
browser's door needs the real stack (a UI, an API, Redis; its worker stopped).
"""

from __future__ import annotations

import dataclasses
import io
import secrets
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import tests.fake_jobs  # noqa: F401 - registers the "test-count" kind in this process too
from engine.augment.backgrounds import make_background
from engine.exceptions import InvalidInput
from services.app import datasets, generate, rules, training, tuning
from services.app.quotas import TooManyJobs
from services.jobs import runtime as jobs
from services.storage.store import open_store
from tests.digits import DIGITS_FILE, digits_body, ensure_digits_hdf5
from tests.harness import LocalStudio, Stack, app_page, signed_in_session, stop
from tests.scenes import LEGACY_BOX, encode, scene

LIMIT = 3
CLASS = "rules_red"
PAGE_OF = {"train": "pages/train.py", "generate": "pages/augment.py", "study": "pages/tune.py",
           "import": "pages/datasets.py"}
EXPECTED = {"admin": "allowed", "operator": "over quota", "annotator": "forbidden", "client": "forbidden"}
STUDY = {"dataset": "hdf5", "hdf5_path": DIGITS_FILE, "num_classes": 10, "image_size": 16, "num_epochs": 1,
         "seed": 0, "n_trials": 2, "epochs_per_trial": 1, "parallel": 1,
         "space": {"learning_rate": [0.01, 0.1], "model_name": ["lenet5"]}}
GENERATE = {"number_backgrounds": "1", "image_size": "32", "classes": [CLASS], "angels": [], "test_angels": [],
            "scales": ["400"]}


def fill_the_operators_quota(studio) -> None:
    ensure_digits_hdf5(studio.data_dir)
    _library(studio)
    for _ in range(LIMIT):
        jobs.submit(config_of(studio), open_store(studio.data_dir), "test-count", {"n": 1}, "operator")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A studio whose quota is 3 active jobs, with data for every action, and the operator's quota full of
    queued jobs (nothing runs them)."""
    local = LocalStudio.in_own_folder(tmp_path_factory, "rules", max_active_jobs_per_user=LIMIT)
    fill_the_operators_quota(local)
    return local


@pytest.fixture(scope="module")
def studio_ui(tmp_path_factory, processes):
    """The same studio on real parts with its UI, started as ``make run`` starts it, its worker stopped."""
    stack = Stack.in_own_folder(tmp_path_factory, "rules", MAX_ACTIVE_JOBS_PER_USER=str(LIMIT)).start()
    try:
        for worker in stack.workers:  # what is queued stays queued
            stop(worker)
        fill_the_operators_quota(stack)
        stack.start_ui()
        yield stack
    finally:
        stack.close()


def config_of(stack):
    """The configuration the studio's own processes read (its environment sets the quota)."""
    return dataclasses.replace(stack.config, max_active_jobs_per_user=LIMIT)


def _library(stack) -> None:
    """One cut-out of one class, and one background per split, for a generation."""
    image, _ = scene((210, 40, 40), seed=3)
    r = stack.http.post("/api/v1/segment", json={**LEGACY_BOX, "ean": CLASS, "image": encode(image)},
                        headers=stack.headers("admin"))
    assert r.status_code == 200, r.text
    for seed, split in ((1, "train"), (2, "test")):
        buf = io.BytesIO()
        Image.fromarray(make_background("noise", 96, seed)).save(buf, "PNG")
        generate.add_background(studio_admin(stack), buf.getvalue(), split)


def studio_admin(stack) -> rules.Actor:
    """The studio's admin as an actor, to set up data through the actions."""
    return rules.Actor({"username": "admin", "role": "admin"}, stack.config, open_store(stack.data_dir))


def class_folders_zip() -> bytes:
    """A zip of <class>/<image>.png, as a file manager makes one: two classes of six 16 px pictures."""
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for label, shade in (("dark", 40), ("light", 210)):
            for i in range(6):
                pixels = np.clip(rng.normal(shade, 10, (16, 16, 3)), 0, 255).astype(np.uint8)
                png = io.BytesIO()
                Image.fromarray(pixels).save(png, "PNG")
                zf.writestr(f"{label}/{label}_{i}.png", png.getvalue())
    return buf.getvalue()


def active_jobs(stack, username: str) -> int:
    store = open_store(stack.data_dir)
    return sum(store.count_jobs(status=s, created_by=username) for s in ("queued", "started"))


def leftovers(stack) -> list[str]:
    """Uploads an import kept (a refused one must keep nothing)."""
    return sorted(p.name for p in (stack.data_dir / "uploads").glob("*") if p.is_file())


# ----------------------------------------------------------------------------------------- the doors
def api_door(stack, role: str, action: str) -> str:
    """Submit ``action`` through the API's route as ``role``; the answer in words."""
    headers = stack.headers(role)
    if action == "train":
        r = stack.http.post("/api/v1/train", json=digits_body(num_epochs="1"), headers=headers)
    elif action == "generate":
        r = stack.http.post("/api/v1/generate", json=GENERATE, headers=headers)
    elif action == "study":
        r = stack.http.post("/api/v1/tune", json=STUDY, headers=headers)
    else:
        r = stack.http.post("/api/v1/datasets", files={"file": ("rules.zip", class_folders_zip())},
                            data={"name": f"rules_{secrets.token_hex(3)}"}, headers=headers)
    return {202: "allowed", 401: "signed out", 403: "forbidden", 429: "over quota"}.get(r.status_code, r.text)


def page_gate() -> None:
    """The first line of every page (AppTest runs this function's source alone, so it imports what it uses)."""
    import streamlit as st

    from services.ui.page import require_page

    require_page(st.session_state["script"])
    st.success("the page opens")


def page_opens(stack, user: dict, script: str, monkeypatch) -> bool:
    """Whether the page ``script`` lets ``user`` in (signed in as app.py signs in)."""
    monkeypatch.setenv("DATA_DIR", str(stack.data_dir))
    at = AppTest.from_function(page_gate, default_timeout=30)
    at.session_state["session_token"] = signed_in_session(open_store(stack.data_dir), user)
    at.session_state["user"], at.session_state["script"] = user, script
    at.run()
    assert not at.exception
    return bool(at.success)


def page_submit(stack, user: dict, action: str) -> None:
    """What the page's button calls, with its own arguments (``pages/*.py``, ``services/ui/dataset_upload.py``)."""
    config, store = config_of(stack), open_store(stack.data_dir)
    if action == "train":
        training.submit_training(rules.Actor(user, config, store),
                                 training.TrainRequest.model_validate(digits_body(num_epochs="1")))
    elif action == "generate":
        generate.submit_generation(rules.Actor(user, config, store), generate.GenerateBody.model_validate(GENERATE))
    elif action == "study":
        tuning.launch(rules.Actor(user, config, store), tuning.TuneRequest.model_validate(STUDY))
    else:
        upload = config.path("uploads", f".upload-{secrets.token_hex(4)}.part")  # as the page saves the file
        upload.parent.mkdir(parents=True, exist_ok=True)
        upload.write_bytes(class_folders_zip())
        form = datasets.UploadForm.model_validate({"name": f"rules_{secrets.token_hex(3)}"})
        try:
            datasets.submit_import(rules.Actor(user, config, store), upload, form, "rules.zip")
        finally:
            upload.unlink(missing_ok=True)  # as the page does: the action moves the file when it takes it


def page_door(stack, role: str, action: str, monkeypatch) -> str:
    user = {"username": role, "role": role}
    if not page_opens(stack, user, PAGE_OF[action], monkeypatch):
        return "forbidden"
    try:
        page_submit(stack, user, action)
    except TooManyJobs:
        return "over quota"
    return "allowed"


# ------------------------------------------------------------------------------------------- quotas
@pytest.mark.parametrize("door", ["api", "page"])
@pytest.mark.parametrize("action", ["train", "generate", "study", "import"])
@pytest.mark.parametrize("role", ["operator", "admin", "client", "annotator"])
def test_submitting_a_job_gets_the_same_answer_at_every_door(studio, role, action, door, monkeypatch):
    uploads = leftovers(studio)
    answer = api_door(studio, role, action) if door == "api" else page_door(studio, role, action, monkeypatch)
    assert answer == EXPECTED[role]
    assert active_jobs(studio, "operator") == LIMIT  # the operator's refused jobs left no row
    if answer != "allowed":
        assert leftovers(studio) == uploads  # nor an upload


@pytest.fixture
def planner(studio):
    """An operator with no jobs yet, to try studies of every size."""
    name = f"planner_{secrets.token_hex(3)}"
    open_store(studio.data_dir).create_user(name, "planner-pass-123", "operator")
    token = studio.http.post("/auth", json={"username": name, "password": "planner-pass-123"}).json()["access_token"]
    return {"username": name, "role": "operator", "headers": {"Authorization": f"JWT {token}"}}


# 1,000 trials x 100,000 epochs with 64 in parallel was accepted; 1,400 digits make it 1.4e11 image passes.
HUGE = {"n_trials": 1000, "epochs_per_trial": 100_000, "parallel": 64}
WIDE = {"n_trials": 10, "epochs_per_trial": 1, "parallel": 8}  # 9 jobs at once, over the quota of 3
LONG = {"n_trials": 1000, "epochs_per_trial": 100, "parallel": 1}  # each trial fits, all together do not


@pytest.mark.parametrize("door", ["api", "page"])
@pytest.mark.parametrize(("budget", "field", "status"), [
    (HUGE, "epochs_per_trial", 400), (LONG, "n_trials", 400), (WIDE, "parallel", 400)])
def test_a_study_over_its_budget_is_refused_naming_the_field(studio, planner, budget, field, status, door):
    body = {**STUDY, **budget}
    if door == "api":
        r = studio.http.post("/api/v1/tune", json=body, headers=planner["headers"])
        assert r.status_code == status and r.json()["field"] == field, r.text
        message = r.json()["message"]
    else:
        with pytest.raises(InvalidInput) as refused:  # what the Tune page's Launch calls
            tuning.launch(rules.Actor(planner, config_of(studio), open_store(studio.data_dir)),
                          tuning.TuneRequest.model_validate(body))
        assert refused.value.field == field
        message = str(refused.value)
    assert ("MAX_SAMPLE_EPOCHS" if field != "parallel" else "MAX_ACTIVE_JOBS_PER_USER") in message
    assert active_jobs(studio, planner["username"]) == 0  # nothing was started


@pytest.mark.parametrize("door", ["api", "page"])
def test_a_studys_parallel_trials_count_against_the_quota(studio, planner, door):
    """Study + 2 trials in flight take all 3 slots: nothing more fits, at either door; the trials were
    counted when the study was launched."""
    body = {**STUDY, "n_trials": 4, "parallel": 2}
    r = studio.http.post("/api/v1/tune", json=body, headers=planner["headers"])
    assert r.status_code == 202, r.text
    assert active_jobs(studio, planner["username"]) == LIMIT  # the study and its two queued trials
    if door == "api":
        answer = studio.http.post("/api/v1/train", json=digits_body(num_epochs="1"),
                               headers=planner["headers"]).status_code
        assert answer == 429
    else:
        with pytest.raises(TooManyJobs):
            page_submit(studio, planner, "train")
    studio.http.post(f"/api/v1/tune/{r.json()['study_id']}/stop", headers=planner["headers"])


def test_the_tune_page_names_the_field_in_its_own_words(studio, planner, monkeypatch):
    """The Tune page says what the API says, in the words of its widgets."""
    user = {"username": planner["username"], "role": "operator"}
    with app_page("tune.py", user, studio.data_dir, monkeypatch, REDIS_URL=studio.config.effective_redis_url,
                  MAX_ACTIVE_JOBS_PER_USER=str(LIMIT)) as page:
        page.run()
        page.number_input(key="tune_trials").set_value(HUGE["n_trials"])
        page.number_input(key="tune_trial_epochs").set_value(HUGE["epochs_per_trial"])
        page.number_input(key="tune_parallel").set_value(HUGE["parallel"])
        page.button(key="tune_launch").click().run()
        assert not page.exception
        errors = [e.value for e in page.error]
        assert any(e.startswith("Epochs per trial:") and "MAX_SAMPLE_EPOCHS" in e for e in errors), errors
        page.number_input(key="tune_trials").set_value(WIDE["n_trials"])
        page.number_input(key="tune_trial_epochs").set_value(WIDE["epochs_per_trial"])
        page.number_input(key="tune_parallel").set_value(WIDE["parallel"])
        page.button(key="tune_launch").click().run()
        errors = [e.value for e in page.error]
        assert any(e.startswith("Trials at once (workers):") and "MAX_ACTIVE_JOBS_PER_USER" in e
                   for e in errors), errors
    assert active_jobs(studio, planner["username"]) == 0


# ---------------------------------------------------------------------------------- live panels
def fresh_operator(stack) -> tuple[str, dict]:
    """A new operator and a token of theirs."""
    name = f"watcher_{secrets.token_hex(3)}"
    open_store(stack.data_dir).create_user(name, "watcher-pass-123", "operator")
    token = stack.http.post("/auth", json={"username": name, "password": "watcher-pass-123"}).json()["access_token"]
    return name, {"Authorization": f"JWT {token}"}


def change(stack, name: str, how: str) -> None:
    store = open_store(stack.data_dir)
    if how == "demoted":
        store.set_role(name, "client")
    elif how == "deleted":
        store.delete_user(name)


@pytest.mark.parametrize("door", ["api", "page"])
@pytest.mark.parametrize(("how", "expected"), [("unchanged", "allowed"), ("demoted", "signed out"),
                                               ("deleted", "signed out")])
def test_cancel_by_a_user_changed_after_the_page_loaded(studio, how, expected, door, monkeypatch):
    name, headers = fresh_operator(studio)
    job_id = jobs.submit(config_of(studio), open_store(studio.data_dir), "test-count", {"n": 1}, name)
    if door == "api":
        change(studio, name, how)
        r = studio.http.post(f"/api/v1/jobs/{job_id}/cancel", headers=headers)
        answer = {200: "allowed", 401: "signed out", 403: "forbidden"}.get(r.status_code, r.text)
    else:
        with app_page("jobs.py", {"username": name, "role": "operator"}, studio.data_dir, monkeypatch,
                      REDIS_URL=studio.config.effective_redis_url) as page:
            page.run()
            page.selectbox(key="jobs_pick").set_value(job_id).run()
            cancel = page.button(key="jobs_cancel")  # drawn in the live panel while the user was an operator
            change(studio, name, how)
            cancel.click().run()  # the panel's next run, without app.py's sign-in check before it
            assert not page.exception
            signed_out = any(e.value == "Please sign in first." for e in page.error)
        status = open_store(studio.data_dir).get_job(job_id)["status"]
        answer = "allowed" if status == "cancelled" else "signed out" if signed_out else status
    assert answer == expected
    assert open_store(studio.data_dir).get_job(job_id)["status"] == ("cancelled" if expected == "allowed" else "queued")


@pytest.mark.parametrize("how", ["demoted", "deleted"])
def test_cancel_in_the_live_panel_of_a_real_browser_after_the_user_changed(studio_ui, browser, how):
    """The real door: in a browser, a click inside the self-refreshing panel re-runs only the panel, and
    app.py's sign-in check does not run before it."""
    from tests.browser.conftest import choose_option, login, select_box

    name, _headers = fresh_operator(studio_ui)
    studio_ui.passwords[name] = "watcher-pass-123"
    job_id = jobs.submit(config_of(studio_ui), open_store(studio_ui.data_dir), "test-count", {"n": 1}, name)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        login(page, studio_ui, name)
        page.locator("[data-testid='stSidebarNav'] a", has_text="Jobs").click()
        page.locator("h1", has_text="Jobs").wait_for()
        choose_option(page, select_box(page, "Job"), job_id)
        cancel = page.get_by_role("button", name="Cancel job")
        cancel.wait_for()
        change(studio_ui, name, how)
        cancel.click()  # before or during the panel's next redraw: neither may act for the changed user
        page.get_by_role("button", name="Sign in").wait_for()  # signed out: the page went back to the sign-in form
    finally:
        context.close()
    assert open_store(studio_ui.data_dir).get_job(job_id)["status"] == "queued"


def stale_cancel() -> None:
    """A Cancel button of the shared panel code, pressed by whoever is signed in (the action checks itself)."""
    import streamlit as st

    from services.ui.live import cancel_button
    from services.ui.page import get_config, get_store, require_page

    require_page("pages/jobs.py")
    cancel_button(get_config(), get_store(), st.session_state["job"], key="stale_cancel")


@pytest.mark.parametrize("door", ["api", "page"])
def test_a_client_may_not_cancel_even_from_a_button_it_should_not_see(studio, door, monkeypatch):
    job_id = jobs.submit(config_of(studio), open_store(studio.data_dir), "test-count", {"n": 1}, "client")
    if door == "api":
        r = studio.http.post(f"/api/v1/jobs/{job_id}/cancel", headers=studio.headers("client"))
        assert r.status_code == 403
    else:
        monkeypatch.setenv("DATA_DIR", str(studio.data_dir))
        monkeypatch.setenv("REDIS_URL", studio.config.effective_redis_url)
        at = AppTest.from_function(stale_cancel, default_timeout=30)
        client = {"username": "client", "role": "client"}
        at.session_state["session_token"] = signed_in_session(open_store(studio.data_dir), client)
        at.session_state["user"], at.session_state["job"] = client, job_id
        at.run()
        at.button(key="stale_cancel").click().run()
        assert not at.exception
        assert [e.value for e in at.error] == ["role 'client' may not cancel jobs; allowed: admin, operator"]
    assert open_store(studio.data_dir).get_job(job_id)["status"] == "queued"


# ------------------------------------------------------------------------------------- ownership
def photo(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((24, 32, 3), shade, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def annotator(stack, name: str) -> dict:
    """An annotator (created when missing) and a token of theirs."""
    store = open_store(stack.data_dir)
    if name != "annotator" and store.get_user(name) is None:
        store.create_user(name, "annotator-pass-1", "annotator")
    if name == "annotator":
        return {"username": name, "role": "annotator", "headers": stack.headers(name)}
    token = stack.http.post("/auth", json={"username": name, "password": "annotator-pass-1"}).json()["access_token"]
    return {"username": name, "role": "annotator", "headers": {"Authorization": f"JWT {token}"}}


def replace_on_page(stack, user: dict, id_name: str, data: bytes, monkeypatch) -> list[str]:
    """Drop ``data`` as ``<id_name>.png`` on the Annotate page, tick "Replace images", Save all; the errors."""
    with app_page("annotate.py", user, stack.data_dir, monkeypatch) as page:
        page.run()
        page.file_uploader(key="annotate_files").set_value([(f"{id_name}.png", data, "image/png")]).run()
        page.checkbox(key="annotate_overwrite").check().run()
        page.button(key="annotate_save_all").click().run()
        assert not page.exception
        return [e.value for e in page.error]


@pytest.mark.parametrize("door", ["api", "page"])
@pytest.mark.parametrize(("who", "expected"), [("owner", "allowed"), ("other annotator", "forbidden"),
                                               ("admin", "allowed")])
def test_replacing_an_image_is_allowed_only_to_its_uploader(studio, who, expected, door, monkeypatch):
    id_name = f"photo_{secrets.token_hex(3)}"
    owner = annotator(studio, "annotator")
    r = studio.http.post("/imgup", files={"file": (f"{id_name}.png", photo(60))},
                      data={"id_name": id_name}, headers=owner["headers"])
    assert r.status_code == 200, r.text
    store = open_store(studio.data_dir)
    original = studio.data_dir / store.get_image(id_name)["path"]
    before = original.read_bytes()
    actor = {"owner": owner, "other annotator": annotator(studio, "annotator_b"),
             "admin": {"username": "admin", "role": "admin", "headers": studio.headers("admin")}}[who]
    if door == "api":
        r = studio.http.post("/imgup", files={"file": (f"{id_name}.png", photo(200))},
                          data={"id_name": id_name, "overwrite": "1"}, headers=actor["headers"])
        answer = {200: "allowed", 403: "forbidden"}.get(r.status_code, r.text)
        if r.status_code == 403:
            assert r.json() == {"error": "forbidden", "field": "id_name", "message": f"image '{id_name}' was "
                                "uploaded by another user; an annotator may overwrite only their own uploads"}
    else:
        errors = replace_on_page(studio, {"username": actor["username"], "role": actor["role"]}, id_name,
                                 photo(200), monkeypatch)
        answer = "forbidden" if any("uploaded by another user" in e for e in errors) else "allowed"
    assert answer == expected
    row = open_store(studio.data_dir).get_image(id_name)
    replaced = Path(studio.data_dir / row["path"]).read_bytes() != before
    assert replaced == (expected == "allowed")
    assert row["uploaded_by"] == (actor["username"] if expected == "allowed" else "annotator")
