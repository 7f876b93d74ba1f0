"""POST /api/v1/train on HDF5 files written by hand with h5py, as a user brings them from elsewhere.

Against the real studio (Redis, a forking RQ worker, gunicorn): a file with a list attribute of class
names and float pixels in [0, 1] (a 500, then a failed job, before) trains; malformed files answer 400
naming ``hdf5_path`` before any job is queued.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.harness import get, post

NAMES = ["zero", "one", "two", "three"]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    keep = data.target < len(NAMES)
    return (data.images[keep] / 16).astype(np.float32), data.target[keep]  # floats in [0, 1]


def _write(path, names=NAMES, labels=lambda y: y, images=lambda x: x) -> str:
    x, y = _digits()
    with h5py.File(path, "w") as f:
        f["X_train"], f["y_train"] = images(x[:400]), labels(y[:400])
        f["X_val"], f["y_val"] = images(x[400:600]), labels(y[400:600])
        if names is not None:
            f.attrs["class_names"] = names  # a list: h5py stores an array attribute
    return path.name


def datasets_of(studio):
    folder = studio.data_dir / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def datasets(studio):
    return datasets_of(studio)


def _body(hdf5_path: str, **change) -> dict:
    return {"model_name": "convnetb", "dataset": "hdf5", "hdf5_path": hdf5_path, "batch_size": "32",
            "learning_rate": "0.05", "num_epochs": "1", "image_size": "16", "convert_grey": "1", "seed": "1",
            **change}


def test_list_attribute_file_with_float_pixels_trains(door):
    studio = door
    name = _write(datasets_of(studio) / "by-hand-floats.h5")
    r = post(studio, "/api/v1/train", _body(name, num_classes="4"))
    assert r.status_code == 202, r.text
    record = studio.wait_job(r.json()["job_id"], timeout=120)
    assert record["status"] == "finished", record["error"]
    assert record["result"]["class_names"] == NAMES
    assert record["result"]["best_accuracy"] > 40  # 4 classes: well above chance after one epoch
    model = {m["id"]: m for m in get(studio, "/api/v1/models/trained", "client").json()["models"]}
    assert model[record["result"]["model_id"]]["class_names"] == NAMES


@pytest.mark.parametrize(("name", "write", "words"), [
    ("beyond-names.h5", lambda p: _write(p, names=NAMES[:3]), ["label 3 has no class name", "Add the missing"]),
    ("normalised.h5", lambda p: _write(p, images=lambda x: (x - 0.5) / 0.25), ["[0, 1] or [0, 255]"]),
    ("nan-labels.h5", lambda p: _write(p, labels=lambda y: np.where(y == 2, np.nan, y)), ["NaN"]),
    ("one-class.h5", lambda p: _write(p, names=None, labels=np.zeros_like), ["1 class", "two classes"]),
    ("not-hdf5.h5", lambda p: p.write_bytes(b"PK\x03\x04 a zip, renamed"), ["not an HDF5 file"]),
])
def test_bad_hdf5_files_answer_400_naming_hdf5_path(studio, datasets, name, write, words):
    path = datasets / name
    write(path)
    r = post(studio, "/api/v1/train", _body(name))
    assert r.status_code == 400 and r.json()["field"] == "hdf5_path", r.text
    assert all(w in r.json()["message"] for w in words), r.json()["message"]
    assert str(studio.data_dir) not in r.json()["message"]


def test_labels_0_1_7_without_names_are_three_classes(studio, datasets):
    """The class count a client must send is the count of labels present, not the largest label + 1."""
    path = datasets / "labels-0-1-7.h5"
    _write(path, names=None, labels=lambda y: np.array([0, 1, 1, 7])[y])
    r = post(studio, "/api/v1/train", _body(path.name, num_classes="8"))
    assert r.status_code == 400 and r.json()["field"] == "num_classes", r.text
    assert "3 classes: 0, 1, 7" in r.json()["message"]
