"""Training loop, checkpoints, resume/cancel, metrics and the datasets it trains on (real digits data)."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from engine import checkpoints
from engine import labels as labelsets
from engine.datasets import (
    ArrayDataset,
    DatasetSpec,
    build_datasets,
    list_dataset_kinds,
    make_preprocessing,
    preprocess,
)
from engine.exceptions import Cancelled, InvalidInput
from engine.images import decode_image, encode_png
from engine.inference import rebuild_model
from engine.metrics import average_precision, best_thresholds, confusion_matrix, multilabel_metrics
from engine.models.build import create_model
from engine.run_config import AUGMENT_POLICIES
from engine.training import (
    TrainConfig,
    build_criterion,
    evaluate,
    fit,
)
from tests.digits import digit_images

torch.set_num_threads(1)
CLASSES = [str(d) for d in range(10)]
RECORD_KEYS = {
    "epoch",
    "epochs",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "best_accuracy",
    "best_epoch",
    "best_score",
    "monitor",
    "improved",
    "lr",
    "epoch_seconds",
    "train_samples_per_s",
}


def digits(config: TrainConfig, n_train: int = 1400, n_test: int | None = None):
    """scikit-learn's real 8x8 handwritten digits as uint8 images, split into train and test datasets."""
    images, labels = digit_images()
    pre = config.preprocessing()
    end = None if n_test is None else n_train + n_test
    return (
        ArrayDataset(images[:n_train], labels[:n_train], pre, train=True),
        ArrayDataset(images[n_train:end], labels[n_train:end], pre),
    )


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    config = TrainConfig(
        model_name="convnetb",
        num_classes=10,
        epochs=3,
        batch_size=64,
        learning_rate=0.05,
        image_size=16,
        grey=True,
        seed=3,
    )
    train, test = digits(config)
    records = []
    result = fit(config, train, test, CLASSES, tmp_path_factory.mktemp("digits"), on_epoch=records.append)
    return config, train, test, records, result


