"""HDF5 dataset files as other people write them, with plain h5py and numpy: each trains or is refused.

Every file holds real handwritten digits (scikit-learn's 8x8 ``load_digits``) in one of the layouts found
in the wild. An accepted file must give the same images and labels as the plain uint8 original, and
train one epoch; a refused one must raise ``InvalidInput`` naming ``hdf5_path``, with a message that
says what is wrong and how to fix it, and no server path in it.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from engine.datasets import DatasetSpec, build_datasets, inspect_hdf5, make_preprocessing, preprocess
from engine.exceptions import InvalidInput
from engine.training import TrainConfig, fit
from tests.hdf5_variants import (
    ACCEPTED,
    DIGITS,
    IMAGES,
    N_TEST,
    N_TRAIN,
    NAMES,
    REFUSED,
    SPLITS,
    digits_of,
    multi_hot,
    write_h5,
)

torch.set_num_threads(1)



def _train_one_epoch(path: Path, names: list[str], multi_label: bool, tmp_path: Path) -> None:
    config = TrainConfig(model_name="convnetb", num_classes=len(names), epochs=1, batch_size=8,
                         image_size=16, seed=0, multi_label=multi_label)
    bundle = build_datasets(DatasetSpec("hdf5", hdf5_path=str(path)), config.preprocessing())
    result = fit(config, bundle.train, bundle.test, bundle.class_names, tmp_path / "run")
    assert result.epochs_completed == 1 and result.class_names == names
    assert np.isfinite(result.history[-1]["train_loss"])


@pytest.mark.parametrize("variant", list(ACCEPTED))
def test_accepted_variant_reads_the_same_digits_and_trains(variant, tmp_path):
    write, names = ACCEPTED[variant]
    path = tmp_path / f"{variant}.h5"
    write(path)
    summary = inspect_hdf5(path)
    assert summary.class_names == names and not summary.multi_label
    assert summary.split_sizes == {"train": N_TRAIN, "test": N_TEST}
    assert summary.image_shape[:2] == (8, 8)
    shown = NAMES if names == sorted(NAMES) else names  # each digit's class name
    expected_counts = {shown[d]: int((DIGITS[SPLITS["test"]] == d).sum()) for d in range(3)}
    assert summary.class_counts["test"] == expected_counts
    pre = make_preprocessing(8)
    bundle = build_datasets(DatasetSpec("hdf5", hdf5_path=str(path)), pre)
    for i, digit in enumerate(DIGITS[SPLITS["test"]]):
        image, label = bundle.test[i]
        assert image.dtype == torch.float32 and image.shape == (3, 8, 8)
        # The same pixels as the uint8 original, whatever dtype or axis order the file used.
        assert torch.equal(image, preprocess(IMAGES[N_TRAIN + i], pre))
        assert bundle.class_names[label] == shown[digit]
    _train_one_epoch(path, names, False, tmp_path)


def test_labels_0_1_7_without_names_are_three_classes_not_eight(tmp_path):
    images, digits = digits_of((0, 1, 7))
    write_h5(tmp_path / "d.h5", names=None, digits=digits, pictures=images)
    summary = inspect_hdf5(tmp_path / "d.h5")
    assert summary.class_names == ["0", "1", "7"] and summary.class_names_from == "labels"
    bundle = build_datasets(DatasetSpec("hdf5", hdf5_path=str(tmp_path / "d.h5")), make_preprocessing(8))
    shown = [bundle.class_names[bundle.test[i][1]] for i in range(N_TEST)]
    assert shown == [str(d) for d in digits[N_TRAIN:]]  # a 7 is still called "7"
    _train_one_epoch(tmp_path / "d.h5", ["0", "1", "7"], False, tmp_path)


def test_multi_hot_rows_make_a_multi_label_dataset(tmp_path):
    path = tmp_path / "multi.h5"
    names = [*NAMES, "round"]
    write_h5(path, labels=multi_hot, names=names)
    summary = inspect_hdf5(path)
    assert summary.multi_label and summary.class_names == names
    assert summary.class_counts["train"]["round"] == int(np.isin(DIGITS[:N_TRAIN], (0, 2)).sum())
    bundle = build_datasets(DatasetSpec("hdf5", hdf5_path=str(path)), make_preprocessing(8))
    assert bundle.multi_label
    _, target = bundle.test[0]
    assert target.dtype == torch.float32 and target.tolist() == multi_hot(DIGITS[N_TRAIN:])[0].tolist()
    _train_one_epoch(path, names, True, tmp_path)


def test_float_pixels_are_converted_one_image_at_a_time(tmp_path, monkeypatch):
    """Reading an item touches that image only; the file is never loaded whole."""
    path = tmp_path / "f.h5"
    write_h5(path, images=lambda x: x.astype(np.float32) / 255)
    bundle = build_datasets(DatasetSpec("hdf5", hdf5_path=str(path)), make_preprocessing(8))
    reads = []
    original = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, key: reads.append(key) or original(self, key))
    bundle.train[5]
    assert reads == [5]


@pytest.mark.parametrize(("write", "words"), REFUSED)
def test_refused_variant_names_hdf5_path_and_says_why(write, words, tmp_path):
    path = tmp_path / "bad.h5"
    write(path)
    with pytest.raises(InvalidInput) as err:
        inspect_hdf5(path)
    message = str(err.value)
    assert err.value.field == "hdf5_path" and "'bad.h5'" in message and str(tmp_path) not in message
    assert all(word in message for word in words), message
    assert message.rstrip(".").count(". ") >= 1  # what is wrong, then how to fix it
    with pytest.raises(InvalidInput) as built:  # the training path refuses it the same way
        build_datasets(DatasetSpec("hdf5", hdf5_path=str(path)), make_preprocessing(8))
    assert built.value.field == "hdf5_path"


def test_missing_file_is_refused_naming_hdf5_path(tmp_path):
    with pytest.raises(InvalidInput) as err:
        inspect_hdf5(tmp_path / "nope.h5")
    assert err.value.field == "hdf5_path" and "does not exist" in str(err.value)


def _damage_last_class_name(path: Path) -> None:
    """Give the last string of the global heap (the class names' storage) a length past its heap's end."""
    raw = bytearray(path.read_bytes())
    position = raw.index(b"GCOL") + 16
    while int.from_bytes(raw[position : position + 2], "little") != len(NAMES):
        size = int.from_bytes(raw[position + 8 : position + 16], "little")
        position += 16 + -(-size // 8) * 8
    raw[position + 8] = 120
    path.write_bytes(bytes(raw))


def test_a_damaged_file_that_makes_libhdf5_spin_is_refused_in_time(tmp_path, monkeypatch, processes):
    """One flipped byte of the heap made libhdf5 loop forever inside h5py's global lock."""
    monkeypatch.setattr("engine.hdf5_layout.HDF5_READ_SECONDS", 3.0)
    path = tmp_path / "damaged.h5"
    write_h5(path, names=NAMES)
    _damage_last_class_name(path)
    started = time.monotonic()
    with pytest.raises(InvalidInput) as err:
        inspect_hdf5(path)
    assert err.value.field == "hdf5_path" and "damaged" in str(err.value)
    assert time.monotonic() - started < 20
    write_h5(path)  # the reader (and h5py in this process) still works afterwards
    assert inspect_hdf5(path).class_names == NAMES
