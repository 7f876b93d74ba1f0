"""A model trained before the checkpoint format changed is still catalogued and still answers /predict."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch

from engine.inference import Predictor
from engine.training import fit
from services.app import training
from services.storage.store import open_store
from tests.digits import digit_images
from tests.harness import post
from tests.old_checkpoints import DIGIT_CLASSES, digits_training, rewrite_as_version_1
from tests.shapes import data_url

CLASSES = DIGIT_CLASSES


@pytest.fixture(scope="module")
def old_model(stack):
    """A digits run whose best.pt and last.pt are in the version 1 layout, catalogued as a training job leaves it."""
    config, (train, test) = digits_training(epochs=1, seed=1)
    job_id = f"old-format-{uuid.uuid4().hex[:12]}"
    folder = stack.data_dir / "checkpoints" / job_id
    result = fit(config, train, test, CLASSES, folder)
    rewrite_as_version_1(result, folder)
    assert "seed" in torch.load(result.best_path, weights_only=True), "the files are in the old layout"
    store = open_store(stack.data_dir)
    row = training.register_model(stack.config, store, job_id, "operator")
    rgb, labels = digit_images(rgb=True)
    yield row, result, rgb[1400:], labels[1400:]
    training.delete_model(stack.config, store, row["id"])


def test_an_old_checkpoint_is_catalogued_with_its_metrics(old_model):
    row, result, _, _ = old_model
    assert row["model_name"] == "convnetb" and row["class_names"] == CLASSES and not row["multi_label"]
    assert row["metrics"]["best_epoch"] == 1 and row["metrics"]["epochs_completed"] == 1
    assert row["metrics"]["test_accuracy"] == pytest.approx(result.best_score)


def test_an_old_checkpoint_answers_predict_as_well_as_it_scored(stack, old_model):
    row, result, images, labels = old_model
    engine_answers = Predictor(result.best_path).predict_batch(list(images))
    right = np.mean([e["label"] == CLASSES[t] for e, t in zip(engine_answers, labels, strict=True)])
    assert 100 * right == pytest.approx(result.best_score)
    # The API serves that same file: its answers are the engine's, image for image (a sample: requests are slow).
    sample = range(0, len(images), 40)
    answers = [post(stack, "/api/v1/predict", {"image": data_url(images[i]), "model": row["id"]}, "client").json()
               for i in sample]
    assert all(a["model"] == row["id"] and set(a["probabilities"]) <= set(CLASSES) for a in answers)
    assert [a["results"] for a in answers] == [engine_answers[i]["label"] for i in sample]
    assert [a["confidence"] for a in answers] == pytest.approx([engine_answers[i]["confidence"] for i in sample],
                                                                abs=1e-3)
