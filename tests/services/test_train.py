"""Training and inference over HTTP: the legacy API's /train and /predict, resume, export, roles.

Against the real studio (Redis, a forking RQ worker, gunicorn). Data is synthetic (drawn shapes in class
folders) for the fast tests and scikit-learn's real digits, written as an HDF5 file, for the slow ones.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time

import numpy as np
import pytest
import torch
from flask_jwt_extended import create_access_token

from engine.datasets import ArrayDataset
from engine.exceptions import InvalidInput
from engine.models import list_models
from engine.training import MAX_BATCH_SIZE, TrainConfig, fit
from services.api import create_app
from services.app import training
from services.jobs import runtime as jobs
from services.platform.config import Config
from services.storage.store import open_store
from tests import fake_jobs  # noqa: F401  (registers the test job kind in this process)
from tests.digits import digits_body, digits_test_images, ensure_digits_hdf5
from tests.harness import get, job_events_socket, post
from tests.shapes import SHAPES, data_url, png_bytes, shape_image, write_folder_dataset

# The legacy API's /train body, exactly as documented (only num_epochs is shortened, and sent as a string).
LEGACY_TRAIN = {"model_name": "convnetj", "dataset": "custom", "num_classes": 3, "batch_size": 16, "is_transform": 1,
              "num_workers": 2, "lr_decay": 1, "l2_reg": 0.0001, "hdf5_path": "dataset-512x512.hdf5",
              "trainset_dir": "TRAIN_data_224", "testset_dir": "TEST_data_224", "convert_grey": 0,
              "learning_rate": 0.01, "num_epochs": "2"}
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


# ---------------------------------------------------------------------------------------- helpers
def trained_rows(studio) -> dict[str, dict]:
    return {r["id"]: r for r in get(studio, "/api/v1/models/trained", "operator").json()["models"]}


@pytest.fixture(scope="module")
def folders(studio):
    write_folder_dataset(studio.data_dir)
    return studio.data_dir


def train_legacy_body(studio, body: dict) -> tuple:
    """The legacy API's body, trained for two epochs: (the 202 answer, the finished job record)."""
    write_folder_dataset(studio.data_dir)
    answer = post(studio, "/api/v1/train", body)
    assert answer.status_code == 202, answer.text
    return answer, studio.wait_job(answer.json()["job_id"], timeout=120)


@pytest.fixture(scope="module")
def legacy_run(studio, folders):
    """The legacy body, in-process: its loader workers would be processes, so it reads in the job's own."""
    return train_legacy_body(studio, {**LEGACY_TRAIN, "num_workers": 0})


@pytest.fixture(scope="module")
def legacy_run_over_http(stack):
    """The legacy body unchanged, through gunicorn to a forking worker that starts its two loader processes."""
    return train_legacy_body(stack, LEGACY_TRAIN)


