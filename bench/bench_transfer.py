"""Benchmark: head-only transfer (bundled EfficientNet-Lite0) vs training from scratch, on few labels.

Data: scikit-image's ``lfw_subset()`` (100 real face photos and 100 non-faces, 25 x 25 grey, offline).
For k labelled images per class (k = 5, 10, 20; drawn with a fixed seed) the other 200 - 2k are held
out. Head-only: ``engine.training.fit_head`` on a fresh feature cache, so the wall time includes the
backbone pass over every image. Peer: each from-scratch zoo model of ``--scratch`` trained with
``engine.training.fit`` (augmentation on) on the same images for ten times the head-only wall time;
the best of them is shown. Accuracies are the held-out accuracy after the last epoch (no epoch chosen
on the held-out set); the peak over epochs is printed for the peer too, as its most flattering figure.
Target: k = 10 reaches >= 0.90 in < 30 s of CPU, and head-only is ahead at every k.

Usage: ``python bench/bench_transfer.py [--threads 1] [--image-size 96] [--scratch convnetb,lenet5]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import checkpoints  # noqa: E402
from engine.datasets import ArrayDataset  # noqa: E402
from engine.exceptions import Cancelled  # noqa: E402
from engine.training import TrainConfig, fit, fit_head  # noqa: E402

CLASSES = ["non-face", "face"]


def lfw_split(k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """k faces and k non-faces to train on, the rest held out: (train x, train y, test x, test y)."""
    images = (data.lfw_subset() * 255).round().astype(np.uint8)
    labels = np.r_[np.ones(100, int), np.zeros(100, int)]
    rng = np.random.default_rng(seed)
    train = np.r_[rng.choice(100, k, replace=False), 100 + rng.choice(100, k, replace=False)]
    test = np.setdiff1d(np.arange(200), train)
    return images[train], labels[train], images[test], labels[test]


def datasets(config: TrainConfig, split) -> tuple[ArrayDataset, ArrayDataset]:
    pre = config.preprocessing()
    return ArrayDataset(split[0], split[1], pre, train=True), ArrayDataset(split[2], split[3], pre)


def head_only(split, image_size: int, workdir: Path) -> tuple[float, float]:
    """(held-out accuracy after the last epoch, wall seconds including the backbone pass)."""
    config = TrainConfig("efficientnet-lite0", 2, epochs=30, batch_size=8, learning_rate=1e-3, optimizer="adam",
                         pretrained=True, head_only=True, image_size=image_size)
    started = time.perf_counter()
    result = fit_head(config, *datasets(config, split), CLASSES, workdir / "head", workdir / "features")
    return result.history[-1]["test_accuracy"] / 100, time.perf_counter() - started


def from_scratch(name: str, split, seconds: float, workdir: Path) -> tuple[float, float, int]:
    """(held-out accuracy after the last complete epoch, its peak over epochs, epochs) within ``seconds``."""
    config = TrainConfig(name, 2, epochs=1_000_000, batch_size=8, learning_rate=1e-3, optimizer="adam",
                         image_size=32, augment=True)
    deadline = time.perf_counter() + seconds
    directory = workdir / name
    try:
        fit(config, *datasets(config, split), CLASSES, directory, should_stop=lambda: time.perf_counter() > deadline,
            log_every=1)
    except Cancelled:
        pass
    history = checkpoints.load(directory / "last.pt").history
    if not history:
        return 0.5, 0.5, 0
    return history[-1]["test_accuracy"] / 100, max(h["test_accuracy"] for h in history) / 100, len(history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=96, help="head-only input side (the photos are 25 px)")
    parser.add_argument("--scratch", default="convnetb", help="from-scratch zoo models to try, comma-separated")
    parser.add_argument("--ks", default="5,10,20")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"lfw_subset, {args.threads} threads, head-only EfficientNet-Lite0 at {args.image_size} px; "
          f"scratch: best of {args.scratch} at 32 px, 10x the head-only time each")
    print(f"{'k':>3} | {'head-only acc':>13} {'time s':>7} | {'scratch best':>12} {'(peak)':>7} {'model':>9} "
          f"{'epochs':>6} {'time s':>7}")
    for k in (int(v) for v in args.ks.split(",")):
        split = lfw_split(k)
        with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
            acc, seconds = head_only(split, args.image_size, Path(tmp))
            peers = {name: from_scratch(name, split, 10 * seconds, Path(tmp)) for name in args.scratch.split(",")}
        best = max(peers, key=lambda n: peers[n][0])
        s_acc, s_peak, s_epochs = peers[best]
        print(f"{k:>3} | {acc:>13.3f} {seconds:>7.1f} | {s_acc:>12.3f} {s_peak:>7.3f} {best:>9} {s_epochs:>6} "
              f"{10 * seconds:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
