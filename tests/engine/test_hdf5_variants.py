"""HDF5 dataset files as other people write them, with plain h5py and numpy: each trains or is refused.

Every file holds real handwritten digits (scikit-learn's 8x8 ``load_digits``) in one of the layouts found
in the wild. An accepted file must give the same images and labels as the plain uint8 original, and
train one epoch; a refused one must raise ``InvalidInput`` naming ``hdf5_path``, with a message that
says what is wrong and how to fix it, and no server path in it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from engine.datasets import DatasetSpec, build_datasets, inspect_hdf5, make_preprocessing, preprocess
from engine.exceptions import InvalidInput
from engine.training import TrainConfig, fit

torch.set_num_threads(1)
NAMES = ["zero", "one", "two"]
N_TRAIN, N_TEST = 24, 12


def _digits(wanted: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    keep = np.isin(data.target, wanted)
    images = (data.images[keep] * (255 / 16)).round().astype(np.uint8)
    return images[: N_TRAIN + N_TEST], data.target[keep][: N_TRAIN + N_TEST]


IMAGES, DIGITS = _digits((0, 1, 2))  # uint8 N x 8 x 8, digits 0..2 (= index into NAMES)
SPLITS = {"train": slice(0, N_TRAIN), "test": slice(N_TRAIN, None)}


def _write(path: Path, images: Callable[[np.ndarray], np.ndarray] = lambda x: x,
           labels: Callable[[np.ndarray], np.ndarray] = lambda y: y, names: object = NAMES,
           test: str = "test", extra: Callable[[h5py.File], None] | None = None,
           digits: np.ndarray = DIGITS, pictures: np.ndarray = IMAGES) -> None:
    """Write the digits the way a user would: X_<split>, y_<split>, and ``class_names`` as given."""
    with h5py.File(path, "w") as f:
        for split, part in SPLITS.items():
            name = "train" if split == "train" else test
            f[f"X_{name}"] = images(pictures[part])
            f[f"y_{name}"] = labels(digits[part])
        if names is not None:
            f.attrs["class_names"] = names
        if extra is not None:
            extra(f)


def _one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(3, dtype=np.int64)[y]


def _multi_hot(y: np.ndarray) -> np.ndarray:
    # Columns zero, one, two, round: 0 and 2 are also "round", so many rows carry two labels.
    return np.concatenate([np.eye(3)[y], np.isin(y, (0, 2))[:, None]], axis=1).astype(np.float32)


def _without_names(f: h5py.File) -> None:
    del f.attrs["class_names"]


# name -> (how the file is written, the class names expected back)
ACCEPTED: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "json_string_attribute": (lambda p: _write(p, names=json.dumps(NAMES)), NAMES),
    "list_attribute_of_str": (lambda p: _write(p, names=NAMES), NAMES),
    "array_attribute_of_bytes": (lambda p: _write(p, names=np.array([n.encode() for n in NAMES])), NAMES),
    "json_bytes_attribute": (lambda p: _write(p, names=np.bytes_(json.dumps(NAMES))), NAMES),
    "json_object_attribute": (lambda p: _write(p, names=json.dumps(dict(enumerate(NAMES)))), NAMES),
    "classes_dataset_of_str": (
        lambda p: _write(p, names=None, extra=lambda f: f.create_dataset("classes", data=NAMES)), NAMES),
    "class_names_dataset_of_bytes": (
        lambda p: _write(p, names=None, extra=lambda f: f.create_dataset("class_names", data=np.array(NAMES, "S"))),
        NAMES),
    "no_class_names": (lambda p: _write(p, names=None), ["0", "1", "2"]),
    "grey_with_channel_axis": (lambda p: _write(p, images=lambda x: x[..., None]), NAMES),
    "rgb": (lambda p: _write(p, images=lambda x: np.repeat(x[..., None], 3, axis=3)), NAMES),
    "rgba_opaque": (lambda p: _write(p, images=lambda x: np.stack([x, x, x, np.full_like(x, 255)], axis=3)), NAMES),
    "float32_in_0_1": (lambda p: _write(p, images=lambda x: x.astype(np.float32) / 255), NAMES),
    "float64_in_0_255": (lambda p: _write(p, images=lambda x: x.astype(np.float64)), NAMES),
    "int64_pixels": (lambda p: _write(p, images=lambda x: x.astype(np.int64)), NAMES),
    "channels_first_rgb": (
        lambda p: _write(p, images=lambda x: np.repeat(x[:, None], 3, axis=1)), NAMES),
    "channels_first_grey_float": (
        lambda p: _write(p, images=lambda x: x[:, None].astype(np.float32) / 255), NAMES),
    "float_labels": (lambda p: _write(p, labels=lambda y: y.astype(np.float32)), NAMES),
    "label_column": (lambda p: _write(p, labels=lambda y: y[:, None]), NAMES),
    "one_hot_labels": (lambda p: _write(p, labels=_one_hot), NAMES),
    "one_hot_float_labels_without_names": (
        lambda p: _write(p, labels=lambda y: _one_hot(y).astype(np.float32), names=None), ["0", "1", "2"]),
    # Names read from string labels, with no list of names, come in alphabetical order.
    "string_labels": (lambda p: _write(p, labels=lambda y: np.array([NAMES[i] for i in y], "S"), names=None),
                      sorted(NAMES)),
    "val_split_instead_of_test": (lambda p: _write(p, test="val"), NAMES),
}


def _gzip_images(path: Path) -> None:
    with h5py.File(path, "w") as f:
        for split, part in SPLITS.items():
            f.create_dataset(f"X_{split}", data=IMAGES[part], compression="gzip", chunks=(4, 8, 8))
            f[f"y_{split}"] = DIGITS[part]
        f.attrs["class_names"] = NAMES


ACCEPTED["gzip_chunked"] = (_gzip_images, NAMES)


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
    images, digits = _digits((0, 1, 7))
    _write(tmp_path / "d.h5", names=None, digits=digits, pictures=images)
    summary = inspect_hdf5(tmp_path / "d.h5")
    assert summary.class_names == ["0", "1", "7"] and summary.class_names_from == "labels"
    bundle = build_datasets(DatasetSpec("hdf5", hdf5_path=str(tmp_path / "d.h5")), make_preprocessing(8))
    shown = [bundle.class_names[bundle.test[i][1]] for i in range(N_TEST)]
    assert shown == [str(d) for d in digits[N_TRAIN:]]  # a 7 is still called "7"
    _train_one_epoch(tmp_path / "d.h5", ["0", "1", "7"], False, tmp_path)


def test_multi_hot_rows_make_a_multi_label_dataset(tmp_path):
    path = tmp_path / "multi.h5"
    names = [*NAMES, "round"]
    _write(path, labels=_multi_hot, names=names)
    summary = inspect_hdf5(path)
    assert summary.multi_label and summary.class_names == names
    assert summary.class_counts["train"]["round"] == int(np.isin(DIGITS[:N_TRAIN], (0, 2)).sum())
    bundle = build_datasets(DatasetSpec("hdf5", hdf5_path=str(path)), make_preprocessing(8))
    assert bundle.multi_label
    _, target = bundle.test[0]
    assert target.dtype == torch.float32 and target.tolist() == _multi_hot(DIGITS[N_TRAIN:])[0].tolist()
    _train_one_epoch(path, names, True, tmp_path)


def test_float_pixels_are_converted_one_image_at_a_time(tmp_path, monkeypatch):
    """Reading an item touches that image only; the file is never loaded whole."""
    path = tmp_path / "f.h5"
    _write(path, images=lambda x: x.astype(np.float32) / 255)
    bundle = build_datasets(DatasetSpec("hdf5", hdf5_path=str(path)), make_preprocessing(8))
    reads = []
    original = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, key: reads.append(key) or original(self, key))
    bundle.train[5]
    assert reads == [5]


def _refused(name: str, write: Callable[[Path], None], words: tuple[str, ...]):
    return pytest.param(write, words, id=name)


def _no_splits(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f["X"], f["y"] = IMAGES, DIGITS


def _group_instead_of_images(path: Path) -> None:
    _write(path, extra=lambda f: (f.__delitem__("X_train"), f.create_group("X_train")))


REFUSED = [
    _refused("not_hdf5", lambda p: p.write_text("a,b\n1,2\n"), ("not an HDF5 file",)),
    _refused("no_splits", _no_splits, ("no train split", "X_train")),
    _refused("no_test_split", lambda p: _write(p, extra=lambda f: (f.__delitem__("X_test"), f.__delitem__("y_test"))),
             ("no test split", "X_val")),
    _refused("images_are_a_group", _group_instead_of_images, ("group",)),
    _refused("fewer_labels_than_images", lambda p: _write(p, labels=lambda y: y[:-1]),
             ("labels for", "one label")),
    _refused("nan_label", lambda p: _write(p, labels=lambda y: np.where(np.arange(len(y)) == 3, np.nan, y)),
             ("NaN",)),
    _refused("negative_label", lambda p: _write(p, labels=lambda y: y - 1), ("negative label -1",)),
    _refused("fractional_label", lambda p: _write(p, labels=lambda y: y + 0.5), ("fractional",)),
    _refused("label_beyond_names", lambda p: _write(p, names=NAMES[:2]), ("label 2 has no class name",)),
    _refused("one_class", lambda p: _write(p, labels=np.zeros_like, names=None), ("1 class", "two classes")),
    _refused("train_shows_one_class", lambda p: _write(p, labels=np.zeros_like), ("1 of the 3 classes",)),
    _refused("normalised_floats", lambda p: _write(p, images=lambda x: (x.astype(np.float32) - 128) / 64),
             ("range from", "before normalisation")),
    _refused("nan_pixels", lambda p: _write(p, images=lambda x: np.where(x > 200, np.nan, x.astype(np.float32))),
             ("NaN or infinite pixels",)),
    _refused("sixteen_bit_pixels", lambda p: _write(p, images=lambda x: x.astype(np.uint16) * 257),
             ("range from 0 to 65535",)),
    _refused("two_channels", lambda p: _write(p, images=lambda x: np.stack([x, x], axis=3)),
             ("neither its last axis", "C = 1 (grey)")),
    _refused("flat_rows", lambda p: _write(p, images=lambda x: x.reshape(len(x), -1)),
             ("N x H x W", "reshape")),
    _refused("text_pixels", lambda p: _write(p, images=lambda x: x.astype("S3")), ("not pixels",)),
    _refused("empty_split", lambda p: _write(p, images=lambda x: x[:0], labels=lambda y: y[:0]), ("empty",)),
    _refused("comma_separated_names", lambda p: _write(p, names="zero,one,two"), ("not a list", "JSON list")),
    _refused("repeated_names", lambda p: _write(p, names=["zero", "one", "one"]), ("repeat",)),
    _refused("name_with_slash", lambda p: _write(p, names=["zero", "one", "../two"]), ("without /",)),
    _refused("one_hot_wider_than_names", lambda p: _write(p, labels=lambda y: np.eye(5, dtype=int)[y]),
             ("5 columns for 3 class names",)),
    _refused("rows_that_are_not_0_1", lambda p: _write(p, labels=lambda y: np.eye(3)[y] * 2), ("not all 0 or 1",)),
    _refused("string_labels_unknown_to_names",
             lambda p: _write(p, labels=lambda y: np.array(["zero", "one", "three"], "S")[y]),
             ("['three'] are not among the class names",)),
    _refused("multi_hot_train_index_test", lambda p: _write(
        p, names=[*NAMES, "round"], labels=lambda y: _multi_hot(y) if len(y) == N_TRAIN else y),
        ("multi-hot rows but the test labels",)),
]


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


def test_a_damaged_file_that_makes_libhdf5_spin_is_refused_in_time(tmp_path, monkeypatch):
    """One flipped byte of the heap made libhdf5 loop forever inside h5py's global lock."""
    monkeypatch.setattr("engine.datasets.HDF5_READ_SECONDS", 3.0)
    path = tmp_path / "damaged.h5"
    _write(path, names=NAMES)
    _damage_last_class_name(path)
    started = time.monotonic()
    with pytest.raises(InvalidInput) as err:
        inspect_hdf5(path)
    assert err.value.field == "hdf5_path" and "damaged" in str(err.value)
    assert time.monotonic() - started < 20
    _write(path)  # the reader (and h5py in this process) still works afterwards
    assert inspect_hdf5(path).class_names == NAMES
