"""Transfer learning over HTTP: the legacy API's /train body on a pretrained backbone, then /predict, offline.

Against the real stack (Redis, a forking RQ worker, gunicorn); the request's checks in-process. The photos are
real: scikit-image's LFW subset (faces and non-faces), written as JPEG class folders the way a camera or a file
manager would.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
import torch
import torchvision
from PIL import Image
from skimage import data

from engine.models.build import create_model

LEGACY_BODY = {"model_name": "efficientnet-lite0", "dataset": "custom", "num_classes": 2, "batch_size": 16,
             "is_transform": 0, "num_workers": 2, "lr_decay": 0, "l2_reg": 0.0001,
             "hdf5_path": "dataset-512x512.hdf5", "trainset_dir": "FACES_train", "testset_dir": "FACES_test",
             "convert_grey": 0, "learning_rate": 0.01, "num_epochs": "15", "image_size": 96}
CLASSES = ("face", "nonface")


def jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def leave_no_models(stack):
    """The stack is shared: models trained here must not become other modules' default for /predict."""
    before = set(trained_ids(stack))
    yield
    for model_id in set(trained_ids(stack)) - before:
        requests.delete(f"{stack.url}/api/v1/models/{model_id}", headers=stack.headers("operator"), timeout=30)


def trained_ids(stack) -> list[str]:
    r = requests.get(f"{stack.url}/api/v1/models/trained", headers=stack.headers("operator"), timeout=30)
    return [row["id"] for row in r.json()["models"]]


@pytest.fixture(scope="module")
def photos(stack, leave_no_models):
    return write_photos(stack)


@pytest.fixture(scope="module")
def local_photos(studio):
    """The same photos in the in-process studio, for the checks a request meets before its job is queued."""
    return write_photos(studio)


def write_photos(stack):
    """10 training and 10 test photos per class under DATA_DIR; returns the held-out (image, class) pairs."""
    images = (data.lfw_subset() * 255).round().astype(np.uint8)
    held_out = []
    for c, name in enumerate(CLASSES):
        for i in range(20):
            img = images[100 * c + i * 5]
            split = "FACES_train" if i % 2 == 0 else "FACES_test"
            folder = stack.data_dir / split / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.jpg").write_bytes(jpeg(img))
            if split == "FACES_test":
                held_out.append((img, name))
    return held_out


def post(stack, path, body, role="operator"):
    return stack.http.post(path, json=body, headers=stack.headers(role), timeout=60)


def predict(stack, img, model_id):
    body = {"image": "data:image/jpeg;base64," + base64.b64encode(jpeg(img)).decode(), "model": model_id}
    r = post(stack, "/api/v1/predict", body, "client")
    assert r.status_code == 200, r.text
    return r.json()


def test_legacy_body_on_efficientnet_trains_head_only_offline_and_predicts(stack, photos):
    answer = post(stack, "/api/v1/train", LEGACY_BODY)
    assert answer.status_code == 202, answer.text
    record = stack.wait_job(answer.json()["job_id"], timeout=300)
    assert record["status"] == "finished", record["error"]
    result = record["result"]
    assert result["best_accuracy"] >= 80, result
    checkpoint = torch.load(stack.data_dir / result["checkpoints"]["best"], weights_only=True)
    assert checkpoint["config"]["head_only"] and checkpoint["config"]["pretrained"]
    bundled = create_model("efficientnet-lite0", 1000, pretrained=True).state_dict()
    assert torch.equal(checkpoint["state_dict"]["_conv_head.weight"], bundled["_conv_head.weight"])
    assert list((stack.data_dir / "features").glob("*.h5")), "features are cached under DATA_DIR"
    answers = [predict(stack, img, result["model_id"]) for img, _ in photos]
    assert all(a["model"] == result["model_id"] for a in answers)
    right = np.mean([a["results"] == name for a, (_, name) in zip(answers, photos, strict=True)])
    assert right >= 0.8, answers[:2]