# ------------------------------------------------------------------------------------- fast tests
def test_legacy_train_body_runs_a_job_with_history_and_registers_a_model(stack, legacy_run_over_http):
    studio = stack
    answer, record = legacy_run_over_http
    job_id = answer.json()["job_id"]
    assert answer.json() == {"jobs": job_id, "job_id": job_id, "status_code": "200"}
    assert record["status"] == "finished", record["error"]
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert all({"train_loss", "train_accuracy", "test_loss", "test_accuracy", "best_accuracy"} <= set(h)
               for h in record["history"])
    result = record["result"]
    matrix = np.array(result["evaluation"]["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 6 and result["class_names"] == list(SHAPES)
    assert (studio.data_dir / result["checkpoints"]["best"]).is_file()
    assert result["checkpoints"]["last"] == f"checkpoints/{job_id}/last.pt"
    row = trained_rows(studio)[result["model_id"]]
    assert row["job_id"] == job_id and row["model_name"] == "convnetj" and row["class_names"] == list(SHAPES)
    assert row["path"] == f"checkpoints/{job_id}/best.pt" and row["created_by"] == "operator"
    assert row["metrics"]["best_accuracy"] == result["best_accuracy"] and row["active"] is False
    # The legacy API's metrics view of the same job lists both epochs.
    seed = post(studio, f"/api/v1/jobs/{job_id}").json()
    assert len(seed["training_loss"]) == 2 and len(seed["testing_accuracy"]) == 2
    # /predict over HTTP with the legacy body and this model: the legacy keys (every role: in-process below).
    r = post(studio, "/api/v1/predict", {"image": data_url(shape_image("circle", 7)), "model": result["model_id"]},
             "client")
    assert r.status_code == 200 and set(r.json()) == {"results", "confidence", "probabilities", "model",
                                                      "status_code"}, r.text


@pytest.mark.parametrize("role", ["operator", "annotator", "client"])
def test_predict_with_the_legacy_body_answers_the_legacy_keys(studio, legacy_run, role):
    model_id = legacy_run[1]["result"]["model_id"]
    # The legacy API's body names no model: the active one answers. Other modules train models in this studio too,
    # so this run's model is made the active one, as an operator would.
    assert post(studio, f"/api/v1/models/{model_id}/activate").status_code == 200
    r = post(studio, "/api/v1/predict", {"image": data_url(shape_image("circle", 7))}, role)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model_id
    assert set(body) == {"results", "confidence", "probabilities", "model", "status_code"}
    assert body["results"] in SHAPES and 0 <= body["confidence"] <= 100
    assert set(body["probabilities"]) == set(SHAPES) and sum(body["probabilities"].values()) == pytest.approx(1)
    assert body["confidence"] == pytest.approx(100 * body["probabilities"][body["results"]])
    chosen = post(studio, "/api/v1/predict", {"image": data_url(shape_image("square", 8)), "model": model_id}, role)
    assert chosen.json()["model"] == model_id
    plain = base64.b64encode(png_bytes(shape_image("square", 8))).decode()  # base64 without a data URL
    assert post(studio, "/api/v1/predict", {"image": plain, "model": model_id}, role).json() == chosen.json()


@pytest.mark.parametrize("body,status,field", [
    ({"image": "bm90IGFuIGltYWdl"}, 400, "image"),
    ({"image": ""}, 400, "image"),
    ({}, 400, "image"),
    ({"image": "AAAA", "model": "no-such-model"}, 404, "model"),
])
def test_predict_refuses_bad_input_naming_the_field(studio, legacy_run, body, status, field):
    r = post(studio, "/api/v1/predict", body, "client")
    assert r.status_code == status and r.json()["field"] == field, r.text


def test_predict_without_any_trained_model_is_a_409_that_says_what_to_do(tmp_path):
    app = create_app(Config(data_dir=tmp_path))
    store = app.extensions["studio"].store
    store.create_user("someone", "a-long-password", "client")
    with app.app_context():  # a token carries its account's version, as POST /auth signs it
        token = create_access_token("someone", additional_claims={"tv": store.get_user("someone").token_version})
    r = app.test_client().post("/api/v1/predict", json={"image": data_url(shape_image("circle", 1))},
                               headers={"Authorization": f"JWT {token}"})
    assert r.status_code == 409 and r.json["field"] == "model" and "POST /api/v1/train" in r.json["message"]


@pytest.mark.parametrize("change,field,words", [
    ({"model_name": "convnetz"}, "model_name", ["unknown model 'convnetz'", "convnetj", "resnet18", "capsnet"]),
    ({"dataset": "imagenet"}, "dataset", ["custom", "hdf5", "newdata"]),
    ({"trainset_dir": "../TRAIN_data_224"}, "trainset_dir", [".."]),
    ({"trainset_dir": "TRAIN_data_224/../../etc"}, "trainset_dir", [".."]),
    ({"testset_dir": "/etc"}, "testset_dir", ["absolute"]),
    ({"testset_dir": "TEST_data_224\x00x"}, "testset_dir", ["NUL"]),
    ({"testset_dir": "NO_SUCH_DIR"}, "testset_dir", ["NO_SUCH_DIR"]),
    ({"num_classes": 5}, "num_classes", ["5", "3 classes", "circle"]),
    ({"dataset": "hdf5", "hdf5_path": "missing.hdf5"}, "hdf5_path", ["missing.hdf5"]),
    ({"dataset": "hdf5", "hdf5_path": "../catalog.sqlite3"}, "hdf5_path", [".."]),
    ({"num_epochs": "many"}, "num_epochs", []),
    ({"learning_rate": "-1"}, "learning_rate", []),
    ({"image_size": 8}, "image_size", ["16"]),
    ({"multi_label": 1}, "multi_label", ["single-label"]),
    ({"optimizer": "rmsprop"}, "optimizer", ["sgd", "adam"]),
    ({"pretrained": 1}, "pretrained", ["convnetj"]),
    ({"learning_rat": 0.1}, "learning_rat", []),
])
def test_bad_train_bodies_are_400_naming_the_field(studio, folders, change, field, words):
    r = post(studio, "/api/v1/train", {**LEGACY_TRAIN, **change})
    assert r.status_code == 400 and r.json()["field"] == field, r.text
    assert all(w in r.json()["message"] for w in words), r.json()["message"]
    assert str(studio.data_dir) not in r.json()["message"]  # server paths stay on the server


def test_a_symlink_leading_outside_data_dir_is_refused(studio, folders, tmp_path):
    (tmp_path / "elsewhere" / "a").mkdir(parents=True)
    link = studio.data_dir / "escape_link"
    if not link.exists():
        link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    r = post(studio, "/api/v1/train", {**LEGACY_TRAIN, "trainset_dir": "escape_link"})
    assert r.status_code == 400 and r.json()["field"] == "trainset_dir" and "outside" in r.json()["message"]


def test_links_fifos_and_devices_named_like_images_are_not_read(studio, tmp_path):
    """A FIFO would hold the worker forever, a link to /dev/zero would be read without end, a link to a file or a
    folder elsewhere would be read from outside DATA_DIR: the job reads regular files in real folders only."""
    import os

    write_folder_dataset(studio.data_dir, train="ODD_train", test="ODD_test")
    circles = studio.data_dir / "ODD_train" / "circle"
    os.mkfifo(circles / "fifo.png")
    (circles / "zeros.png").symlink_to("/dev/zero")
    (tmp_path / "elsewhere.png").write_bytes(png_bytes(shape_image("square", 5)))
    (circles / "elsewhere.png").symlink_to(tmp_path / "elsewhere.png")
    (tmp_path / "extra").mkdir()
    (studio.data_dir / "ODD_train" / "extra").symlink_to(tmp_path / "extra", target_is_directory=True)
    body = {**LEGACY_TRAIN, "trainset_dir": "ODD_train", "testset_dir": "ODD_test", "num_workers": 0,
            "num_epochs": "1"}
    r = post(studio, "/api/v1/train", body)
    assert r.status_code == 202, r.text  # three classes: the linked folder is none
    record = studio.wait_job(r.json()["job_id"])
    assert record["status"] == "finished", record["error"]
    assert record["history"][0]["train_samples_per_s"] > 0
    report = record["result"]["evaluation"]
    assert sum(row["support"] for row in report["per_class"].values()) == 6  # the two test images per class


def test_roles_on_the_training_routes(studio, folders):
    for role in ("annotator", "client"):
        assert post(studio, "/api/v1/train", LEGACY_TRAIN, role).status_code == 403
    assert get(studio, "/api/v1/models/trained", "annotator").status_code == 403
    assert studio.http.post("/api/v1/train", json=LEGACY_TRAIN).status_code == 401
    assert studio.http.post("/api/v1/predict", json={"image": "x"}).status_code == 401


def test_the_model_zoo_needs_a_token_and_is_read_from_the_registry(studio):
    assert studio.http.get("/api/v1/models", timeout=10).status_code == 401
    body = get(studio, "/api/v1/models", "client").json()
    assert [m["name"] for m in body["models"]] == [m.name for m in list_models()]
    j = next(m for m in body["models"] if m["name"] == "convnetj")
    assert j["default_input_size"] == 128 and j["description"]


def test_resume_extends_a_finished_run_continuing_its_history(studio, legacy_run):
    job_id = legacy_run[1]["id"]
    done = post(studio, f"/api/v1/jobs/{job_id}/resume")
    assert done.status_code == 409 and done.json()["field"] == "num_epochs"  # every epoch already ran
    r = post(studio, f"/api/v1/jobs/{job_id}/resume?num_epochs=3")
    assert r.status_code == 202, r.text
    record = studio.wait_job(r.json()["job_id"], timeout=120)
    assert record["status"] == "finished", record["error"]
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3]
    assert record["history"][:2] == legacy_run[1]["history"]
    assert record["params"]["resumed_from"] == job_id and record["params"]["num_epochs"] == 3
    assert trained_rows(studio)[record["result"]["model_id"]]["metrics"]["epochs_completed"] == 3


def test_resume_refuses_unknown_and_non_training_jobs(studio):
    assert post(studio, "/api/v1/jobs/nope/resume").status_code == 404
    other = jobs.submit(studio.config, open_store(studio.data_dir), "test-count", {"n": 1, "delay": 0}, "operator")
    studio.wait_job(other)
    assert post(studio, f"/api/v1/jobs/{other}/resume").status_code == 404
    assert post(studio, "/api/v1/jobs/nope/resume", role="client").status_code == 403


def test_export_downloads_loadable_torchscript_and_onnx_once_per_checkpoint(studio, legacy_run, tmp_path):
    import onnx

    model_id = legacy_run[1]["result"]["model_id"]
    r = get(studio, f"/api/v1/models/{model_id}/export?format=torchscript")
    assert r.status_code == 200 and "attachment" in r.headers["Content-Disposition"], r.text
    (tmp_path / "m.pt").write_bytes(r.content)
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    assert scripted(torch.zeros(1, 3, 128, 128)).shape == (1, 3)
    assert json.loads(extra["metadata.json"])["class_names"] == list(SHAPES)
    r = get(studio, f"/api/v1/models/{model_id}/export?format=onnx")
    assert r.status_code == 200 and r.headers["Content-Disposition"].endswith(".onnx")
    proto = onnx.load_from_string(r.content)
    onnx.checker.check_model(proto)
    assert json.loads({p.key: p.value for p in proto.metadata_props}["metadata"])["class_names"] == list(SHAPES)
    exports = sorted(p.name for p in (studio.data_dir / "exports").glob(f"{model_id}-*"))
    assert get(studio, f"/api/v1/models/{model_id}/export?format=onnx").content == r.content
    assert sorted(p.name for p in (studio.data_dir / "exports").glob(f"{model_id}-*")) == exports  # cached
    assert get(studio, f"/api/v1/models/{model_id}/export?format=pickle").json()["field"] == "format"
    assert get(studio, "/api/v1/models/nope/export").status_code == 404


def test_activate_chooses_the_default_model_and_delete_removes_it(studio, legacy_run, tmp_path):
    model_id = legacy_run[1]["result"]["model_id"]
    extra = _register_copy(studio, model_id)
    assert post(studio, f"/api/v1/models/{extra}/activate").json()["active"] is True
    image = {"image": data_url(shape_image("triangle", 3))}
    assert post(studio, "/api/v1/predict", image, "client").json()["model"] == extra
    assert post(studio, f"/api/v1/models/{model_id}/activate").json()["active"] is True
    assert trained_rows(studio)[extra]["active"] is False
    folder = studio.data_dir / "checkpoints" / trained_rows(studio)[extra]["job_id"]
    r = studio.http.delete(f"/api/v1/models/{extra}", headers=studio.headers("operator"), timeout=10)
    assert r.status_code == 200 and not folder.exists() and extra not in trained_rows(studio)
    again = studio.http.delete(f"/api/v1/models/{extra}", headers=studio.headers("operator"), timeout=10)
    assert again.status_code == 404
    assert post(studio, "/api/v1/models/nope/activate").status_code == 404


def _register_copy(studio, model_id: str) -> str:
    """A second catalog model: a copy of ``model_id``'s checkpoint under a job id of its own."""
    row = trained_rows(studio)[model_id]
    job_id = f"copy-{time.time_ns()}"
    target = studio.data_dir / "checkpoints" / job_id
    target.mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        (target / name).write_bytes((studio.data_dir / row["path"]).with_name(name).read_bytes())
    return training.register_model(studio.config, open_store(studio.data_dir), job_id, "operator")["id"]


def test_multi_label_models_answer_predict_tags_and_scores(studio, tmp_path):
    """A multi-label run (trained here, registered as the job would) answers the legacy API's multi-label keys."""
    config = TrainConfig("convnetb", num_classes=3, epochs=1, batch_size=8, image_size=16, multi_label=True)
    rng = np.random.default_rng(0)
    images, targets = rng.integers(0, 255, (16, 16, 16, 3), dtype=np.uint8), rng.integers(0, 2, (16, 3))
    data = ArrayDataset(images, targets.astype(np.float32), config.preprocessing())
    job_id = f"multi-{time.time_ns()}"
    fit(config, data, data, ["sky", "sea", "sand"], studio.data_dir / "checkpoints" / job_id)
    row = training.register_model(studio.config, open_store(studio.data_dir), job_id, "operator")
    try:
        r = post(studio, "/api/v1/predict", {"image": data_url(images[0]), "model": row["id"]}, "annotator")
        assert set(r.json()) == {"predict_tags", "scores", "model", "status_code"}, r.text
        labels = {"sky", "sea", "sand"}
        assert set(r.json()["scores"]) == labels and set(r.json()["predict_tags"]) <= labels
        assert trained_rows(studio)[row["id"]]["multi_label"] is True
    finally:  # other features' tests must not start receiving tag suggestions from this model
        training.delete_model(studio.config, open_store(studio.data_dir), row["id"])


def test_newdata_requests_are_multi_label_over_the_label_set(tmp_path):
    """The annotation feature's folder, checked in-process on a DATA_DIR of its own (no shared label set)."""
    from engine import labels as labelsets

    config = Config(data_dir=tmp_path)
    newdata = config.path("newdata")
    label_set = labelsets.write_label_set(newdata, ["sky", "sea", "sand"])
    for i, tags in enumerate((["sky"], ["sea", "sand"], ["sky", "sea"], ["sand"], ["sea"])):
        labelsets.save_image_atomic(newdata, f"img{i}", png_bytes(shape_image("circle", i)), "png")
        labelsets.write_annotation(newdata, f"img{i}", tags, label_set)
    run = training.prepare(config, training.TrainRequest(model_name="resnet18", dataset="newdata", num_epochs=1))
    assert run.config.multi_label and run.config.num_classes == 3 and run.data.class_names == label_set
    for change, field in (({"num_classes": 2}, "num_classes"), ({"multi_label": False}, "multi_label"),
                          ({"model_name": "capsnet"}, "multi_label")):
        with pytest.raises(InvalidInput) as err:
            training.prepare(config, training.TrainRequest(**{"model_name": "resnet18", "dataset": "newdata",
                                                               **change}))
        assert err.value.field == field and str(tmp_path) not in str(err.value)


# ------------------------------------------------------------------------------------- slow tests
@pytest.fixture(scope="module")
def digits(studio):
    return ensure_digits_hdf5(studio.data_dir)


@pytest.fixture(scope="module")
def digits_over_http(stack):
    return ensure_digits_hdf5(stack.data_dir)


@pytest.fixture(scope="module")
def digits_run(stack, digits_over_http):
    """A real training job on the digits, watched by a Socket.IO client: (job record, its events)."""
    events: list = []
    client = job_events_socket(stack, events)
    try:
        r = post(stack, "/api/v1/train", digits_body())
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        assert client.call("subscribe", {"job_id": job_id}, namespace="/jobs", timeout=10)["ok"] is True
        record = stack.wait_job(job_id, timeout=90)
        deadline = time.monotonic() + 10
        while not any(n == "finished" for n, _ in events) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        client.disconnect()
    return record, [d for _, d in events if d["job_id"] == job_id]


def test_real_digits_reach_high_accuracy_with_live_epoch_events(stack, digits_run):
    record, events = digits_run
    assert record["status"] == "finished", record["error"]
    assert record["result"]["best_accuracy"] >= 90.0, record["history"]
    epochs = [d["metrics"]["epoch"] for d in events if "metrics" in d]
    # Subscribed just after the 202, so on a busy machine the first epochs may come before it; from then on
    # every epoch arrives, in order, none missing.
    assert epochs and epochs == list(range(epochs[0], 6)), epochs
    assert all(0 <= d["metrics"]["test_accuracy"] <= 100 for d in events if "metrics" in d)
    # /predict on real test digits agrees with their labels about as often as the test accuracy says.
    images, labels = digits_test_images()
    model_id = record["result"]["model_id"]
    answers = [post(stack, "/api/v1/predict", {"image": data_url(img), "model": model_id}, "client").json()["results"]
               for img in images[:40]]
    assert np.mean([a == str(y) for a, y in zip(answers, labels[:40], strict=True)]) >= 0.85


def test_cancel_then_resume_continues_from_the_last_completed_epoch(stack, digits_over_http):
    r = post(stack, "/api/v1/train", digits_body(num_epochs="8"))
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 60
    while len(stack.wait_job(job_id, statuses=("started",))["history"]) < 2:
        assert time.monotonic() < deadline, "two epochs did not complete in time"
        time.sleep(0.2)
    assert post(stack, f"/api/v1/jobs/{job_id}/resume").status_code == 409  # still running
    assert post(stack, f"/api/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    stopped = stack.wait_job(job_id)
    done = [h["epoch"] for h in stopped["history"]]
    assert stopped["status"] == "cancelled" and done == list(range(1, len(done) + 1)) and len(done) < 8
    cancelled_models = [m for m in trained_rows(stack).values() if m["job_id"] == job_id]
    assert len(cancelled_models) == 1, "a cancelled run with a best checkpoint is catalogued"
    r = post(stack, f"/api/v1/jobs/{job_id}/resume")
    assert r.status_code == 202, r.text
    resumed = stack.wait_job(r.json()["job_id"], timeout=90)
    assert resumed["status"] == "finished", resumed["error"]
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, 9))  # continuous, nothing repeated
    assert resumed["history"][: len(done)] == stopped["history"]


