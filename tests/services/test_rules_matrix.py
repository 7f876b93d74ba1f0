"""One table of rules, the same answer at both doors: every action × every role, through the API (Flask's
test client of ``create_app``) and through the function a page calls (with the actor a page builds).

An answer is what a user notices: allowed (the rules let the action through; what follows may still be a
404 for the made-up id this test sends), forbidden (403 / ``Forbidden``), over quota (429 ``too_many_jobs`` /
``TooManyJobs``), throttled (429 on sign-in). Everything runs in this process (Redis in memory).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image

from engine.exceptions import StudioError
from services.app import rules, sign_in
from services.app.quotas import TooManyJobs
from services.platform.config import ROLES, Config
from services.storage.store import open_store
from tests.harness import LocalStudio

ALLOWED, FORBIDDEN, OVER_QUOTA, THROTTLED = "allowed", "forbidden", "over quota", "throttled"
MISSING = "matrix-no-such-thing"


def tiny_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


@dataclass(frozen=True)
class ApiCall:
    """A request that exercises one action; ids name nothing, bodies are wrong on purpose (after the rules)."""

    method: str
    path: str
    json: Any = None
    form: dict | None = None
    files: dict[str, Callable[[], tuple]] = field(default_factory=dict)


NOT_AN_OBJECT: list = []  # a JSON body that is not an object: a 400 once the rules let it through

API_CALLS: dict[str, list[ApiCall]] = {
    "sign_out": [ApiCall("POST", "/auth/logout")],
    "users.read": [ApiCall("GET", "/api/v1/users")],
    "users.create": [ApiCall("POST", "/api/v1/users", NOT_AN_OBJECT)],
    "users.change": [ApiCall("PATCH", f"/api/v1/users/{MISSING}", {"role": "client"})],
    "users.delete": [ApiCall("DELETE", f"/api/v1/users/{MISSING}")],
    "images.upload": [ApiCall("POST", "/imgup", form={"id_name": "matrix.png"},
                              files={"file": lambda: (io.BytesIO(tiny_png()), "matrix.png")})],
    "images.read": [ApiCall("GET", f"/imginfo/{MISSING}.png"), ApiCall("GET", f"/imginfo?id_name={MISSING}.png")],
    "labels.read": [ApiCall("GET", "/api/v1/labels")],
    "labels.edit": [ApiCall("PUT", "/api/v1/labels", NOT_AN_OBJECT)],
    "annotations.read": [ApiCall("GET", "/api/v1/annotations"), ApiCall("GET", f"/api/v1/annotations/{MISSING}.png")],
    "annotations.export": [ApiCall("GET", "/api/v1/annotations/export")],
    "annotations.save": [ApiCall("PUT", f"/api/v1/annotations/{MISSING}.png", NOT_AN_OBJECT)],
    "objects.segment": [ApiCall("POST", "/api/v1/segment", NOT_AN_OBJECT)],
    "objects.read": [ApiCall("GET", "/api/v1/objects"), ApiCall("GET", f"/api/v1/objects/{MISSING}/image")],
    "objects.delete": [ApiCall("DELETE", f"/api/v1/objects/{MISSING}")],
    "datasets.generate": [ApiCall("POST", "/api/v1/generate", NOT_AN_OBJECT)],
    "backgrounds.read": [ApiCall("GET", "/api/v1/backgrounds")],
    "backgrounds.upload": [ApiCall("POST", "/api/v1/backgrounds", form={})],
    "datasets.import": [ApiCall("POST", "/api/v1/datasets", form={})],
    "datasets.read": [ApiCall("GET", "/api/v1/datasets"), ApiCall("GET", f"/api/v1/datasets/{MISSING}")],
    "datasets.export": [ApiCall("GET", f"/api/v1/datasets/{MISSING}/export")],
    "datasets.delete": [ApiCall("DELETE", f"/api/v1/datasets/{MISSING}")],
    "datasets.edit": [ApiCall("PATCH", f"/api/v1/datasets/{MISSING}", {"mirror_symmetric": True})],
    "train.submit": [ApiCall("POST", "/api/v1/train", NOT_AN_OBJECT)],
    "train.resume": [ApiCall("POST", f"/api/v1/jobs/{MISSING}/resume")],
    "models.zoo": [ApiCall("GET", "/api/v1/models")],
    "models.read": [ApiCall("GET", "/api/v1/models/trained")],
    "models.manage": [ApiCall("POST", f"/api/v1/models/{MISSING}/activate"),
                      ApiCall("GET", f"/api/v1/models/{MISSING}/export"),
                      ApiCall("DELETE", f"/api/v1/models/{MISSING}")],
    "predict": [ApiCall("POST", "/api/v1/predict", NOT_AN_OBJECT)],
    "tune.submit": [ApiCall("POST", "/api/v1/tune", NOT_AN_OBJECT)],
    "tune.read": [ApiCall("GET", "/api/v1/tune"), ApiCall("GET", f"/api/v1/tune/{MISSING}")],
    "tune.stop": [ApiCall("POST", f"/api/v1/tune/{MISSING}/stop")],
    "tune.train_best": [ApiCall("POST", f"/api/v1/tune/{MISSING}/train-best")],
    "jobs.read": [ApiCall("GET", "/api/v1/jobs"), ApiCall("GET", f"/api/v1/jobs/{MISSING}"),
                  ApiCall("POST", f"/api/v1/jobs/{MISSING}")],
    "jobs.cancel": [ApiCall("POST", f"/api/v1/jobs/{MISSING}/cancel")],
}
# Actions with no route of their own: the pages' own ("home", "objects.move", "weights.upload"), a rule asked
# inside another action ("images.replace", by the upload), and sign-in (its own test below: the one action
# before a user exists).
PAGE_ONLY = {"home", "objects.move", "weights.upload"}
NO_ROUTE = {*PAGE_ONLY, "images.replace", "sign_in"}


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> LocalStudio:
    return LocalStudio.in_own_folder(tmp_path_factory, "matrix", max_active_jobs_per_user=2)


def api_answer(studio: LocalStudio, role: str, call: ApiCall) -> str:
    client = studio.client()
    kwargs: dict[str, Any] = {"headers": studio.headers(role)}
    if call.form is not None or call.files:
        kwargs["data"] = {**(call.form or {}), **{k: make() for k, make in call.files.items()}}
        kwargs["content_type"] = "multipart/form-data"
    elif call.json is not None:
        kwargs["json"] = call.json
    response = client.open(call.path, method=call.method, **kwargs)
    body = response.get_json(silent=True) or {}
    assert response.status_code < 500, f"{call.method} {call.path} as {role}: {response.status_code} {body}"
    if response.status_code == 403 and body.get("message", "").startswith(f"role '{role}' may not"):
        return FORBIDDEN
    if response.status_code == 429:
        return OVER_QUOTA if body.get("error") == "too_many_jobs" else THROTTLED
    return ALLOWED


def expected(action: str, role: str) -> str:
    return ALLOWED if rules.may(action, {"role": role}) else FORBIDDEN


def test_every_action_has_a_door_in_this_test_and_every_route_serves_an_action(studio):
    assert set(API_CALLS) | NO_ROUTE == set(rules.RULES)
    served = {getattr(view, "endpoint_meta", None) for view in studio.app.view_functions.values()}
    actions = {meta.action for meta in served if meta is not None}
    assert actions - {None} == set(rules.RULES) - PAGE_ONLY - {"images.replace"}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", sorted(API_CALLS))
def test_the_api_answers_as_the_table_says(studio, action, role):
    for call in API_CALLS[action]:
        assert api_answer(studio, role, call) == expected(action, role), f"{call.method} {call.path}"


def page_answer(run: Callable[[], Any]) -> str:
    try:
        run()
    except rules.Forbidden as exc:
        # The rules' refusal names the role; an ownership refusal inside the action comes after the rules.
        return FORBIDDEN if str(exc).startswith("role '") and " may not " in str(exc) else ALLOWED
    except TooManyJobs:
        return OVER_QUOTA
    except StudioError:
        return ALLOWED  # past the rules: the made-up id or the empty request is refused by the action itself
    return ALLOWED


def junk_file(config: Config):
    """An uploaded file that is neither a zip nor an HDF5 file (the page hands the import a file on disk)."""
    path = config.data_dir / "uploads" / f"matrix-{uuid.uuid4().hex}.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"just some text, not a dataset")
    return path


def _page_calls() -> dict[str, Callable[[rules.Actor], Any]]:
    """What a page's button calls for each action, with the page's kind of arguments (ids that name nothing)."""
    from services.app import (
        annotation,
        datasets,
        generate,
        jobs,
        library,
        model_catalog,
        predictions,
        segment,
        training,
        tuning,
        users,
    )

    photo = tiny_png()
    return {
        "users.read": users.list_users,
        "users.create": lambda a: users.create_user(a, users.NewUser(username=f"matrix{uuid.uuid4().hex[:8]}",
                                                                     password="Matrix-pass-2026!", role="client")),
        "users.change": lambda a: users.change_user(a, MISSING, users.UserChange(role="client")),
        "users.delete": lambda a: users.delete_user(a, MISSING),
        "images.upload": lambda a: annotation.upload_image(a, annotation.Upload("matrix-page.png", photo)),
        "images.read": lambda a: annotation.read_image(a, f"{MISSING}.png"),
        "labels.read": annotation.read_label_set,
        "labels.edit": lambda a: annotation.edit_label_set(a, []),
        "annotations.read": lambda a: annotation.read_annotations(a, f"{MISSING}.png"),
        "annotations.export": lambda a: annotation.export_annotations(a, "csv"),
        "annotations.save": lambda a: annotation.save_labels(a, f"{MISSING}.png", []),
        "objects.segment": lambda a: segment.segment(a, segment.CutRequest(x1=1, y1=1, x2=6, y2=6, image="bm9wZQ==")),
        "objects.read": lambda a: segment.read_objects(a, MISSING),
        "objects.delete": lambda a: segment.remove_object(a, MISSING),
        "objects.move": lambda a: library.move(a, MISSING, "cat"),
        "datasets.generate": lambda a: generate.submit_generation(a, generate.GenerateBody.model_validate(
            {"classes": [MISSING]})),
        "backgrounds.read": generate.read_backgrounds,
        "backgrounds.upload": lambda a: generate.add_background(a, b"not an image"),
        "datasets.import": lambda a: datasets.submit_import(a, junk_file(a.config), datasets.UploadForm(), "m.zip"),
        "datasets.read": lambda a: datasets.read_datasets(a, MISSING),
        "datasets.export": lambda a: datasets.export_dataset(a, MISSING),
        "datasets.delete": lambda a: datasets.delete_dataset(a, MISSING),
        "datasets.edit": lambda a: datasets.change_dataset(a, MISSING, datasets.DatasetChange(mirror_symmetric=True)),
        "train.submit": lambda a: training.submit_training(a, training.TrainRequest.model_validate(
            {"dataset": "hdf5", "hdf5_path": f"{MISSING}.hdf5", "model_name": "convnetj"})),
        "train.resume": lambda a: training.resume(a, MISSING),
        "models.zoo": model_catalog.zoo,
        "models.read": model_catalog.trained_models,
        "models.manage": lambda a: model_catalog.manage(a, model_catalog.ModelChange(model_id=MISSING, op="activate")),
        "weights.upload": lambda a: model_catalog.upload_weights(a, "matrix.pth", b"not weights"),
        "predict": lambda a: predictions.predict_image(a, b"not an image"),
        "tune.submit": lambda a: tuning.launch(a, tuning.TuneRequest.model_validate(
            {"dataset": "hdf5", "hdf5_path": f"{MISSING}.hdf5", "model_name": "convnetj",
             "space": {"learning_rate": [0.001, 0.1]}})),
        "tune.read": lambda a: tuning.read_studies(a, MISSING),
        "tune.stop": lambda a: tuning.stop(a, MISSING),
        "tune.train_best": lambda a: tuning.train_best(a, MISSING),
        "jobs.read": lambda a: jobs.read_jobs(a, job_id=MISSING),
        "jobs.cancel": lambda a: jobs.cancel_job(a, MISSING),
    }


PAGE_CALLS = _page_calls()
# Asked by the pages without an action function of their own: the menu's gate, a rule inside the upload,
# the sign-out that ends the page's session (the API's is a route).
PAGE_RULES_ONLY = {"home", "images.replace", "sign_out"}


def test_every_action_but_sign_in_has_one_function_that_the_page_calls():
    assert set(PAGE_CALLS) | PAGE_RULES_ONLY | {"sign_in"} == set(rules.RULES)
    assert set(PAGE_CALLS) == set(rules.ACTIONS)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", sorted(PAGE_CALLS))
def test_the_page_door_answers_as_the_api_does(studio, action, role):
    """The function a page calls, with the actor a page builds, answers as the table (and so the API) says."""
    assert page_answer(lambda: PAGE_CALLS[action](studio.actor(role))) == expected(action, role)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", sorted(PAGE_RULES_ONLY))
def test_the_rules_a_page_asks_directly(studio, action, role):
    actor = studio.actor(role)
    assert page_answer(lambda: rules.check(action, actor.user, actor.config, actor.store)) == expected(action, role)


JOB_ACTIONS = sorted(name for name, rule in rules.RULES.items() if rule.jobs)


@pytest.fixture
def operator_at_quota(studio):
    store = open_store(studio.config.data_dir)
    ids = [f"matrix-{uuid.uuid4().hex}" for _ in range(studio.config.max_active_jobs_per_user)]
    for job_id in ids:
        store.create_job(job_id, "train", {}, "operator")
    yield
    for job_id in ids:
        store.update_job(job_id, status="finished")


@pytest.mark.parametrize("action", JOB_ACTIONS)
def test_over_quota_is_the_same_answer_at_both_doors(studio, operator_at_quota, action):
    actor = studio.actor("operator")
    for call in API_CALLS[action]:
        assert api_answer(studio, "operator", call) == OVER_QUOTA
    assert page_answer(lambda: PAGE_CALLS[action](actor)) == OVER_QUOTA
    # admin is never held to the quota; the other roles are refused by role first
    assert api_answer(studio, "admin", API_CALLS[action][0]) == ALLOWED


def test_sign_in_is_throttled_the_same_at_both_doors(studio):
    """The API's ``POST /auth`` and the UI's form count wrong passwords in one place."""
    client = studio.client()
    wrong = {"username": "annotator", "password": "not-the-password"}
    answers = [client.post("/auth", json=wrong).status_code for _ in range(studio.config.sign_in_free_failures + 1)]
    assert answers[:-1] == [401] * studio.config.sign_in_free_failures and answers[-1] == 429
    store = open_store(studio.config.data_dir)
    outcome = sign_in.attempt(studio.config, "annotator", "127.0.0.1",
                              lambda: store.check_password("annotator", "pw-annotator-matrix-42"))
    assert outcome.wait > 0 and outcome.user is None  # the page's form waits too, even with the right password
