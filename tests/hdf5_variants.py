"""HDF5 dataset files as other people write them, with plain h5py and numpy: the catalogue of layouts.

Every file holds real handwritten digits (scikit-learn's 8x8 ``load_digits``). ``ACCEPTED`` maps a layout
found in the wild to its writer and the class names expected back; ``REFUSED`` lists layouts that must be
refused, with the words the refusal must contain. The engine tests and the fuzz tests share them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.datasets import load_digits

NAMES = ["zero", "one", "two"]
N_TRAIN, N_TEST = 24, 12


def digits_of(wanted: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    keep = np.isin(data.target, wanted)
    images = (data.images[keep] * (255 / 16)).round().astype(np.uint8)
    return images[: N_TRAIN + N_TEST], data.target[keep][: N_TRAIN + N_TEST]


IMAGES, DIGITS = digits_of((0, 1, 2))  # uint8 N x 8 x 8, digits 0..2 (= index into NAMES)
SPLITS = {"train": slice(0, N_TRAIN), "test": slice(N_TRAIN, None)}


def write_h5(path: Path, images: Callable[[np.ndarray], np.ndarray] = lambda x: x,
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


def one_hot(y: np.ndarray) -> np.ndarray:
    return np.eye(3, dtype=np.int64)[y]


def multi_hot(y: np.ndarray) -> np.ndarray:
    # Columns zero, one, two, round: 0 and 2 are also "round", so many rows carry two labels.
    return np.concatenate([np.eye(3)[y], np.isin(y, (0, 2))[:, None]], axis=1).astype(np.float32)


def _without_names(f: h5py.File) -> None:
    del f.attrs["class_names"]


# name -> (how the file is written, the class names expected back)
ACCEPTED: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "json_string_attribute": (lambda p: write_h5(p, names=json.dumps(NAMES)), NAMES),
    "list_attribute_of_str": (lambda p: write_h5(p, names=NAMES), NAMES),
    "array_attribute_of_bytes": (lambda p: write_h5(p, names=np.array([n.encode() for n in NAMES])), NAMES),
    "json_bytes_attribute": (lambda p: write_h5(p, names=np.bytes_(json.dumps(NAMES))), NAMES),
    "json_object_attribute": (lambda p: write_h5(p, names=json.dumps(dict(enumerate(NAMES)))), NAMES),
    "classes_dataset_of_str": (
        lambda p: write_h5(p, names=None, extra=lambda f: f.create_dataset("classes", data=NAMES)), NAMES),
    "class_names_dataset_of_bytes": (
        lambda p: write_h5(p, names=None, extra=lambda f: f.create_dataset("class_names", data=np.array(NAMES, "S"))),
        NAMES),
    "no_class_names": (lambda p: write_h5(p, names=None), ["0", "1", "2"]),
    "grey_with_channel_axis": (lambda p: write_h5(p, images=lambda x: x[..., None]), NAMES),
    "rgb": (lambda p: write_h5(p, images=lambda x: np.repeat(x[..., None], 3, axis=3)), NAMES),
    "rgba_opaque": (lambda p: write_h5(p, images=lambda x: np.stack([x, x, x, np.full_like(x, 255)], axis=3)), NAMES),
    "float32_in_0_1": (lambda p: write_h5(p, images=lambda x: x.astype(np.float32) / 255), NAMES),
    "float64_in_0_255": (lambda p: write_h5(p, images=lambda x: x.astype(np.float64)), NAMES),
    "int64_pixels": (lambda p: write_h5(p, images=lambda x: x.astype(np.int64)), NAMES),
    "channels_first_rgb": (
        lambda p: write_h5(p, images=lambda x: np.repeat(x[:, None], 3, axis=1)), NAMES),
    "channels_first_grey_float": (
        lambda p: write_h5(p, images=lambda x: x[:, None].astype(np.float32) / 255), NAMES),
    "float_labels": (lambda p: write_h5(p, labels=lambda y: y.astype(np.float32)), NAMES),
    "label_column": (lambda p: write_h5(p, labels=lambda y: y[:, None]), NAMES),
    "one_hot_labels": (lambda p: write_h5(p, labels=one_hot), NAMES),
    "one_hot_float_labels_without_names": (
        lambda p: write_h5(p, labels=lambda y: one_hot(y).astype(np.float32), names=None), ["0", "1", "2"]),
    # Names read from string labels, with no list of names, come in alphabetical order.
    "string_labels": (lambda p: write_h5(p, labels=lambda y: np.array([NAMES[i] for i in y], "S"), names=None),
                      sorted(NAMES)),
    "val_split_instead_of_test": (lambda p: write_h5(p, test="val"), NAMES),
}


def _gzip_images(path: Path) -> None:
    with h5py.File(path, "w") as f:
        for split, part in SPLITS.items():
            f.create_dataset(f"X_{split}", data=IMAGES[part], compression="gzip", chunks=(4, 8, 8))
            f[f"y_{split}"] = DIGITS[part]
        f.attrs["class_names"] = NAMES


ACCEPTED["gzip_chunked"] = (_gzip_images, NAMES)


def _refused(name: str, write: Callable[[Path], None], words: tuple[str, ...]):
    return pytest.param(write, words, id=name)


def _no_splits(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f["X"], f["y"] = IMAGES, DIGITS


def _group_instead_of_images(path: Path) -> None:
    write_h5(path, extra=lambda f: (f.__delitem__("X_train"), f.create_group("X_train")))


REFUSED = [
    _refused("not_hdf5", lambda p: p.write_text("a,b\n1,2\n"), ("not an HDF5 file",)),
    _refused("no_splits", _no_splits, ("no train split", "X_train")),
    _refused("no_test_split", lambda p: write_h5(p, extra=lambda f: (f.__delitem__("X_test"), f.__delitem__("y_test"))),
             ("no test split", "X_val")),
    _refused("images_are_a_group", _group_instead_of_images, ("group",)),
    _refused("fewer_labels_than_images", lambda p: write_h5(p, labels=lambda y: y[:-1]),
             ("labels for", "one label")),
    _refused("nan_label", lambda p: write_h5(p, labels=lambda y: np.where(np.arange(len(y)) == 3, np.nan, y)),
             ("NaN",)),
    _refused("negative_label", lambda p: write_h5(p, labels=lambda y: y - 1), ("negative label -1",)),
    _refused("fractional_label", lambda p: write_h5(p, labels=lambda y: y + 0.5), ("fractional",)),
    _refused("label_beyond_names", lambda p: write_h5(p, names=NAMES[:2]), ("label 2 has no class name",)),
    _refused("one_class", lambda p: write_h5(p, labels=np.zeros_like, names=None), ("1 class", "two classes")),
    _refused("train_shows_one_class", lambda p: write_h5(p, labels=np.zeros_like), ("1 of the 3 classes",)),
    _refused("normalised_floats", lambda p: write_h5(p, images=lambda x: (x.astype(np.float32) - 128) / 64),
             ("range from", "before normalisation")),
    _refused("nan_pixels", lambda p: write_h5(p, images=lambda x: np.where(x > 200, np.nan, x.astype(np.float32))),
             ("NaN or infinite pixels",)),
    _refused("sixteen_bit_pixels", lambda p: write_h5(p, images=lambda x: x.astype(np.uint16) * 257),
             ("range from 0 to 65535",)),
    _refused("two_channels", lambda p: write_h5(p, images=lambda x: np.stack([x, x], axis=3)),
             ("neither its last axis", "C = 1 (grey)")),
    _refused("flat_rows", lambda p: write_h5(p, images=lambda x: x.reshape(len(x), -1)),
             ("N x H x W", "reshape")),
    _refused("text_pixels", lambda p: write_h5(p, images=lambda x: x.astype("S3")), ("not pixels",)),
    _refused("empty_split", lambda p: write_h5(p, images=lambda x: x[:0], labels=lambda y: y[:0]), ("empty",)),
    _refused("comma_separated_names", lambda p: write_h5(p, names="zero,one,two"), ("not a list", "JSON list")),
    _refused("repeated_names", lambda p: write_h5(p, names=["zero", "one", "one"]), ("repeat",)),
    _refused("name_with_slash", lambda p: write_h5(p, names=["zero", "one", "../two"]), ("without /",)),
    _refused("one_hot_wider_than_names", lambda p: write_h5(p, labels=lambda y: np.eye(5, dtype=int)[y]),
             ("5 columns for 3 class names",)),
    _refused("rows_that_are_not_0_1", lambda p: write_h5(p, labels=lambda y: np.eye(3)[y] * 2), ("not all 0 or 1",)),
    _refused("string_labels_unknown_to_names",
             lambda p: write_h5(p, labels=lambda y: np.array(["zero", "one", "three"], "S")[y]),
             ("['three'] are not among the class names",)),
    _refused("multi_hot_train_index_test", lambda p: write_h5(
        p, names=[*NAMES, "round"], labels=lambda y: multi_hot(y) if len(y) == N_TRAIN else y),
        ("multi-hot rows but the test labels",)),
]