def test_pretrained_one_on_resnet18_uses_the_weights_cache_under_data_dir(stack, photos):
    torch.manual_seed(0)
    cache = stack.data_dir / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, cache / "resnet18-f37072fd.pth")  # torchvision's own file name: no download
    body = {**LEGACY_BODY, "model_name": "resnet18", "pretrained": 1, "num_epochs": "2", "image_size": 64}
    answer = post(stack, "/api/v1/train", body)
    assert answer.status_code == 202, answer.text
    record = stack.wait_job(answer.json()["job_id"], timeout=300)
    assert record["status"] == "finished", record["error"]
    checkpoint = torch.load(stack.data_dir / record["result"]["checkpoints"]["last"], weights_only=True)
    assert checkpoint["config"]["head_only"]
    assert torch.equal(checkpoint["state_dict"]["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])


def test_a_weights_file_that_does_not_fit_is_refused_with_its_keys(studio, local_photos):
    folder = studio.data_dir / "weights"
    folder.mkdir(exist_ok=True)
    torch.save(create_model("convnetj", 2).state_dict(), folder / "convnetj.pth")
    r = post(studio, "/api/v1/train", {**LEGACY_BODY, "model_name": "resnet18", "weights": "weights/convnetj.pth"})
    assert r.status_code == 400 and r.json()["field"] == "weights", r.text
    assert "missing" in r.json()["message"] and "conv1.weight" in r.json()["message"]


@pytest.mark.parametrize(("extra", "field"), [
    ({"transfer_mode": "scratch", "pretrained": 1}, "transfer_mode"),
    ({"transfer_mode": "head-only", "lrp": 0.01}, "lrp"),
    ({"transfer_mode": "sideways"}, "transfer_mode"),
    ({"model_name": "convnetj", "transfer_mode": "head-only"}, "transfer_mode"),
    ({"weights": "../outside.pth"}, "weights"),
    ({"weights": "weights/none.pth"}, "weights"),
    ({"weights": "notes.txt"}, "weights"),
])
def test_transfer_fields_are_checked_naming_the_field(studio, local_photos, extra, field):
    r = post(studio, "/api/v1/train", {**LEGACY_BODY, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field, r.text


def test_an_uploaded_weights_file_is_kept_under_data_dir_and_checked(tmp_path):
    from engine.exceptions import InvalidInput
    from services.app.model_catalog import save_weights_upload
    from services.platform.config import Config

    config = Config(data_dir=tmp_path)
    buffer = io.BytesIO()
    torch.save(create_model("lenet5", 3).state_dict(), buffer)
    # Browsers on Windows may send the client-side path: only the file's own name is kept.
    kept = save_weights_upload(config, "C:\\Users\\me\\lenet.pth", buffer.getvalue())
    assert kept == "weights/lenet.pth" and (tmp_path / kept).is_file()
    for name, payload, words in [("notes.txt", b"hello", "not a weights file"),
                                 ("evil.pth", b"\x80\x04cos\nsystem\n.", "not a loadable state_dict")]:
        with pytest.raises(InvalidInput) as err:
            save_weights_upload(config, name, payload)
        assert err.value.field == "weights" and words in str(err.value)
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["lenet.pth"]


def test_head_only_tune_trials_share_one_computation_of_the_features(stack, photos):
    """A study over the frozen bundled backbone computes the photos' features once; each trial trains a head."""
    features = stack.data_dir / "features"
    before = set(features.glob("*.h5"))
    body = {"model_name": "efficientnet-lite0", "dataset": "custom", "trainset_dir": "FACES_train",
            "testset_dir": "FACES_test", "num_classes": 2, "image_size": 64, "transfer_mode": "head-only",
            "batch_size": 16, "num_epochs": 2, "seed": 0, "n_trials": 2, "epochs_per_trial": 3, "parallel": 1,
            "space": {"learning_rate": [0.001, 0.05]}}
    answer = post(stack, "/api/v1/tune", body)
    assert answer.status_code == 202, answer.text
    record = stack.wait_job(answer.json()["job_id"], timeout=300)
    assert record["status"] == "finished", record["error"]
    trials = record["result"]["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete"], trials
    assert all(t["value"] >= 80 for t in trials), trials  # faces vs non-faces: the backbone's features suffice
    new = set(features.glob("*.h5")) - before
    assert len(new) == 2, new  # one backbone, one preprocessing: the training and the test photos' features
    second = requests.get(f"{stack.url}/api/v1/jobs/{trials[1]['job_id']}", headers=stack.headers("operator"),
                          timeout=30).json()
    # Written while the first trial ran and never again: the second trained its head on the cached copy.
    assert all(path.stat().st_mtime < second["started_at"] for path in new)
