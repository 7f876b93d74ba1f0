"""The end-of-run report of a single-label run: per-class precision and recall, the most confused pairs, and
the samples the model got most confidently wrong, checked against scikit-learn on known outputs."""

from __future__ import annotations

import pytest
import torch

from engine.training import final_evaluation

NAMES = ["cat", "dog", "cup"]
# Six samples: truth and the model's logits (argmax = prediction).
TRUTH = torch.tensor([0, 0, 1, 1, 2, 2])
LOGITS = torch.tensor([
    [3.0, 0.0, 0.0],   # cat -> cat
    [0.0, 4.0, 0.0],   # cat -> dog, very sure (true-class probability ~1.8 %)
    [0.0, 2.0, 0.0],   # dog -> dog
    [1.0, 0.0, 0.0],   # dog -> cat, unsure
    [0.0, 0.0, 2.0],   # cup -> cup
    [0.0, 0.0, 5.0],   # cup -> cup
])


def test_per_class_precision_recall_pairs_and_worst():
    report = final_evaluation(LOGITS, TRUTH, False, NAMES)
    assert report["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [0, 0, 2]]
    assert report["per_class"]["cat"] == pytest.approx({"precision": 50.0, "recall": 50.0, "f1": 50.0, "support": 2})
    assert report["per_class"]["cup"]["precision"] == 100.0 and report["per_class"]["cup"]["recall"] == 100.0
    assert report["confused_pairs"] == [{"true": "cat", "predicted": "dog", "count": 1},
                                        {"true": "dog", "predicted": "cat", "count": 1}]
    worst = report["worst"]
    assert [(w["index"], w["true"], w["predicted"]) for w in worst] == [(1, "cat", "dog"), (3, "dog", "cat")]
    assert worst[0]["true_probability"] == pytest.approx(100 / (2 + torch.e ** 4), rel=1e-4)


def test_a_perfect_run_has_no_confusions_and_no_worst():
    report = final_evaluation(torch.eye(3) * 5, torch.tensor([0, 1, 2]), False, NAMES)
    assert report["confused_pairs"] == [] and report["worst"] == []


# ----------------------------------------------------------------------------- a real run's report


def test_a_run_on_an_hdf5_file_names_its_worst_test_images_by_their_row(tmp_path):
    """Two epochs on scikit-learn's digits, written with plain h5py: the report's worst images are wrong
    predictions, and ``test/<row>`` leads back to the very image and label in the file."""
    import h5py
    import numpy as np

    from engine.datasets import DatasetSpec, build_datasets
    from engine.hdf5_layout import read_split_image
    from engine.training import TrainConfig, fit
    from tests.digits import write_digits_hdf5

    path = tmp_path / "digits.hdf5"
    write_digits_hdf5(path)
    config = TrainConfig(model_name="convnetb", num_classes=10, epochs=2, batch_size=64, learning_rate=0.01,
                         image_size=16, grey=True, seed=1)
    data = build_datasets(DatasetSpec("hdf5", hdf5_path=str(path)), config.preprocessing())
    result = fit(config, data.train, data.test, data.class_names, tmp_path / "run")
    worst = result.evaluation["worst"]
    assert worst, "two short epochs leave mistakes to report"
    with h5py.File(path) as f:
        truth = f["y_test"][()]
        for item in worst:
            row = int(item["id"].removeprefix("test/"))
            assert item["id"] == f"test/{item['index']}" and item["true"] == str(truth[row])
            assert item["predicted"] != item["true"]
            assert np.array_equal(read_split_image(path, "test", row), f["X_test"][row])
    probabilities = [item["true_probability"] for item in worst]
    assert probabilities == sorted(probabilities)  # most confidently wrong first


def test_class_folders_name_their_worst_images_by_path(tmp_path):
    from PIL import Image

    from engine.datasets import ImageFolderDataset, make_preprocessing

    for name, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8), colour).save(tmp_path / name / f"{name}_1.jpg", quality=85)
    data = ImageFolderDataset(tmp_path, make_preprocessing(8))
    report = final_evaluation(torch.tensor([[0.0, 3.0], [0.0, 3.0]]), torch.tensor(data.targets), False,
                              data.class_names, data.item_id)
    # Classes in sorted order (blue, red); both predicted red: the blue one is wrong.
    assert [(w["id"], w["true"]) for w in report["worst"]] == [("blue/blue_1.jpg", "blue")]