def test_fit_on_real_digits_reaches_high_test_accuracy(digits_run):
    config, _, test, records, result = digits_run
    assert result.best_score >= 85.0 and result.monitor == "test_accuracy"
    assert [r["epoch"] for r in records] == [1, 2, 3] and records == result.history
    assert all(RECORD_KEYS <= set(r) for r in records)
    assert all(isinstance(v, (int, float, str, bool)) for r in records for v in r.values())
    assert records[-1]["best_accuracy"] == max(r["test_accuracy"] for r in records)
    matrix = np.array(result.evaluation["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == len(test)
    assert 100 * np.trace(matrix) / len(test) == pytest.approx(result.best_score)


def test_checkpoints_are_self_describing_and_load_weights_only(digits_run):
    config, _, test, _, result = digits_run
    for path in (result.best_path, result.last_path):
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["model"] == {
            "name": "convnetb",
            "kwargs": {"num_classes": 10, "in_chans": 1, "multi_label": False},
        }
        assert ckpt["class_names"] == CLASSES and ckpt["config"] == dataclasses.asdict(config)
        assert ckpt["preprocessing"] == config.preprocessing() and ckpt["preprocessing"]["channels"] == 1
        assert {"optimizer", "scheduler", "history", "epoch", "best", "rng"} <= set(ckpt)
        assert ckpt["optimizer"]["state"], "optimizer momentum buffers are saved"
        # Each fact once: the legacy API is the config's, the metrics the epoch's record, multi-label a model argument.
        assert not {"seed", "metrics", "multi_label", "thresholds"} & set(ckpt)
        loaded = checkpoints.load(path)
        assert loaded.seed == config.seed and loaded.metrics == ckpt["history"][-1] and loaded.multi_label is False
    best = checkpoints.load(result.best_path)
    assert best.epoch == result.best_epoch and best.metrics["test_accuracy"] == result.best_score
    model = rebuild_model(best)  # from the checkpoint alone
    again = evaluate(model, DataLoader(test, batch_size=128), build_criterion(False), torch.device("cpu"))
    assert again["accuracy"] == pytest.approx(result.best_score)


def _small_run(tmp_path, name, **overrides):
    config = TrainConfig(
        **{
            "model_name": "convneta",
            "num_classes": 10,
            "epochs": 3,
            "batch_size": 50,
            "learning_rate": 0.05,
            "image_size": 16,
            "grey": True,
            "augment": True,
            **overrides,
        }
    )
    train, test = digits(config, n_train=300, n_test=100)
    return config, train, test, tmp_path / name


def test_resume_after_cancel_continues_at_the_next_epoch_with_history(tmp_path):
    config, train, test, unbroken_dir = _small_run(tmp_path, "unbroken")
    unbroken = fit(config, train, test, CLASSES, unbroken_dir)
    records = []
    with pytest.raises(Cancelled):
        fit(
            config,
            train,
            test,
            CLASSES,
            tmp_path / "job",
            on_epoch=records.append,
            should_stop=lambda: len(records) >= 1,
        )
    last = torch.load(tmp_path / "job" / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and len(last["history"]) == 1
    resumed_records = []
    resumed = fit(
        config,
        train,
        test,
        CLASSES,
        tmp_path / "job",
        on_epoch=resumed_records.append,
        resume_from=tmp_path / "job" / "last.pt",
    )
    assert [r["epoch"] for r in resumed_records] == [2, 3]
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    # Per-epoch reseeding: the resumed run is the unbroken run, loss for loss.
    for a, b in zip(unbroken.history, resumed.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"])


def test_cancel_inside_the_first_epoch_leaves_a_resumable_last_checkpoint(tmp_path):
    config, train, test, directory = _small_run(tmp_path, "job", epochs=1)
    with pytest.raises(Cancelled):
        fit(config, train, test, CLASSES, directory, should_stop=lambda: True, log_every=1)
    assert torch.load(directory / "last.pt", weights_only=True)["epoch"] == 0
    result = fit(config, train, test, CLASSES, directory, resume_from=directory / "last.pt")
    assert result.epochs_completed == 1 and result.best_path.is_file()


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path):
    # A learning rate too small to change anything: epoch 1 sets the best, epoch 2 does not beat it.
    config, train, test, directory = _small_run(tmp_path, "job", epochs=6, patience=1, learning_rate=1e-12)
    result = fit(config, train, test, CLASSES, directory)
    assert result.stopped_early and result.epochs_completed == 2 and result.best_epoch == 1


def test_step_schedule_and_frozen_pretrained_layers(tmp_path):
    config, train, test, directory = _small_run(
        tmp_path, "job", epochs=2, lr_schedule="step", epoch_step=1, lr_gamma=0.5, lr_pretrained=0.0
    )
    torch.manual_seed(config.seed)
    initial = create_model("convneta", 10, in_chans=1).state_dict()
    result = fit(config, train, test, CLASSES, directory)
    assert [r["lr"] for r in result.history] == [0.05, 0.025]
    trained = torch.load(result.last_path, weights_only=True)["state_dict"]
    assert torch.equal(trained["features.0.weight"], initial["features.0.weight"])
    assert not torch.equal(trained["head.3.weight"], initial["head.3.weight"])


def test_adam_and_plateau_schedule_run(tmp_path):
    config, train, test, directory = _small_run(
        tmp_path,
        "job",
        epochs=2,
        optimizer="adam",
        learning_rate=1e-3,
        lr_schedule="plateau",
        plateau_patience=0,
    )
    result = fit(config, train, test, CLASSES, directory)
    ckpt = torch.load(result.last_path, weights_only=True)
    assert "exp_avg" in next(iter(ckpt["optimizer"]["state"].values())) and ckpt["scheduler"] is not None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model_name": "nope"}, "model_name"),
        ({"num_classes": 1}, "num_classes"),
        ({"epochs": -1}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"momentum": 1.5}, "momentum"),
        ({"weight_decay": -1}, "weight_decay"),
        ({"lr_schedule": "cosine"}, "lr_schedule"),
        ({"lr_schedule": "step"}, "epoch_step"),
        ({"patience": 0}, "patience"),
        ({"image_size": 8}, "image_size"),
        ({"model_name": "alexnet", "image_size": 32}, "image_size"),
        ({"lr_pretrained": -0.1}, "lr_pretrained"),
        ({"num_workers": True}, "num_workers"),
        ({"model_name": "capsnet", "multi_label": True}, "multi_label"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(overrides, field):
    with pytest.raises(InvalidInput) as err:
        TrainConfig(**{"model_name": "lenet5", "num_classes": 3, **overrides})
    assert err.value.field == field


def test_fit_rejects_num_classes_that_contradict_the_data(tmp_path):
    config, train, test, directory = _small_run(tmp_path, "job", num_classes=3)
    with pytest.raises(InvalidInput) as err:
        fit(config, train, test, CLASSES, directory)
    assert err.value.field == "num_classes"


# ---------------------------------------------------------------------------------------- multi-label


def test_metrics_on_hand_computed_examples():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.7, 0.2], [0.6, 0.3]])
    truth = np.array([[1, 0], [0, 1], [1, 0], [0, 0]], dtype=float)
    ap = average_precision(scores, truth)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2) and ap[1] == pytest.approx(1.0)
    thresholds = best_thresholds(scores, truth)
    assert 0.7 > thresholds[0] > 0.6 and 0.7 > thresholds[1] > 0.3
    found = multilabel_metrics(scores, truth, thresholds)
    # label 0 predicted for rows 0-2 (tp 2, fp 1), label 1 for row 1 (tp 1): micro F1 = 2*3 / (2*3 + 1 + 0)
    assert found["micro_f1"] == pytest.approx(100 * 6 / 7)
    assert found["precision"] == pytest.approx([100 * 2 / 3, 100.0]) and found["recall"] == [100.0, 100.0]
    assert found["map"] == pytest.approx(100 * (ap[0] + ap[1]) / 2)
    assert confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2) == [[1, 1], [0, 1]]