def test_onnx_export_runs_and_matches_the_model(stack, digits_run):
    import onnxruntime

    from engine.inference import Predictor

    model_id = digits_run[0]["result"]["model_id"]
    r = get(stack, f"/api/v1/models/{model_id}/export?format=onnx")
    assert r.status_code == 200
    predictor = Predictor(stack.data_dir / trained_rows(stack)[model_id]["path"])
    batch = predictor.to_tensor([digits_test_images()[0][0]])
    session = onnxruntime.InferenceSession(r.content, providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"input": batch.numpy()})
    with torch.inference_mode():
        expected = predictor.model(batch).numpy()
    np.testing.assert_allclose(onnx_logits, expected, rtol=1e-3, atol=1e-3)


def test_every_renamed_request_field_names_a_train_config_field_and_engine_errors_use_the_request_name():
    renamed = {name: info.serialization_alias for name, info in training.TrainRequest.model_fields.items()
               if info.serialization_alias}
    assert renamed["l2_reg"] == "weight_decay" and renamed["num_epochs"] == "epochs"
    assert set(renamed.values()) <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(training.request_name(engine) == name for name, engine in renamed.items())
    # The request's bound is the engine's: what the API accepts, the engine never refuses.
    assert training.TrainRequest.model_fields["batch_size"].metadata[-1].le == MAX_BATCH_SIZE
    with pytest.raises(InvalidInput) as err:
        TrainConfig(model_name="lenet5", num_classes=2, batch_size=MAX_BATCH_SIZE + 1)
    assert err.value.field == "batch_size"


def test_an_auto_learning_rate_is_found_before_the_run_and_its_curve_kept(studio, digits):
    r = post(studio, "/api/v1/train", digits_body(learning_rate="auto", num_epochs="3", lr_decay="1"))
    assert r.status_code == 202, r.text
    record = studio.wait_job(r.json()["job_id"], timeout=120)
    assert record["status"] == "finished", record["error"]
    found = record["history"][0]["lr_finder"]
    assert found == record["result"]["lr_finder"] and "lr_finder" not in record["history"][1]
    assert len(found["lrs"]) == len(found["losses"]) == found["steps"] > 10
    assert record["history"][0]["lr"] == pytest.approx(found["chosen"])  # the run trained at the chosen rate
    assert 1e-4 <= found["chosen"] <= 0.5, found
    assert record["result"]["best_accuracy"] >= 85.0, record["history"]  # 96-98 where this was written
