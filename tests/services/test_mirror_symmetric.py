"""Whether a dataset's classes look the same mirrored is the dataset's property, said by the user (on import, on
the Datasets page, or ``PATCH /api/v1/datasets/<name>``); a run may flip images (``augment`` "shift+flip") only
on a dataset marked so, at every door that launches runs."""

from __future__ import annotations

import time

import pytest

from services.storage.rows import Dataset
from tests.digits import write_digits_hdf5
from tests.harness import LocalStudio

BODY = {"model_name": "convnetb", "dataset": "hdf5", "hdf5_path": "digits.hdf5", "num_classes": 10,
        "batch_size": 32, "num_epochs": 2, "image_size": 16, "augment": "shift+flip"}


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    studio = LocalStudio.in_own_folder(tmp_path_factory, "mirror")
    write_digits_hdf5(studio.data_dir / "datasets" / "digits.hdf5")
    write_digits_hdf5(studio.data_dir / "datasets" / "loose.hdf5")  # in the folder, not in the catalog
    studio.actor("admin").store.add_dataset(Dataset(
        id="digits", path="datasets/digits.hdf5", created_at=time.time(), class_names=[str(d) for d in range(10)],
        origin="uploaded", created_by="operator"))
    return studio


def patch(studio, name: str, body, role: str = "operator"):
    return studio.client().patch(f"/api/v1/datasets/{name}", json=body, headers=studio.headers(role))


def train(studio, **change):
    return studio.client().post("/api/v1/train", json={**BODY, **change}, headers=studio.headers("operator"))


def test_a_new_dataset_is_not_mirror_symmetric_and_flipping_it_is_refused_naming_augment(studio):
    shown = studio.client().get("/api/v1/datasets/digits", headers=studio.headers("operator")).json
    assert shown["mirror_symmetric"] is False
    r = train(studio)
    assert r.status_code == 400 and r.json["field"] == "augment", r.json
    assert "not marked mirror-symmetric" in r.json["message"] and "Datasets page" in r.json["message"]
    assert train(studio, augment="shift").status_code == 202  # shifting never changes what a digit is


def test_marked_mirror_symmetric_its_runs_may_flip_and_unmarked_again_they_may_not(studio):
    r = patch(studio, "digits", {"mirror_symmetric": True})
    assert r.status_code == 200 and r.json["mirror_symmetric"] is True, r.json
    assert train(studio).status_code == 202
    assert patch(studio, "digits", {"mirror_symmetric": False}).json["mirror_symmetric"] is False
    assert train(studio).json["field"] == "augment"


def test_a_file_outside_the_catalog_cannot_be_flipped(studio):
    r = train(studio, hdf5_path="loose.hdf5")
    assert r.status_code == 400 and r.json["field"] == "augment" and "catalog dataset" in r.json["message"]


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"mirror_symmetric": "maybe"}, 400, "mirror_symmetric"),
    ({}, 400, "mirror_symmetric"),
    ({"mirror_symmetric": True, "name": "other"}, 400, "name"),
])
def test_bad_changes_are_refused_naming_the_field(studio, body, status, field):
    r = patch(studio, "digits", body)
    assert r.status_code == status and r.json["field"] == field, r.json


def test_an_unknown_dataset_is_404_and_an_annotator_may_not_change_one(studio):
    assert patch(studio, "nothing", {"mirror_symmetric": True}).status_code == 404
    assert patch(studio, "digits", {"mirror_symmetric": True}, role="annotator").status_code == 403


def test_a_study_that_flips_is_refused_at_launch_too(studio):
    patch(studio, "digits", {"mirror_symmetric": False})
    body = {**BODY, "space": {"learning_rate": [0.01, 0.1]}, "n_trials": 2, "epochs_per_trial": 1}
    r = studio.client().post("/api/v1/tune", json=body, headers=studio.headers("operator"))
    assert r.status_code == 400 and r.json["field"] == "augment", r.json