def _colour_tags(n, seed=0):
    """Images whose red/green/blue halves are lit exactly when the matching label is present."""
    rng = np.random.default_rng(seed)
    tags = rng.random((n, 3)) < 0.4
    images = rng.integers(0, 60, (n, 16, 16, 3), dtype=np.uint8)
    images[..., :8, :] += (tags[:, None, None, :] * 180).astype(np.uint8)
    return images, tags.astype(np.float32)


def test_multi_label_fit_reports_map_f1_per_class_metrics_and_thresholds(tmp_path):
    config = TrainConfig(
        model_name="convnetb",
        num_classes=3,
        epochs=4,
        batch_size=32,
        learning_rate=0.05,
        image_size=16,
        multi_label=True,
    )
    images, tags = _colour_tags(320)
    pre = config.preprocessing()
    train, test = (
        ArrayDataset(images[:240], tags[:240], pre, True),
        ArrayDataset(images[240:], tags[240:], pre),
    )
    records = []
    result = fit(config, train, test, ["red", "green", "blue"], tmp_path, on_epoch=records.append)
    assert result.monitor == "test_map" and result.best_score >= 90
    assert all({"test_map", "test_micro_f1", "test_macro_f1"} <= set(r) for r in records)
    best = checkpoints.load(result.best_path)
    assert len(best.thresholds) == 3 and all(0 < t < 1 for t in best.thresholds)
    per_class = best.evaluation["per_class"]
    assert set(per_class) == {"red", "green", "blue"}
    assert all({"precision", "recall", "f1", "threshold", "support"} <= set(v) for v in per_class.values())
    assert sum(v["support"] for v in per_class.values()) == int(tags[240:].sum())


def test_multi_label_flag_must_match_the_data(tmp_path):
    config = TrainConfig(model_name="lenet5", num_classes=3, epochs=1, image_size=16)
    images, tags = _colour_tags(8)
    data = ArrayDataset(images, tags, config.preprocessing())
    with pytest.raises(InvalidInput) as err:
        fit(config, data, data, ["r", "g", "b"], tmp_path)
    assert err.value.field == "multi_label"


# ------------------------------------------------------------------------------------------- datasets


def test_preprocessing_matches_upload_decoding_and_augments_only_training():
    rgba = np.zeros((10, 12, 4), dtype=np.uint8)
    rgba[..., 0], rgba[:5, :, 3] = 200, 255  # bottom half transparent: white, as decode_image makes it
    pre = make_preprocessing(8, grey=True, augment=AUGMENT_POLICIES["shift+flip"])
    from_array = preprocess(rgba, pre)
    from_upload = preprocess(decode_image(encode_png(rgba)), pre)
    assert from_array.shape == (1, 8, 8) and torch.allclose(from_array, from_upload, atol=1e-2)
    images = np.random.default_rng(0).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    spec = AUGMENT_POLICIES["shift+flip"]
    plain = ArrayDataset(images, [0, 1, 2, 3], make_preprocessing(8, augment=spec))
    trained = ArrayDataset(images, [0, 1, 2, 3], make_preprocessing(8, augment=spec), train=True)
    # Items are the preprocessed images; the training loop augments the training split's batches.
    assert all(torch.equal(trained[i][0], preprocess(images[i], plain.preprocessing)) for i in range(4))
    assert trained.augmentation == spec and plain.augmentation is None
    with pytest.raises(InvalidInput) as err:
        make_preprocessing(8, augment={"hflip": 2.0, "max_shift": 0.1})
    assert err.value.field == "augment"
    with pytest.raises(InvalidInput) as err:
        make_preprocessing(0)
    assert err.value.field == "image_size"


