"""Benchmark: the engine's training loop and data loading, each next to its bare peer, in one run.

1. Training samples/s of ``engine.training.fit`` vs a bare PyTorch loop (same model, data, optimizer,
   batch size, seed). Target: engine overhead <= 5 % on the training phase. The full epoch (with the
   evaluation and the two checkpoint writes that fit adds) is printed too.
2. Data-loading samples/s of ``HDF5Dataset`` vs ``ImageFolderDataset`` over the same images stored as
   PNG files (same preprocessing, same DataLoader).
3. Scaling: training samples/s of one run over 1 vs 2 DDP processes (gloo, CPU, one thread each, same
   model, data and effective batch), and the scaling efficiency (2-process rate / twice the 1-process
   rate); one process with two threads is printed as the other way to use the same two cores.

Data: scikit-learn's real handwritten digits (offline). Medians over repeated epochs / passes.
Usage: ``python bench/bench_training.py [--rounds 3] [--epochs 4] [--threads 1] [--workers 0]
[--part all|training|loading|scaling]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.datasets import ArrayDataset, HDF5Dataset, ImageFolderDataset, make_preprocessing  # noqa: E402
from engine.launch import fit_distributed  # noqa: E402
from engine.models.build import create_model  # noqa: E402
from engine.training import TrainConfig, fit, seed_everything  # noqa: E402


def digit_images(side: int) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as RGB uint8 images of ``side`` pixels."""
    data = load_digits()
    grey = (data.images * (255 / 16)).round().astype(np.uint8)
    images = np.stack([cv2.resize(g, (side, side), interpolation=cv2.INTER_LINEAR) for g in grey])
    return np.repeat(images[..., None], 3, axis=3), data.target


def bare_loop(config: TrainConfig, train: ArrayDataset, epochs: int) -> list[float]:
    """The textbook loop: per-epoch training samples/s."""
    seed_everything(config.seed)
    model = create_model(config.model_name, config.num_classes)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(
        train,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),
    )
    rates = []
    for _ in range(epochs):
        model.train()
        start, seen = time.perf_counter(), 0
        for images, targets in loader:
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(images)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def engine_fit(
    config: TrainConfig, train: ArrayDataset, test: ArrayDataset, directory: Path
) -> tuple[list, list]:
    """``fit``: per-epoch training samples/s (its own measure) and full-epoch samples/s (wall clock)."""
    records, stamps = [], [time.perf_counter()]

    def on_epoch(record: dict) -> None:
        records.append(record)
        stamps.append(time.perf_counter())

    fit(config, train, test, [str(i) for i in range(10)], directory, on_epoch=on_epoch, device="cpu")
    full = [len(train) / (b - a) for a, b in zip(stamps, stamps[1:], strict=False)]
    return [r["train_samples_per_s"] for r in records], full


def bench_training(args: argparse.Namespace) -> dict:
    images, targets = digit_images(args.side)
    config = TrainConfig(
        model_name=args.model,
        num_classes=10,
        epochs=args.epochs,
        batch_size=64,
        learning_rate=0.05,
        image_size=args.side,
        num_workers=args.workers,
    )
    pre = config.preprocessing()
    train = ArrayDataset(images[:1500], targets[:1500], pre, train=True)
    test = ArrayDataset(images[1500:], targets[1500:], pre)
    engine_rates, engine_full, bare_rates = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):  # interleaved, so machine load drifts hit both alike
            rates, full = engine_fit(config, train, test, Path(tmp) / f"run{r}")
            engine_rates += rates[1:]  # the first epoch of each run warms caches up
            engine_full += full[1:]
            bare_rates += bare_loop(config, train, args.epochs)[1:]
    engine, bare = statistics.median(engine_rates), statistics.median(bare_rates)
    return {
        "model": args.model,
        "side": args.side,
        "batch_size": 64,
        "bare_samples_per_s": round(bare, 1),
        "engine_train_samples_per_s": round(engine, 1),
        "engine_overhead_pct": round(100 * (bare / engine - 1), 2),
        "engine_full_epoch_samples_per_s": round(statistics.median(engine_full), 1),
    }


def distributed_rates(config: TrainConfig, train, test, world_size: int, threads: int) -> tuple[float, float]:
    """Median training-phase and whole-epoch samples/s of a ``world_size``-process run (first epoch dropped)."""
    torch.set_num_threads(threads)  # the one-process run trains here; spawned ranks set their own share
    records, stamps = [], [time.perf_counter()]

    def on_epoch(record: dict) -> None:
        records.append(record)
        stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        fit_distributed(world_size, config, train, test, [str(i) for i in range(10)], tmp, on_epoch=on_epoch,
                        device="cpu")
    full = [len(train) / (b - a) for a, b in zip(stamps[1:], stamps[2:], strict=False)]
    return statistics.median(r["train_samples_per_s"] for r in records[1:]), statistics.median(full)


