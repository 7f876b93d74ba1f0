"""The Train page's end-of-run report of a real run on a plain-h5py file of digits: per-class figures, the most
confused pairs, thumbnails of the test images the model got most confidently wrong, with their ids, and the
learning-rate range test's curve of an ``auto`` run."""

from __future__ import annotations

import pytest

from engine.datasets import DatasetSpec, build_datasets
from engine.training import TrainConfig, fit
from services.storage.store import open_store
from tests.digits import write_digits_hdf5
from tests.harness import app_page


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A real two-epoch run on the digits (mistakes left to report), and the folder its data lies in."""
    data_dir = tmp_path_factory.mktemp("report") / "data"
    (data_dir / "datasets").mkdir(parents=True)
    path = data_dir / "datasets" / "digits.hdf5"
    write_digits_hdf5(path)
    config = TrainConfig(model_name="convnetb", num_classes=10, epochs=2, batch_size=64, learning_rate=0.01,
                         image_size=16, grey=True, seed=1)
    data = build_datasets(DatasetSpec("hdf5", hdf5_path=str(path)), config.preprocessing())
    result = fit(config, data.train, data.test, data.class_names, data_dir / "checkpoints" / "run1")
    return data_dir, result


def test_the_report_shows_the_rate_curve_and_the_worst_test_images_with_their_ids(short_run, monkeypatch):
    data_dir, result = short_run
    store = open_store(data_dir)
    params = {"model_name": "convnetb", "dataset": "hdf5", "hdf5_path": "digits.hdf5", "num_classes": 10,
              "num_epochs": 2, "image_size": 16, "convert_grey": True}
    store.create_job("run1", "train", params, "operator")
    finder = {"lrs": [1e-6, 1e-4, 1e-2, 1.0], "losses": [2.3, 2.2, 0.9, 3.5], "chosen": 1e-3, "lowest_at": 1e-2,
              "steps": 4}
    history = [{**result.history[0], "lr_finder": finder}, *result.history[1:]]
    store.update_job("run1", status="finished", history=history,
                     result={"best_accuracy": result.best_score, "evaluation": result.evaluation})
    worst = result.evaluation["worst"]
    with app_page("train.py", {"username": "operator", "role": "operator"}, data_dir, monkeypatch) as page:
        page.run()
        assert not page.exception, page.exception
        assert any("Most confidently wrong" in m.value for m in page.markdown)
        table = next(d.value for d in page.dataframe if "true_probability" in d.value.columns)
        assert list(table["id"]) == [w["id"] for w in worst] and all(i.startswith("test/") for i in table["id"])
        assert len(page.image) == 1, "one row of thumbnails"
        assert any(c.value.startswith("Chosen learning rate 0.001: a tenth of 0.01") for c in page.caption)
        captions = [f"{w['true']} → {w['predicted']} ({w['true_probability']:.0f} %)" for w in worst]
        assert page.image[0].captions == captions


def test_the_page_starts_on_the_model_chosen_from_the_data_and_says_why(short_run, monkeypatch):
    data_dir, _ = short_run
    with app_page("train.py", {"username": "operator", "role": "operator"}, data_dir, monkeypatch) as page:
        page.run()
        assert page.selectbox(key="train_model").value == "(chosen from the data)"
        page.radio(key="train_dataset").set_value("hdf5").run()
        page.selectbox(key="train_hdf5").set_value("digits.hdf5").run()
        assert not page.exception, page.exception
        said = " ".join(box.value for box in page.info)
        assert "Model chosen for this data: **convnetj**, scratch" in said and "8 px" in said, said
        page.selectbox(key="train_model").set_value("lenet5").run()
        assert not any("Model chosen" in box.value for box in page.info)  # a model the user picks is kept


def test_the_reason_follows_the_settings_a_head_only_start_over_processes_trains_every_layer(tmp_path, monkeypatch):
    """32 px pictures get the bundled backbone head-only; set Processes to 2 and the page says, before the launch,
    that the run fine-tunes every layer and why (the request does the same: one home for the rule)."""
    data_dir = tmp_path / "data"
    (data_dir / "datasets").mkdir(parents=True)
    write_digits_hdf5(data_dir / "datasets" / "digits32.hdf5", train=slice(0, 300), test=slice(300, 400), scale=4)
    with app_page("train.py", {"username": "operator", "role": "operator"}, data_dir, monkeypatch) as page:
        page.run()
        page.radio(key="train_dataset").set_value("hdf5").run()
        page.selectbox(key="train_hdf5").set_value("digits32.hdf5").run()
        said = " ".join(box.value for box in page.info)
        assert "**efficientnet-lite0**, head-only" in said, said
        page.number_input(key="train_processes").set_value(2).run()
        assert not page.exception, page.exception
        said = " ".join(box.value for box in page.info)
        assert "**efficientnet-lite0**, fine-tune" in said and "spread over processes" in said, said


def test_a_run_stopped_before_its_first_checkpoint_offers_no_resume(short_run, monkeypatch):
    """Cancelled while queued (no checkpoint): the page says there is nothing to resume instead of a button that
    fails; a cancelled run with a checkpoint keeps its Resume button."""
    data_dir, _ = short_run
    store = open_store(data_dir)
    params = {"model_name": "convnetb", "dataset": "hdf5", "hdf5_path": "digits.hdf5", "num_epochs": 2}
    for job_id in ("never_started", "run1"):
        if store.get_job(job_id) is None:
            store.create_job(job_id, "train", params, "operator")
        store.update_job(job_id, status="cancelled", history=[])
    with app_page("train.py", {"username": "operator", "role": "operator"}, data_dir, monkeypatch) as page:
        page.run()
        page.selectbox(key="train_run").set_value("never_started").run()
        assert not page.exception, page.exception
        assert not [b for b in page.button if b.key == "train_resume"]
        assert any(c.value.startswith("Nothing to resume: the run stopped before it wrote a checkpoint")
                   for c in page.caption)
        page.selectbox(key="train_run").set_value("run1").run()  # checkpoints/run1/last.pt exists
        assert [b for b in page.button if b.key == "train_resume"]
