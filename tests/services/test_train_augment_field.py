"""``is_transform`` keeps the legacy API's meaning (preprocessing, which always happens); augmentation is the
``augment`` field, named policies, off unless asked for, and only ``shift+flip`` ever mirrors an image."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.app.train_request import TrainRequest, to_train_config

LEGACY = {"model_name": "convnetj", "dataset": "hdf5", "hdf5_path": "digits.hdf5", "num_classes": 10,
          "batch_size": 32, "is_transform": 1, "lr_decay": 1, "learning_rate": 0.05, "num_epochs": 20}


def preprocessing(body: dict) -> dict:
    return to_train_config(TrainRequest.model_validate(body), 10, False).preprocessing()


def test_the_legacy_body_with_is_transform_trains_without_augmentation():
    assert preprocessing(LEGACY)["augment"] is None
    assert preprocessing({**LEGACY, "is_transform": 0}) == preprocessing(LEGACY)


@pytest.mark.parametrize(("policy", "spec"), [
    ("none", None), ("shift", {"hflip": 0.0, "max_shift": 0.1}), ("shift+flip", {"hflip": 0.5, "max_shift": 0.1})])
def test_each_policy_is_what_its_name_says(policy, spec):
    assert preprocessing({**LEGACY, "augment": policy})["augment"] == spec


def test_an_unknown_policy_is_refused_naming_augment():
    with pytest.raises(ValidationError) as err:
        TrainRequest.model_validate({**LEGACY, "augment": "flip"})
    assert [e["loc"] for e in err.value.errors()] == [("augment",)]


def test_the_api_refuses_it_with_the_field_named(tmp_path_factory):
    from tests.harness import LocalStudio

    studio = LocalStudio.in_own_folder(tmp_path_factory, "augment")
    r = studio.client().post("/api/v1/train", json={**LEGACY, "augment": True}, headers=studio.headers("operator"))
    assert r.status_code == 400 and r.json["field"] == "augment", r.json
