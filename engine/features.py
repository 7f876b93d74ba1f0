"""A cache of backbone features, so that head-only transfer learning costs one backbone pass per dataset.

The features of an image are what the model's classifier (``get_classifier()``) receives: they are
captured with a forward pre-hook, so every model of the zoo serves, whatever its architecture. A cache
file is HDF5 (``features``: N x D float32, ``targets``: the dataset's targets), named by a SHA-256 over
everything that decides its contents: the model name, the backbone's tensors (so other weights never
reuse it), the preprocessing, the number of augmented copies and their seed, and the exact input
tensors and targets the dataset yields. Changing one image, its label, the image size or the weights
gives another key.

Hashing the inputs means reading the dataset twice on a miss (decoding is cheap next to the backbone)
and once on a hit, with no backbone pass at all.

A dataset of files that grows (the annotation set) names its items instead: ``item_keys()`` (a hash of
each item's input file) and ``target(i)``. Without augmentation its features are then cached
per item (``items/<backbone and preprocessing key>/<item key>.npy``), so a dataset that gained 20 images
costs 20 backbone passes, not a pass over all of them.

Jobs that need the same features at the same time (a study's parallel head-only trials, on one machine
or on several sharing DATA_DIR) compute them once: the first holds a lock file beside the entry while it
computes, and the others wait for it, then read what it wrote.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from engine.datasets import augment_batch
from engine.exceptions import Cancelled
from engine.hdf5 import open_hdf5
from engine.models.build import head_parameter_names

CACHE_FORMAT = "pytorch-automation-studio/features"
CACHE_VERSION = 1


@dataclass(frozen=True)
class FeatureSet:
    """Backbone features of a dataset (``copies`` passes stacked) and where they are cached."""

    features: np.ndarray
    targets: np.ndarray
    path: Path
    from_cache: bool


def backbone_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's name and every tensor but the classifier's."""
    digest = hashlib.sha256(type(model).__name__.encode())
    head = head_parameter_names(model)
    for key, value in model.state_dict().items():
        if key not in head:
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def classifier_inputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While active, every forward pass appends the classifier's input (batch x features) to the list."""
    captured: list[torch.Tensor] = []

    def grab(_module, args):
        captured.append(args[0].detach().flatten(1).float().cpu())

    handle = model.get_classifier().register_forward_pre_hook(grab)
    try:
        yield captured
    finally:
        handle.remove()


def _passes(dataset: Dataset, copies: int, seed: int, batch_size: int) -> Iterator[tuple[torch.Tensor, Any]]:
    # A seeded generator per copy makes every pass, and so the hash and the features, reproducible.
    spec = getattr(dataset, "augmentation", None)
    for copy in range(copies):
        generator = torch.Generator().manual_seed(seed + copy)
        for images, targets in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
            yield (augment_batch(images, spec, generator) if spec else images), targets


def dataset_key(
    model_name: str,
    model: nn.Module,
    dataset: Dataset,
    copies: int = 1,
    seed: int = 0,
    batch_size: int = 32,
) -> str:
    """The cache key of ``dataset`` through ``model``'s backbone (see the module's docstring)."""
    header = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "model": model_name,
        "backbone": backbone_fingerprint(model),
        "preprocessing": getattr(dataset, "preprocessing", None),
        "train": bool(getattr(dataset, "train", False)),
        "copies": copies,
        "seed": seed,
    }
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for images, targets in _passes(dataset, copies, seed, batch_size):
        digest.update(images.contiguous().numpy().tobytes())
        digest.update(torch.as_tensor(targets).contiguous().numpy().tobytes())
    return digest.hexdigest()


