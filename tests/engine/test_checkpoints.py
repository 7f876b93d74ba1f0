"""The checkpoint format's one home: files written by earlier versions still load, predict and resume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engine import checkpoints
from engine.datasets import ArrayDataset
from engine.exceptions import InvalidInput
from engine.inference import Predictor
from engine.models.build import create_model
from engine.training import TrainConfig, fit
from tests.digits import digit_images
from tests.old_checkpoints import DIGIT_CLASSES, digits_training, rewrite_as_version_1, write_version_1

torch.set_num_threads(1)
CLASSES = DIGIT_CLASSES
TAGS = ["sea", "boat", "person"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A digits run of 1 epoch (of 2), and the same files rewritten in the version 1 layout."""
    config, data = digits_training(epochs=2, seed=3)
    one_epoch = dataclasses.replace(config, epochs=1)
    result = fit(one_epoch, *data, CLASSES, tmp_path_factory.mktemp("new"))
    old = tmp_path_factory.mktemp("old")
    rewrite_as_version_1(result, old)
    return config, data, result, old


def test_a_version_1_checkpoint_loads_with_every_fact(digits_run):
    config, _, result, old = digits_run
    ckpt = checkpoints.load(old / "best.pt")
    assert ckpt.model_name == "convnetb" and ckpt.class_names == CLASSES and ckpt.multi_label is False
    assert ckpt.seed == 3 and ckpt.epoch == 1 and ckpt.kind == "best"
    assert ckpt.metrics == result.history[-1] and ckpt.metrics["test_accuracy"] == result.best_score
    assert ckpt.thresholds is None and ckpt.evaluation["confusion_matrix"] == result.evaluation["confusion_matrix"]
    assert ckpt.model_kwargs == {"num_classes": 10, "in_chans": 1, "multi_label": False}


def test_a_version_1_checkpoint_predicts_as_the_run_measured(digits_run):
    _, _, result, old = digits_run
    rgb, labels = digit_images(rgb=True)
    found = Predictor(old / "best.pt").predict_batch(list(rgb[1400:]))
    accuracy = 100 * np.mean([p["label"] == CLASSES[t] for p, t in zip(found, labels[1400:], strict=True)])
    assert accuracy == pytest.approx(result.best_score)
    assert found == Predictor(result.best_path).predict_batch(list(rgb[1400:]))


def test_a_version_1_last_checkpoint_resumes_and_the_new_files_hold_each_fact_once(digits_run, tmp_path):
    config, data, result, old = digits_run
    resumed = fit(config, *data, CLASSES, tmp_path, resume_from=old / "last.pt")
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.history[0] == result.history[0]
    raw = torch.load(resumed.last_path, weights_only=True)
    assert raw["format_version"] == checkpoints.VERSION and raw["history"] == resumed.history
    assert not {"multi_label", "seed", "metrics", "thresholds"} & set(raw)


def test_multi_label_thresholds_of_a_version_1_file_decide_the_tags(tmp_path):
    config = TrainConfig("lenet5", num_classes=3, epochs=1, batch_size=4, image_size=32, multi_label=True, seed=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    data = ArrayDataset(images, rng.integers(0, 2, (8, 3)).astype(np.float32), config.preprocessing())
    result = fit(config, data, data, TAGS, tmp_path / "new")
    raw = torch.load(result.best_path, weights_only=True)
    assert len(checkpoints.load(result.best_path).thresholds) == 3
    raw["evaluation"] = {**raw["evaluation"], "thresholds": [0.0, 1.01, 0.0]}  # an operator's edit, version 1
    write_version_1(raw, tmp_path / "old.pt")
    predictor = Predictor(tmp_path / "old.pt")
    assert predictor.multi_label and predictor.thresholds == [0.0, 1.01, 0.0]
    assert sorted(predictor.predict(images[0])["tags"]) == ["person", "sea"]


def test_weights_files_of_every_kind_load_through_the_same_module(digits_run, tmp_path):
    _, _, result, old = digits_run
    expected = checkpoints.load(result.best_path).state_dict
    torch.save(expected, tmp_path / "plain.pth")
    save_file(expected, tmp_path / "plain.safetensors")
    torch.save({"epoch": 4, "state_dict": expected}, tmp_path / "legacy.pth.tar")
    for path in (result.best_path, old / "best.pt", tmp_path / "plain.pth", tmp_path / "plain.safetensors",
                 tmp_path / "legacy.pth.tar"):
        got = checkpoints.read_weights_file(path)
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got), path
    model = create_model("convnetb", 10, in_chans=1, weights_path=tmp_path / "plain.safetensors")
    assert torch.equal(model.state_dict()[next(iter(expected))], next(iter(expected.values())))


def test_files_that_are_not_readable_checkpoints_are_refused_naming_the_field(digits_run, tmp_path):
    _, _, result, _ = digits_run
    raw = torch.load(result.best_path, weights_only=True)
    for name, bad in (
        ("future.pt", {**raw, "format_version": checkpoints.VERSION + 1}),
        ("v1-without-its-copies.pt", {**raw, "format_version": 1}),
        ("foreign.pt", {k: v for k, v in raw.items() if k != "format"}),
        ("no-weights.pt", {k: v for k, v in raw.items() if k != "state_dict"}),
    ):
        torch.save(bad, tmp_path / name)
        with pytest.raises(InvalidInput) as err:
            checkpoints.load(tmp_path / name)
        assert err.value.field == "checkpoint" and name in str(err.value)
    with pytest.raises(InvalidInput) as err:
        checkpoints.read_weights_file(tmp_path / "missing.safetensors")
    assert err.value.field == "weights_path"
