"""Datasets for training: HDF5 files, class-per-folder image trees and the multi-label ``newdata/`` set.

Every dataset yields ``(image tensor C x H x W float32, target)``; the target is a class index (int)
or, multi-label, a float 0/1 vector. How a decoded RGB image becomes that tensor is described by a
plain *preprocessing* dict (:func:`make_preprocessing`) that the checkpoint stores, so inference
applies exactly the same steps (:func:`preprocess`). Train-time augmentation is part of the dict but
only the training split applies it; its randomness comes from torch's generator, which the training
loop seeds (and the DataLoader seeds per worker), so a run is reproducible.

Dataset kinds are registered with :func:`register_dataset`; :func:`build_datasets` turns a typed
:class:`DatasetSpec` into train/test datasets with their class names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from engine import labels as labelsets
from engine.dataset_kinds import (  # noqa: F401
    DATASET_KINDS,
    IMAGE_SUFFIXES,
    class_folders,
    image_files,
    list_dataset_kinds,
)
from engine.exceptions import Cancelled, InvalidInput
from engine.hdf5 import open_hdf5
from engine.hdf5_layout import (  # noqa: F401  (re-exported: the HDF5 reader's public names)
    COPY_BUFFER_BYTES,
    HDF5_READ_SECONDS,
    MAX_IMAGE_READ_BYTES,
    MAX_LABEL_VALUES,
    Hdf5Summary,
    _check_budget,
    _Hdf5Layout,
    _image_uint8,
    _open_hdf5,
    _refusal,
    inspect_hdf5,
)
from engine.images import MAX_IMAGE_SIDE, open_image, to_rgb_array

# ImageNet statistics: right for the pretrained models and harmless for the others. Grey uses the
# luma-weighted mean of the three channels.
RGB_MEAN, RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = (0.449,), (0.226,)
PREPROCESSING_VERSION = 1


# ------------------------------------------------------------------------------------ preprocessing


def make_preprocessing(
    image_size: int | Sequence[int],
    grey: bool = False,
    augment: dict[str, float] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Describe the preprocessing of a run as a plain dict (stored in checkpoints).

    Args:
        image_size: output side, or ``(height, width)``.
        grey: convert to one grey channel (the model is then built with ``in_chans=1``).
        augment: None, or ``{"hflip": probability, "max_shift": fraction of the side}``; training split only,
            applied to whole batches by :func:`augment_batch`. Runs name a policy
            (:data:`engine.run_config.AUGMENT_POLICIES`).
        mean: per-channel mean after scaling to [0, 1]; default ImageNet's.
        std: per-channel standard deviation; default ImageNet's.

    Raises:
        InvalidInput: a size below 1 (field ``image_size``) or a bad augmentation (field ``augment``).
    """
    size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
    if len(size) != 2 or not all(
        isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_IMAGE_SIDE for s in size
    ):
        raise InvalidInput(
            f"image_size must be an integer side or (height, width) in 1..{MAX_IMAGE_SIDE}, got {image_size!r}",
            field="image_size",
        )
    channels = 1 if grey else 3
    mean = list(mean if mean is not None else (GREY_MEAN if grey else RGB_MEAN))
    std = list(std if std is not None else (GREY_STD if grey else RGB_STD))
    assert len(mean) == len(std) == channels, "mean/std must have one value per channel"
    return {
        "version": PREPROCESSING_VERSION,
        "image_size": size,
        "grey": bool(grey),
        "channels": channels,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "interpolation": "area-down-linear-up",
        "augment": _augment_spec(augment),
    }