def _write_hdf5(path, n_train=12, n_test=6):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for split, n in (("train", n_train), ("test", n_test)):
            f[f"X_{split}"] = rng.integers(0, 255, (n, 20, 20, 3), dtype=np.uint8)
            f[f"y_{split}"] = np.arange(n) % 3
        f.attrs["class_names"] = json.dumps(["cat", "dog", "owl"])


def test_hdf5_dataset_with_worker_processes(tmp_path, processes):
    _write_hdf5(tmp_path / "d.hdf5")
    pre = make_preprocessing(16)
    bundle = build_datasets(DatasetSpec("hdf5", hdf5_path=str(tmp_path / "d.hdf5")), pre)
    assert bundle.class_names == ["cat", "dog", "owl"] and not bundle.multi_label
    assert (len(bundle.train), len(bundle.test)) == (12, 6)
    image, label = bundle.test[4]
    assert image.shape == (3, 16, 16) and label == 1
    in_process = torch.cat([x for x, _ in DataLoader(bundle.test, batch_size=4)])
    in_workers = torch.cat([x for x, _ in DataLoader(bundle.test, batch_size=4, num_workers=2)])
    assert torch.equal(in_process, in_workers)
    with pytest.raises(InvalidInput) as err:
        build_datasets(DatasetSpec("hdf5", hdf5_path=str(tmp_path / "missing.hdf5")), pre)
    assert err.value.field == "hdf5_path"


def test_image_folder_datasets_share_the_training_classes(tmp_path):
    for split, classes in (("train", ("b_red", "a_blue")), ("test", ("a_blue",))):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                colour = (200, 0, 0) if name == "b_red" else (0, 0, 200)
                Image.new("RGB", (10, 10), colour).save(tmp_path / split / name / f"{i}.png")
    (tmp_path / "train" / "a_blue" / "notes.txt").write_text("ignored")
    spec = DatasetSpec("custom", trainset_dir=str(tmp_path / "train"), testset_dir=str(tmp_path / "test"))
    bundle = build_datasets(spec, make_preprocessing(8))
    assert bundle.class_names == ["a_blue", "b_red"] and len(bundle.train) == 4
    assert [label for _, label in bundle.test] == [0, 0]
    (tmp_path / "test" / "green").mkdir()
    with pytest.raises(InvalidInput) as err:
        build_datasets(spec, make_preprocessing(8))
    assert err.value.field == "testset_dir"


def test_newdata_dataset_is_multi_label_over_the_label_set(tmp_path):
    labelsets.write_label_set(tmp_path, ["sky", "tree", "car"])
    for i in range(6):
        Image.new("RGB", (12, 12), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
        path = labelsets.save_image_atomic(tmp_path, f"img{i}", (tmp_path / f"{i}.png").read_bytes(), "png")
        assert path.is_file()
        labelsets.write_annotation(
            tmp_path, f"img{i}", ["sky", "car"] if i % 2 else ["tree"], ["sky", "tree", "car"]
        )
    bundle = build_datasets(DatasetSpec("newdata", newdata_dir=str(tmp_path)), make_preprocessing(8))
    assert bundle.multi_label and bundle.class_names == ["sky", "tree", "car"]
    assert len(bundle.train) + len(bundle.test) == 6
    image, target = bundle.train[0]
    assert image.shape == (3, 8, 8) and target.dtype == torch.float32 and set(target.tolist()) <= {0.0, 1.0}


def test_dataset_kinds_come_from_the_registry():
    assert list_dataset_kinds() == {
        "custom": ("trainset_dir", "testset_dir"),
        "hdf5": ("hdf5_path",),
        "newdata": ("newdata_dir",),
    }
    with pytest.raises(InvalidInput) as err:
        DatasetSpec("lmdb")
    assert err.value.field == "dataset" and "known: custom, hdf5, newdata" in str(err.value)
    with pytest.raises(InvalidInput) as err:
        DatasetSpec("custom", trainset_dir="a")
    assert err.value.field == "testset_dir"
