"""Benchmark: what train-time augmentation costs an epoch, ours (whole batches) beside the usual per-sample way.

One training epoch of the same model, data, batch size and seed, timed three ways in this one process:

* ``none``: no augmentation (the reference; the issue's target is at most 1.3x this);
* ``ours``: :func:`engine.datasets.augment_batch`, one resampling per batch, as :func:`engine.training.fit` runs it;
* ``per-sample (peer)``: torchvision's ``RandomHorizontalFlip`` + ``RandomCrop(padding, reflect)`` applied to each
  sample in the Dataset, the way most training scripts (and this project until now) augment.

Data: scikit-learn's real handwritten digits at 32 px (the issue's size) and 128 px (convnetj's default input).
Medians over ``--rounds`` epochs, after one warm-up epoch.
Usage: ``python bench/bench_augment_epoch.py [--rounds 5] [--threads 2] [--sizes 32 128]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.datasets import ArrayDataset, augment_batch, make_preprocessing  # noqa: E402
from engine.models.build import create_model  # noqa: E402
from engine.run_config import AUGMENT_POLICIES  # noqa: E402
from engine.training import seed_everything, train_one_epoch  # noqa: E402
from tests.digits import digit_images  # noqa: E402

POLICY = AUGMENT_POLICIES["shift+flip"]


class PerSample(Dataset):
    """The peer: torchvision transforms on each preprocessed sample, in ``__getitem__``."""

    def __init__(self, base: ArrayDataset, side: int):
        self.base = base
        pad = int(side * POLICY["max_shift"])
        self.transform = v2.Compose([v2.RandomHorizontalFlip(POLICY["hflip"]),
                                     v2.RandomCrop(side, padding=pad, padding_mode="reflect")])

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, target = self.base[index]
        return self.transform(image), target


def epoch_seconds(model_name: str, dataset: Dataset, augmentation, rounds: int, batch: int) -> list[float]:
    seed_everything(0)
    model = create_model(model_name, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(rounds + 1):
        record = train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, torch.device("cpu"),
                                 augmentation=augmentation, generator=generator)
        times.append(record["seconds"])
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--model", default="convnetj")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, labels = digit_images(rgb=True)
    print(f"{args.model}, batch {args.batch}, {len(images[:1400])} training digits, {args.threads} threads; "
          f"median epoch seconds of {args.rounds}")
    print(f"{'side':>5} {'none':>8} {'ours':>8} {'per-sample (peer)':>18} {'ours/none':>10} {'peer/none':>10}")
    for side in args.sizes:
        base = ArrayDataset(images[:1400], labels[:1400], make_preprocessing(side), train=True)
        none = statistics.median(epoch_seconds(args.model, base, None, args.rounds, args.batch))
        ours = statistics.median(epoch_seconds(args.model, base, POLICY, args.rounds, args.batch))
        peer = statistics.median(epoch_seconds(args.model, PerSample(base, side), None, args.rounds, args.batch))
        print(f"{side:>5} {none:>8.2f} {ours:>8.2f} {peer:>18.2f} {ours / none:>10.2f} {peer / none:>10.2f}")
    # The batch op alone, for the record: a 32-image batch at each side.
    for side in args.sizes:
        batch = torch.from_numpy(np.random.default_rng(0).random((args.batch, 3, side, side), dtype=np.float32))
        start = time.perf_counter()
        for _ in range(50):
            augment_batch(batch, POLICY)
        print(f"augment_batch, {args.batch} x 3 x {side} x {side}: {(time.perf_counter() - start) / 50 * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
