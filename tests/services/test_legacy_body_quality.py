"""The legacy document's ``/train`` body, unchanged but for what points at the data, on data that other tools
made: scikit-learn's handwritten digits in an HDF5 file written the plain h5py way, and scikit-image's faces
and non-faces as class folders of ordinary JPEGs. It must reach what the data allows, and ``/predict`` must
agree on the held-out images.

The issue's bars: at least 95 % (digits) and 97 % (faces); measured where this was written: 98.7 % and 100 %
(the same across seeds 0-2 and 1 or 2 threads: see the README's training section)."""

from __future__ import annotations

import base64
import io

import h5py
import numpy as np
import pytest
from PIL import Image
from skimage.data import lfw_subset
from sklearn.datasets import load_digits

from tests.harness import post, unique

# The body: the legacy document's, with its learning rate 0.05, 20 epochs, batches of 32.
LEGACY = {"model_name": "convnetj", "dataset": "custom", "num_classes": 3, "batch_size": 32, "is_transform": 1,
          "num_workers": 2, "lr_decay": 1, "l2_reg": 0.0001, "hdf5_path": "dataset-512x512.hdf5",
          "trainset_dir": "TRAIN_data_224", "testset_dir": "TEST_data_224", "convert_grey": 0,
          "learning_rate": 0.05, "num_epochs": 20}


def as_png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def trained(stack, body: dict) -> dict:
    r = post(stack, "/api/v1/train", body)
    assert r.status_code == 202, r.text
    record = stack.wait_job(r.json()["job_id"], timeout=600)
    assert record["status"] == "finished", record["error"]
    return record


def agreement(stack, model_id: str, images: np.ndarray, labels: list[str]) -> float:
    answers = [post(stack, "/api/v1/predict", {"image": as_png(image), "model": model_id}, "client").json()["results"]
               for image in images]
    return 100 * np.mean([a == want for a, want in zip(answers, labels, strict=True)])


def test_digits_in_a_plain_h5py_file(stack):
    data = load_digits()
    images = (data.images * 255 / 16).round().astype(np.uint8)  # 8 x 8 grey, no channel axis
    name = unique("plain-digits")
    with h5py.File(stack.data_dir / "datasets" / f"{name}.h5", "w") as f:  # no class names, no attributes
        f["X_train"], f["y_train"] = images[:1400], data.target[:1400]
        f["X_test"], f["y_test"] = images[1400:], data.target[1400:]
    record = trained(stack, {**LEGACY, "dataset": "hdf5", "hdf5_path": f"{name}.h5", "num_classes": 10})
    assert record["result"]["best_accuracy"] >= 95.0, [h["test_accuracy"] for h in record["history"]]
    held_out = slice(1400, 1500)
    names = [str(t) for t in data.target[held_out]]
    assert agreement(stack, record["result"]["model_id"], images[held_out], names) >= 95.0


@pytest.fixture(scope="module")
def faces(stack):
    """150 training and 50 test images of faces and non-faces, as JPEG files in class folders."""
    pictures = (lfw_subset() * 255).round().astype(np.uint8)  # 100 faces, then 100 non-faces, 25 x 25
    kinds = ["face"] * 100 + ["non-face"] * 100
    order = np.random.default_rng(0).permutation(200)
    root = stack.data_dir / unique("faces")
    for split, picks in (("train", order[:150]), ("test", order[150:])):
        for i in picks:
            folder = root / split / kinds[i]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pictures[i]).save(folder / f"{i}.jpg", quality=85)
    return root, pictures[order[150:]], [kinds[i] for i in order[150:]]


def test_faces_and_non_faces_in_class_folders(stack, faces):
    root, test_images, test_kinds = faces
    body = {**LEGACY, "trainset_dir": f"{root.name}/train", "testset_dir": f"{root.name}/test", "num_classes": 2}
    record = trained(stack, body)
    assert record["result"]["best_accuracy"] >= 97.0, [h["test_accuracy"] for h in record["history"]]
    assert agreement(stack, record["result"]["model_id"], test_images, test_kinds) >= 97.0
