"""Prediction and export from a checkpoint alone: a trained model predicts what it learned."""

from __future__ import annotations

import base64
import json
import pickle

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from engine.checkpoints import load as load_checkpoint
from engine.datasets import ArrayDataset
from engine.exceptions import InvalidInput
from engine.images import encode_png
from engine.inference import Predictor, export_model
from engine.training import TrainConfig, fit
from tests.digits import digit_images

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
CLASSES = [f"digit-{d}" for d in range(10)]


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    rgb, labels = digit_images(rgb=True)  # uploads are colour images; the run trains grey
    config = TrainConfig(
        model_name="convnetb",
        num_classes=10,
        epochs=2,
        batch_size=64,
        learning_rate=0.05,
        image_size=16,
        grey=True,
    )
    pre = config.preprocessing()
    train, test = (
        ArrayDataset(rgb[:1400], labels[:1400], pre, True),
        ArrayDataset(rgb[1400:], labels[1400:], pre),
    )
    result = fit(config, train, test, CLASSES, tmp_path_factory.mktemp("digits"))
    return result, rgb[1400:], labels[1400:]


def test_predictor_reproduces_the_test_accuracy_of_training(digits_model):
    result, images, targets = digits_model
    predictor = Predictor(result.best_path)
    labels = [p["label"] for p in predictor.predict_batch(list(images))]
    accuracy = 100 * np.mean([label == CLASSES[t] for label, t in zip(labels, targets, strict=True)])
    assert accuracy == pytest.approx(result.best_score)


def test_predict_answers_label_confidence_and_top5_for_arrays_bytes_and_base64(digits_model):
    result, images, _ = digits_model
    predictor = Predictor(result.best_path)
    png = encode_png(images[0])
    answers = [
        predictor.predict(images[0]),
        predictor.predict(png),
        predictor.predict("data:image/png;base64," + base64.b64encode(png).decode()),
    ]
    assert answers[0] == answers[1] == answers[2]
    answer = answers[0]
    probabilities = list(answer["probabilities"].values())
    assert answer["label"] in CLASSES and len(probabilities) == 5
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
    assert answer["confidence"] == pytest.approx(100 * answer["probabilities"][answer["label"]])
    assert 0 <= answer["confidence"] <= 100


def test_multi_label_predictor_tags_labels_over_their_thresholds(tmp_path):
    rng = np.random.default_rng(0)
    tags = rng.random((200, 3)) < 0.4
    images = rng.integers(0, 60, (200, 16, 16, 3), dtype=np.uint8)
    images[..., :8, :] += (tags[:, None, None, :] * 180).astype(np.uint8)
    config = TrainConfig(
        model_name="convnetb",
        num_classes=3,
        epochs=3,
        batch_size=32,
        learning_rate=0.05,
        image_size=16,
        multi_label=True,
    )
    pre = config.preprocessing()
    result = fit(
        config,
        ArrayDataset(images[:150], tags[:150].astype(np.float32), pre, True),
        ArrayDataset(images[150:], tags[150:].astype(np.float32), pre),
        ["red", "green", "blue"],
        tmp_path,
    )
    predictor = Predictor(result.best_path)
    assert predictor.multi_label and len(predictor.thresholds) == 3
    red = np.zeros((16, 16, 3), dtype=np.uint8)
    red[:8, :, 0] = 230
    answer = predictor.predict(red)
    assert set(answer["scores"]) == {"red", "green", "blue"} and "red" in answer["tags"]
    assert all(
        answer["scores"][t] >= predictor.thresholds[["red", "green", "blue"].index(t)] for t in answer["tags"]
    )


def test_torchscript_export_runs_without_the_project_and_carries_metadata(digits_model, tmp_path):
    result, images, _ = digits_model
    predictor = Predictor(result.best_path)
    path = export_model(result.best_path, "torchscript", tmp_path / "model.pt")
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    metadata = json.loads(extra["metadata.json"])
    assert metadata["class_names"] == CLASSES and metadata["preprocessing"]["image_size"] == [16, 16]
    for batch in (images[:1], images[:5]):
        x = predictor.to_tensor(list(batch))
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), predictor.model(x), rtol=1e-4, atol=1e-4)


def test_onnx_export_matches_and_carries_metadata(digits_model, tmp_path):
    result, images, _ = digits_model
    predictor = Predictor(result.best_path)
    path = export_model(result.best_path, "onnx", tmp_path / "model.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"], "one self-contained file"
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["metadata"])["class_names"] == CLASSES
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (images[:1], images[:4]):
        x = predictor.to_tensor(list(batch))
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, predictor.model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_bad_format_and_foreign_files_are_refused(digits_model, tmp_path, capsys):
    result, _, _ = digits_model
    with pytest.raises(InvalidInput) as err:
        export_model(result.best_path, "tflite", tmp_path / "m")
    assert err.value.field == "format" and "torchscript, onnx" in str(err.value)
    with pytest.raises(InvalidInput) as err:
        load_checkpoint(tmp_path / "missing.pt")
    assert err.value.field == "checkpoint"
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(InvalidInput):
        load_checkpoint(tmp_path / "other.pt")

    class Payload:
        def __reduce__(self):
            return (print, ("code ran while loading",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Payload(), protocol=2))
    with pytest.raises(InvalidInput):  # weights_only=True refuses to call anything
        load_checkpoint(tmp_path / "evil.pt")
    assert "code ran" not in capsys.readouterr().out
