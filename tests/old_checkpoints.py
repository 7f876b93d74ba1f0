"""Checkpoints in the layouts earlier versions of the project wrote, so tests can prove they still load."""

from __future__ import annotations

import torch

from engine import checkpoints
from engine.datasets import ArrayDataset
from engine.training import FitResult, TrainConfig
from tests.digits import digit_images

DIGIT_CLASSES = [f"digit-{d}" for d in range(10)]


def digits_training(epochs: int, seed: int) -> tuple[TrainConfig, tuple[ArrayDataset, ArrayDataset]]:
    """The small digits run the checkpoint tests train: its config and its (train, test) datasets."""
    rgb, labels = digit_images(rgb=True)
    config = TrainConfig("convnetb", num_classes=10, epochs=epochs, batch_size=64, learning_rate=0.05, image_size=16,
                         grey=True, seed=seed)
    pre = config.preprocessing()
    return config, (ArrayDataset(rgb[:1400], labels[:1400], pre, True), ArrayDataset(rgb[1400:], labels[1400:], pre))


def rewrite_as_version_1(result: FitResult, folder) -> None:
    """Write the run's best.pt and last.pt into ``folder`` (their own, or another) in the version 1 layout."""
    for path in (result.best_path, result.last_path):
        write_version_1(torch.load(path, weights_only=True), folder / path.name)


def write_version_1(raw: dict, path) -> None:
    """Save ``raw`` (a current checkpoint's dict) in the layout the first format version wrote, key for key."""
    kind = raw["kind"]
    torch.save(
        {
            "format": checkpoints.FORMAT,
            "format_version": 1,
            "kind": kind,
            "model": raw["model"],
            "state_dict": raw["state_dict"],
            "class_names": raw["class_names"],
            "multi_label": raw["model"]["kwargs"]["multi_label"],
            "preprocessing": raw["preprocessing"],
            "config": raw["config"],
            "epoch": raw["epoch"],
            "metrics": dict(raw["history"][-1]) if raw["history"] else {},
            "history": raw["history"],
            "best": raw["best"],
            "epochs_without_improvement": raw["epochs_without_improvement"],
            "evaluation": raw["evaluation"] if kind == "best" else {},
            "thresholds": raw["evaluation"].get("thresholds") if kind == "best" else None,
            "optimizer": raw["optimizer"],
            "scheduler": raw["scheduler"],
            "scaler": raw["scaler"],
            "seed": raw["config"]["seed"],
            "rng": raw["rng"],
            "versions": raw["versions"],
        },
        path,
    )