def _augment_spec(augment: dict | None) -> dict[str, float] | None:
    if augment is None or augment is False:
        return None
    if (
        not isinstance(augment, dict)
        or set(augment) != {"hflip", "max_shift"}
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in augment.values())
        or not 0 <= augment["hflip"] <= 1
        or not 0 <= augment["max_shift"] < 0.5
    ):
        raise InvalidInput(
            f"augment must be None or {{'hflip': 0..1, 'max_shift': 0..0.5}}, got {augment!r}", field="augment"
        )
    return {key: float(value) for key, value in augment.items()}


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Return an H x W x 3 uint8 view of a grey (H x W or H x W x 1), RGB or RGBA (onto white) array."""
    assert image.dtype == np.uint8, f"images must be uint8, got {image.dtype}"
    if image.ndim == 2 or image.shape[2] == 1:
        return np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    if image.shape[2] == 4:  # same rule as engine.images.to_rgb_array: transparency becomes white
        alpha = image[..., 3:].astype(np.float32) / 255
        return (image[..., :3] * alpha + 255 * (1 - alpha) + 0.5).astype(np.uint8)
    return image


def preprocess(image: np.ndarray, preprocessing: dict[str, Any]) -> torch.Tensor:
    """Turn a decoded uint8 image into the model's input tensor (C x H x W float32).

    Steps, always in this order: to RGB, to grey (if asked), resize (area when shrinking, bilinear
    when enlarging), scale to [0, 1], normalise with mean/std.
    """
    rgb = as_rgb(image)
    pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if preprocessing["grey"] else rgb
    height, width = preprocessing["image_size"]
    if pixels.shape[:2] != (height, width):
        shrink = height <= pixels.shape[0] and width <= pixels.shape[1]
        pixels = cv2.resize(
            pixels, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(255)
    tensor = tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)
    mean = torch.tensor(preprocessing["mean"]).view(-1, 1, 1)
    std = torch.tensor(preprocessing["std"]).view(-1, 1, 1)
    return (tensor - mean) / std


def augment_batch(
    images: torch.Tensor, spec: dict[str, float], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Train-time augmentation of a whole N x C x H x W batch in one resampling, on the batch's device.

    Each image is mirrored left-right with probability ``spec["hflip"]`` and shifted by a whole number of
    pixels, up to ``spec["max_shift"]`` of its side in each direction, its border reflected into the gap.
    The draws come from ``generator`` (CPU), so a seeded run augments alike on any device.
    """
    n, _, height, width = images.shape
    reach_y, reach_x = int(height * spec["max_shift"]), int(width * spec["max_shift"])
    flips = torch.rand(n, generator=generator) < spec["hflip"]
    dy = torch.randint(-reach_y, reach_y + 1, (n,), generator=generator)
    dx = torch.randint(-reach_x, reach_x + 1, (n,), generator=generator)
    if not (flips.any() or dy.any() or dx.any()):
        return images
    # Output pixel centre x (in [-1, 1], corners excluded) reads the input at sx * x + 2 dx / W: a mirror and
    # a whole-pixel shift land on pixel centres, so nearest sampling copies pixels exactly.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1.0 - 2.0 * flips.float()
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2.0 * dx / width
    theta[:, 1, 2] = 2.0 * dy / height
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="reflection", align_corners=False)


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to RGB uint8 exactly as an upload is decoded for prediction (EXIF, alpha)."""
    return to_rgb_array(open_image(Path(path).read_bytes(), field=str(path)))


class _Preprocessed(Dataset):
    """Shared tail of the datasets: decoded image -> tensor. ``train`` marks the split that the training loop
    augments, batch by batch (:func:`augment_batch`)."""

    multi_label = False

    def __init__(self, preprocessing: dict[str, Any], train: bool):
        self.preprocessing = preprocessing
        self.train = train

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        return preprocess(image, self.preprocessing)

    @property
    def augmentation(self) -> dict[str, float] | None:
        """The augmentation its batches get: the preprocessing's, on the training split only."""
        return self.preprocessing.get("augment") if self.train else None