def bench_scaling(args: argparse.Namespace) -> dict:
    images, targets = digit_images(args.side)
    config = TrainConfig(model_name=args.model, num_classes=10, epochs=args.epochs, batch_size=64,
                         learning_rate=0.05, image_size=args.side)
    pre = config.preprocessing()
    train = ArrayDataset(images[:1500], targets[:1500], pre, train=True)
    test = ArrayDataset(images[1500:], targets[1500:], pre)
    one, one_full = distributed_rates(config, train, test, 1, 1)
    print(f"  (1 process: {one:.1f} samples/s)", flush=True)
    two, two_full = distributed_rates(config, train, test, 2, 1)
    print(f"  (2 processes: {two:.1f} samples/s)", flush=True)
    one_two_threads, _ = distributed_rates(config, train, test, 1, 2)
    return {
        "model": args.model, "side": args.side, "effective_batch_size": 64, "backend": "gloo",
        "one_process_samples_per_s": round(one, 1), "two_processes_samples_per_s": round(two, 1),
        "scaling_efficiency_pct": round(100 * two / (2 * one), 1),
        "one_process_full_epoch_samples_per_s": round(one_full, 1),
        "two_processes_full_epoch_samples_per_s": round(two_full, 1),
        "one_process_two_threads_samples_per_s": round(one_two_threads, 1),
    }


def print_scaling(scaling: dict) -> None:
    print(f"scaling ({scaling['model']}, {scaling['side']}x{scaling['side']}, effective batch 64, gloo on CPU, "
          "one thread per process), median training samples/s:")
    print(f"  1 process                  {scaling['one_process_samples_per_s']:>10.1f}   "
          f"(whole epoch {scaling['one_process_full_epoch_samples_per_s']:.1f})")
    print(f"  2 processes (DDP)          {scaling['two_processes_samples_per_s']:>10.1f}   "
          f"(whole epoch {scaling['two_processes_full_epoch_samples_per_s']:.1f})   "
          f"efficiency {scaling['scaling_efficiency_pct']:.1f} %")
    print(f"  1 process, 2 threads       {scaling['one_process_two_threads_samples_per_s']:>10.1f}")


def write_image_stores(root: Path, images: np.ndarray, targets: np.ndarray) -> tuple[Path, Path]:
    """The same images as an HDF5 file (legacy layout) and as PNG class folders."""
    hdf5 = root / "digits.hdf5"
    with h5py.File(hdf5, "w") as f:
        f["X_train"], f["y_train"] = images, targets
        f["X_test"], f["y_test"] = images[:10], targets[:10]
        f.attrs["class_names"] = json.dumps([str(i) for i in range(10)])
    folders = root / "png"
    for i, (image, target) in enumerate(zip(images, targets, strict=True)):
        (folders / str(target)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folders / str(target) / f"{i:05d}.png")
    return hdf5, folders


def loading_rate(dataset, workers: int, passes: int) -> float:
    loader = DataLoader(dataset, batch_size=64, num_workers=workers)
    rates = []
    for _ in range(passes):
        start = time.perf_counter()
        seen = sum(len(images) for images, _ in loader)
        rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_loading(args: argparse.Namespace) -> dict:
    images, targets = digit_images(args.store_side)
    pre = make_preprocessing(args.store_side)
    with tempfile.TemporaryDirectory() as tmp:
        hdf5, folders = write_image_stores(Path(tmp), images, targets)
        h5_rate = loading_rate(HDF5Dataset(hdf5, "train", pre, train=False), args.workers, args.passes)
        png_rate = loading_rate(ImageFolderDataset(folders, pre), args.workers, args.passes)
    return {
        "images": len(images),
        "side": args.store_side,
        "workers": args.workers,
        "hdf5_samples_per_s": round(h5_rate, 1),
        "png_folder_samples_per_s": round(png_rate, 1),
        "hdf5_speedup": round(h5_rate / png_rate, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnetb")
    parser.add_argument("--side", type=int, default=32, help="training image side")
    parser.add_argument(
        "--store-side", type=int, default=64, help="side of the stored images (loading bench)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--part", choices=("all", "training", "loading", "scaling"), default="all")
    args = parser.parse_args()
    figures = {}
    if args.part in ("all", "scaling"):
        figures["scaling"] = bench_scaling(args)
        print_scaling(figures["scaling"])
    torch.set_num_threads(args.threads)
    if args.part in ("all", "training", "loading"):
        figures.update(bench_training_and_loading(args))
    print(json.dumps(figures))


def bench_training_and_loading(args: argparse.Namespace) -> dict:
    """Parts 1 and 2 (as asked by ``--part``), printed as they finish."""
    figures = {}
    if args.part in ("all", "training"):
        figures["training"] = training = bench_training(args)
        print_training(training, args.threads)
    if args.part in ("all", "loading"):
        figures["loading"] = bench_loading(args)
        print_loading(figures["loading"])
    return figures


def print_training(training: dict, threads: int) -> None:
    print(
        f"training ({training['model']}, {training['side']}x{training['side']}, batch 64, "
        f"{threads} thread(s), CPU), median samples/s:"
    )
    print(f"  bare PyTorch loop          {training['bare_samples_per_s']:>10.1f}")
    print(
        f"  engine fit (train phase)   {training['engine_train_samples_per_s']:>10.1f}   "
        f"overhead {training['engine_overhead_pct']:+.2f} % (target <= 5 %)"
    )
    full = training["engine_full_epoch_samples_per_s"]
    print(f"  engine fit (whole epoch)   {full:>10.1f}   (+ evaluation + 2 checkpoint writes)")


def print_loading(loading: dict) -> None:
    print(
        f"data loading ({loading['images']} images {loading['side']}x{loading['side']}, "
        f"{loading['workers']} workers), median samples/s:"
    )
    print(f"  PNG class folders          {loading['png_folder_samples_per_s']:>10.1f}")
    print(f"  HDF5 (lazy, per item)      {loading['hdf5_samples_per_s']:>10.1f}   x{loading['hdf5_speedup']}")


if __name__ == "__main__":
    main()