def compute_features(
    model: nn.Module,
    dataset: Dataset,
    copies: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the backbone (eval mode, no gradients) over ``copies`` passes of ``dataset``.

    Returns:
        ``(features, targets)``: N·copies x D float32 and the matching targets.

    Raises:
        Cancelled: ``should_stop()`` turned true (polled every batch).
    """
    model.eval().to(device)
    total, done, features, targets = len(dataset) * copies, 0, [], []
    with classifier_inputs(model) as captured, torch.inference_mode():
        for images, batch_targets in _passes(dataset, copies, seed, batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped while computing features, after {done} of {total} images")
            model(images.to(device))
            targets.append(torch.as_tensor(batch_targets).numpy())
            done += len(images)
            if on_progress is not None:
                on_progress(done, total)
    features = torch.cat(captured).numpy() if captured else np.zeros((0, 0), np.float32)
    return features.astype(np.float32), np.concatenate(targets) if targets else np.zeros(0)


def cached_features(
    model_name: str,
    model: nn.Module,
    dataset: Dataset,
    cache_dir: str | os.PathLike,
    copies: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FeatureSet:
    """The backbone features of ``dataset``: read from ``cache_dir`` or computed once and written there.

    Args:
        model_name: the registry name (part of the key and of the file's attributes).
        model: the model whose classifier input is the feature.
        dataset: yields ``(image tensor, target)``.
        cache_dir: folder of the ``<key>.h5`` files.
        copies: passes over the dataset (more than one only makes sense with augmentation).
        seed: seed of the first pass's augmentation (``seed + i`` for pass i).
        batch_size: images per backbone pass.
        device: where the backbone runs.
        on_progress: ``(images done, images total)`` while computing.
        should_stop: polled every batch while computing.
    """
    if copies == 1 and _named_items(dataset):
        return _per_item_features(model_name, model, dataset, Path(cache_dir), batch_size, device, on_progress,
                                  should_stop)
    key = dataset_key(model_name, model, dataset, copies, seed, batch_size)
    path = Path(cache_dir) / f"{key}.h5"
    if not path.is_file():
        with _computing_alone(path.with_name(f".{key}.lock"), should_stop):
            if not path.is_file():  # nobody wrote it while this job waited
                features, targets = compute_features(model, dataset, copies, seed, batch_size, device, on_progress,
                                                     should_stop)
                _write(path, features, targets, {"model": model_name, "copies": copies, "seed": seed, "key": key})
                return FeatureSet(features, targets, path, False)
    with open_hdf5(path, field=None) as handle:
        return FeatureSet(handle["features"][()], handle["targets"][()], path, True)


def _pause() -> None:
    time.sleep(0.2)


@contextlib.contextmanager
def _computing_alone(lock_path: Path, should_stop: Callable[[], bool] | None) -> Iterator[None]:
    """Hold ``lock_path`` (an advisory lock, released if the process dies) while computing a cache entry.

    Raises:
        Cancelled: ``should_stop()`` turned true while another job held the lock.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if should_stop is not None and should_stop():
                    raise Cancelled("stopped while another job computed the same features") from None
                _pause()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write(path: Path, features: np.ndarray, targets: np.ndarray, attrs: dict[str, Any]) -> None:
    # Written under a temporary name and renamed: a killed worker never leaves a truncated cache entry.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as handle:
            handle.create_dataset("features", data=features)
            handle.create_dataset("targets", data=targets)
            handle.attrs.update({"format": CACHE_FORMAT, "format_version": CACHE_VERSION, **attrs})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _named_items(dataset: Dataset) -> bool:
    """Whether ``dataset`` names its items and yields the same tensor for an item every time (no augmentation)."""
    return hasattr(dataset, "item_keys") and hasattr(dataset, "target") and not getattr(dataset, "augmentation", None)


def _per_item_features(model_name: str, model: nn.Module, dataset: Dataset, cache_dir: Path, batch_size: int,
                       device, on_progress, should_stop) -> FeatureSet:
    header = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "model": model_name,
              "backbone": backbone_fingerprint(model), "preprocessing": getattr(dataset, "preprocessing", None)}
    folder = cache_dir / "items" / hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()[:32]
    keys = list(dataset.item_keys())
    missing = [i for i, key in enumerate(keys) if not (folder / f"{key}.npy").is_file()]
    if missing:
        with _computing_alone(folder.with_name(f".{folder.name}.lock"), should_stop):
            missing = [i for i in missing if not (folder / f"{keys[i]}.npy").is_file()]
            if missing:
                computed, _ = compute_features(model, Subset(dataset, missing), 1, 0, batch_size, device,
                                               on_progress, should_stop)
                folder.mkdir(parents=True, exist_ok=True)
                for index, row in zip(missing, computed, strict=True):
                    _save_row(folder / f"{keys[index]}.npy", row)
    features = np.stack([np.load(folder / f"{key}.npy") for key in keys]).astype(np.float32)
    targets = np.stack([torch.as_tensor(dataset.target(i)).numpy() for i in range(len(keys))])
    return FeatureSet(features, targets, folder, not missing)


def _save_row(path: Path, row: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, row)
    os.replace(tmp, path)
