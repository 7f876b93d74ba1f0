"""``"learning_rate": "auto"`` at the API's door: the word is accepted beside numbers (strings too, as legacy
bodies send them), refused for a head-only run naming ``learning_rate``, and a resumed run keeps the rate its
range test chose."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.app.train_request import TrainRequest
from tests.digits import digits_body, write_digits_hdf5
from tests.harness import LocalStudio


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    studio = LocalStudio.in_own_folder(tmp_path_factory, "auto")
    write_digits_hdf5(studio.data_dir / "datasets" / "digits-8x8.hdf5")
    return studio


@pytest.mark.parametrize(("given", "read"), [("auto", "auto"), ("0.05", 0.05), (0.05, 0.05), (1, 1.0)])
def test_a_number_or_auto_is_accepted(given, read):
    assert TrainRequest.model_validate(digits_body(learning_rate=given)).learning_rate == read


@pytest.mark.parametrize("given", ["fast", "", 0, -1, 11, None])
def test_anything_else_is_refused_naming_learning_rate(given):
    with pytest.raises(ValidationError) as err:
        TrainRequest.model_validate(digits_body(learning_rate=given))
    assert {e["loc"][0] for e in err.value.errors()} == {"learning_rate"}


def test_the_api_queues_an_auto_run_and_refuses_one_that_trains_only_a_head(studio):
    client, headers = studio.client(), studio.headers("operator")
    assert client.post("/api/v1/train", json=digits_body(learning_rate="auto"), headers=headers).status_code == 202
    head_only = digits_body(learning_rate="auto", model_name="efficientnet-lite0", image_size="32")
    r = client.post("/api/v1/train", json=head_only, headers=headers)
    assert r.status_code == 400 and r.json["field"] == "learning_rate" and "head-only" in r.json["message"], r.json


def test_an_auto_rate_over_several_machines_is_refused_naming_learning_rate(studio):
    body = digits_body(learning_rate="auto", nodes="2")
    r = studio.client().post("/api/v1/train", json=body, headers=studio.headers("operator"))
    assert r.status_code == 400 and r.json["field"] == "learning_rate" and "machines" in r.json["message"], r.json


def test_a_resumed_auto_run_goes_on_at_the_rate_its_range_test_chose(studio):
    from services.app import training

    store = studio.actor("operator").store
    store.create_job("auto1", "train", digits_body(learning_rate="auto", num_epochs="5"), "operator")
    finder = {"lrs": [1e-6, 1e-3], "losses": [2.3, 1.0], "chosen": 0.0123, "lowest_at": 0.123, "steps": 2}
    store.update_job("auto1", status="cancelled", history=[{"epoch": 1, "epochs": 5, "lr_finder": finder}])
    last = studio.data_dir / "checkpoints" / "auto1" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"a checkpoint")  # resume checks that it is there; the job reads it
    job_id = training.resume(studio.actor("operator"), "auto1")
    assert store.get_job(job_id)["params"]["learning_rate"] == 0.0123