class ArrayDataset(_Preprocessed):
    """In-memory images: uint8 N x H x W (x C), with class indices (N,) or 0/1 labels (N x L)."""

    def __init__(
        self,
        images: np.ndarray,
        targets: Sequence[int] | np.ndarray,
        preprocessing: dict[str, Any],
        train: bool = False,
    ):
        super().__init__(preprocessing, train)
        targets = np.asarray(targets)
        assert len(images) == len(targets) and targets.ndim in (1, 2)
        self.multi_label = targets.ndim == 2
        self.images = images
        self.targets = torch.as_tensor(targets, dtype=torch.float32 if self.multi_label else torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._tensor(self.images[index]), self.targets[index]


class HDF5Dataset(_Preprocessed):
    """One split of an HDF5 dataset file (see :func:`inspect_hdf5` for the layouts it reads).

    Images are read and converted to uint8 one at a time; the file is opened lazily in each process
    (h5py handles must not cross a fork), so the dataset works with DataLoader workers.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        preprocessing: dict[str, Any] | None = None,
        train: bool | None = None,
        layout: _Hdf5Layout | None = None,
    ):
        if split not in ("train", "test"):
            raise InvalidInput(f"split must be 'train' or 'test', got {split!r}", field="split")
        self.path, self.split = Path(path), split
        layout = layout or _open_hdf5(self.path)
        self.class_names = list(layout.summary.class_names)
        self.multi_label = layout.summary.multi_label
        self._source = layout.splits[split]
        self.targets = self._source.targets
        height, width, _ = self._source.image_format.shape
        super().__init__(
            preprocessing or make_preprocessing([height, width]),
            split == "train" if train is None else train,
        )
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_pid": None}

    def _images(self) -> h5py.Dataset:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = open_hdf5(self.path), os.getpid()
        return self._file[self._source.images]

    def __len__(self) -> int:
        return len(self.targets)

    def item_id(self, index: int) -> str:
        """How a report names item ``index``: ``<split>/<row>`` of the file."""
        return f"{self.split}/{index}"

    def image(self, index: int) -> np.ndarray:
        """The stored image ``index`` as H x W (x C) uint8, before any preprocessing."""
        return _image_uint8(np.asarray(self._images()[index]), self._source.image_format)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        target = torch.from_numpy(self.targets[index]) if self.multi_label else int(self.targets[index])
        return self._tensor(self.image(index)), target


def write_canonical_hdf5(
    source: str | os.PathLike,
    target: str | os.PathLike,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    chunk: int = 256,
    max_bytes: int | None = None,
) -> Hdf5Summary:
    """Rewrite a single-label HDF5 dataset that :func:`inspect_hdf5` reads in this project's own layout.

    The result holds ``X_train``/``X_test`` as uint8 N x H x W x C (channels last), ``y_train``/``y_test``
    as int64 class indices and ``class_names`` as a JSON attribute, whatever the source used (floats,
    channels first, one-hot rows, ``X_val``, names in a dataset...). Images are copied ``chunk`` at a time,
    fewer when they would take more than ``COPY_BUFFER_BYTES``. The result's size is the summary's
    ``canonical_bytes``: check it against the free disk first.

    Args:
        source: the file to read (checked as :func:`inspect_hdf5` checks it).
        target: the file to write.
        on_progress: ``(images done, images total)``.
        should_stop: polled between chunks.
        chunk: the most images copied at a time.
        max_bytes: refuse, before writing anything, a source whose result would exceed it.

    Raises:
        InvalidInput: (field ``hdf5_path``) the source is unreadable or over ``max_bytes``, or multi-label
            (multi-hot rows).
        Cancelled: ``should_stop()`` turned true; ``target`` may then be incomplete (the caller removes it).
    """
    layout = _open_hdf5(source)
    summary = layout.summary
    _check_budget(Path(source), layout, max_bytes)
    if summary.multi_label:
        raise _refusal(Path(source), "holds multi-hot labels (a multi-label dataset), which only the annotated "
                       "images take", "Import multi-label data as a zip of images with a CSV or COCO JSON")
    total, done = sum(len(split.targets) for split in layout.splits.values()), 0
    with h5py.File(target, "w") as out:
        for split in ("train", "test"):
            data = HDF5Dataset(source, split, layout=layout)
            height, width, channels = data._source.image_format.shape
            images = out.create_dataset(f"X_{split}", (len(data), height, width, channels), np.uint8)
            out[f"y_{split}"] = data.targets.astype(np.int64)
            step = max(1, min(chunk, COPY_BUFFER_BYTES // (height * width * channels)))
            for start in range(0, len(data), step):
                if should_stop is not None and should_stop():
                    raise Cancelled()
                stop = min(start + step, len(data))
                images[start:stop] = np.stack([data.image(i).reshape(height, width, channels)
                                               for i in range(start, stop)])
                done += stop - start
                if on_progress is not None:
                    on_progress(done, total)
        out.attrs["class_names"] = json.dumps(summary.class_names)
    return summary


class ImageFolderDataset(_Preprocessed):
    """``<root>/<class>/*.png|jpg|jpeg``: one folder per class, classes in sorted order by default (regular files
    in real folders only: :func:`class_folders`, :func:`image_files`)."""

    def __init__(
        self,
        root: str | os.PathLike,
        preprocessing: dict[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        train: bool = False,
        field: str = "root",
    ):
        root = Path(root)
        if not root.is_dir():
            raise InvalidInput(f"image folder {str(root)!r} does not exist", field=field)
        folders = class_folders(root)
        self.class_names = list(class_names) if class_names is not None else folders
        unknown = sorted(set(folders) - set(self.class_names))
        if unknown:
            raise InvalidInput(
                f"{str(root)!r} has classes unknown to the training set: {unknown}", field=field
            )
        index = {name: i for i, name in enumerate(self.class_names)}
        self.samples = [(path, index[folder]) for folder in folders for path in image_files(root / folder)]
        if not self.samples:
            raise InvalidInput(
                f"{str(root)!r} holds no {'/'.join(IMAGE_SUFFIXES)} images in class folders", field=field
            )
        self.targets = [target for _, target in self.samples]
        self.root = root
        super().__init__(preprocessing or make_preprocessing(224), train)

    def item_id(self, index: int) -> str:
        """How a report names item ``index``: its path under the root, ``<class>/<file>``."""
        return self.samples[index][0].relative_to(self.root).as_posix()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        return self._tensor(read_image_file(path)), target


class NewdataDataset(_Preprocessed):
    """Multi-label images: ``(path, labels)`` items (from :func:`engine.labels.labelled_images`)."""

    multi_label = True

    def __init__(
        self,
        items: Sequence[tuple[Path, Sequence[str]]],
        label_set: Sequence[str],
        preprocessing: dict[str, Any],
        train: bool = False,
    ):
        super().__init__(preprocessing, train)
        self.class_names = list(label_set)
        index = {label: i for i, label in enumerate(self.class_names)}
        self.items = [(Path(path), [index[lab] for lab in labels if lab in index]) for path, labels in items]

    def __len__(self) -> int:
        return len(self.items)

    def items_with_labels(self) -> list[tuple[Path, list[str]]]:
        """Return ``(image path, label names)`` per item, in dataset order."""
        return [(path, [self.class_names[i] for i in indices]) for path, indices in self.items]

    def target(self, index: int) -> torch.Tensor:
        """Return the 0/1 label vector of one item."""
        vector = torch.zeros(len(self.class_names))
        vector[self.items[index][1]] = 1.0
        return vector

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._tensor(read_image_file(self.items[index][0])), self.target(index)


# ------------------------------------------------------------------------------------ dataset kinds


@dataclass(frozen=True)
class DatasetSpec:
    """Where a run's data comes from (paths already resolved and checked by the caller).

    Attributes:
        kind: a registered kind: ``"hdf5"``, ``"custom"`` (image folders) or ``"newdata"`` (multi-label).
        hdf5_path: the HDF5 file (kind ``hdf5``).
        trainset_dir: training image folders (kind ``custom``).
        testset_dir: test image folders (kind ``custom``).
        newdata_dir: the ``newdata`` folder (kind ``newdata``).
        val_fraction: share of ``newdata`` images held out for validation.
        split_seed: seed of the ``newdata`` train/validation split.
    """

    kind: str
    hdf5_path: str | None = None
    trainset_dir: str | None = None
    testset_dir: str | None = None
    newdata_dir: str | None = None
    val_fraction: float = 0.2
    split_seed: int = 0

    def __post_init__(self):
        if self.kind not in _DATASET_KINDS:
            raise InvalidInput(
                f"unknown dataset {self.kind!r}; known: {', '.join(sorted(_DATASET_KINDS))}", field="dataset"
            )
        for field in _DATASET_KINDS[self.kind][1]:
            if not getattr(self, field):
                raise InvalidInput(f"dataset {self.kind!r} needs {field}", field=field)


@dataclass(frozen=True)
class DatasetBundle:
    """What :func:`build_datasets` returns."""

    train: Dataset
    test: Dataset
    class_names: list[str]
    multi_label: bool


_DATASET_KINDS: dict[str, tuple[Callable[[DatasetSpec, dict], DatasetBundle], tuple[str, ...]]] = {}


def register_dataset(kind: str) -> Callable:
    """Decorator registering a builder ``fn(spec, preprocessing) -> DatasetBundle`` for a dataset kind.

    Args:
        kind: the ``dataset`` value of a training request, declared in
            :data:`engine.dataset_kinds.DATASET_KINDS` with the :class:`DatasetSpec` fields it needs.
    """
    assert kind in DATASET_KINDS, f"dataset kind {kind!r} is not declared in engine.dataset_kinds"

    def decorate(
        fn: Callable[[DatasetSpec, dict], DatasetBundle],
    ) -> Callable[[DatasetSpec, dict], DatasetBundle]:
        _DATASET_KINDS[kind] = (fn, DATASET_KINDS[kind])
        return fn

    return decorate


def build_datasets(spec: DatasetSpec, preprocessing: dict[str, Any]) -> DatasetBundle:
    """Build the train and test datasets of ``spec``; the training one applies the augmentation.

    Raises:
        InvalidInput: missing files or folders, or data without images, naming the spec field.
    """
    return _DATASET_KINDS[spec.kind][0](spec, preprocessing)


@register_dataset("hdf5")
def _hdf5(spec: DatasetSpec, preprocessing: dict) -> DatasetBundle:
    layout = _open_hdf5(spec.hdf5_path)  # read and checked once for both splits
    train = HDF5Dataset(spec.hdf5_path, "train", preprocessing, layout=layout)
    test = HDF5Dataset(spec.hdf5_path, "test", preprocessing, layout=layout)
    return DatasetBundle(train, test, train.class_names, train.multi_label)


@register_dataset("custom")
def _custom(spec: DatasetSpec, preprocessing: dict) -> DatasetBundle:
    train = ImageFolderDataset(spec.trainset_dir, preprocessing, train=True, field="trainset_dir")
    test = ImageFolderDataset(spec.testset_dir, preprocessing, train.class_names, field="testset_dir")
    return DatasetBundle(train, test, train.class_names, False)


@register_dataset("newdata")
def _newdata(spec: DatasetSpec, preprocessing: dict) -> DatasetBundle:
    label_set = labelsets.read_label_set(spec.newdata_dir)
    items = labelsets.labelled_images(spec.newdata_dir)
    if len(items) < 2:
        raise InvalidInput(
            f"{spec.newdata_dir!r} has {len(items)} labelled images; at least 2 are needed",
            field="newdata_dir",
        )
    train_items, val_items = labelsets.split_multilabel(items, label_set, spec.val_fraction, spec.split_seed)
    return DatasetBundle(
        NewdataDataset(train_items, label_set, preprocessing, train=True),
        NewdataDataset(val_items, label_set, preprocessing),
        label_set,
        True,
    )
