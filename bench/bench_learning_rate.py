"""Learning rates that are too high: a tuned run, 10x and 60x its rate, over several seeds, on real digits.

Benchmarks are not tests: this prints, from one run, the best held-out accuracy of each run and what its history
says happened, with the medians side by side. The peer is the tuned run: a run ten times too high should end
within 2 points of it (issue 24).

    python bench/bench_learning_rate.py [--seeds 3,4,5,6,7,8] [--epochs 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.datasets import ArrayDataset  # noqa: E402
from engine.training import TrainConfig, fit  # noqa: E402
from tests.digits import digit_images  # noqa: E402

CLASSES = [str(d) for d in range(10)]
TUNED = 0.05  # convnetb, SGD, 16 px digits, the legacy lr_decay (plateau)


def run(learning_rate: float, seed: int, epochs: int):
    config = TrainConfig(model_name="convnetb", num_classes=10, epochs=epochs, batch_size=32,
                         learning_rate=learning_rate, lr_schedule="plateau", image_size=16, grey=True, seed=seed)
    images, labels = digit_images()
    pre = config.preprocessing()
    train = ArrayDataset(images[:1400], labels[:1400], pre, train=True)
    test = ArrayDataset(images[1400:], labels[1400:], pre)
    with tempfile.TemporaryDirectory() as folder:
        return fit(config, train, test, CLASSES, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="3,4,5,6,7,8")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    rates = {"tuned": TUNED, "10x": 10 * TUNED, "60x": 60 * TUNED}
    best: dict[str, list[float]] = {name: [] for name in rates}
    print(f"{'seed':>4}  " + "  ".join(f"{name:>7}" for name in rates) + "  what the 10x and 60x histories say")
    for seed in (int(s) for s in args.seeds.split(",")):
        row, said = [], []
        for name, rate in rates.items():
            started = time.perf_counter()
            result = run(rate, seed, args.epochs)
            best[name].append(result.best_score)
            row.append(f"{result.best_score:7.1f}")
            events = [f"epoch {r['epoch']}: {r['event'].split(';')[0]}" for r in result.history if "event" in r]
            if name != "tuned":
                said.append(f"{name}: " + (", ".join(events) or "nothing"))
            elif events:
                said.append("tuned: " + ", ".join(events))
            print(f"  ({name} seed {seed}: {time.perf_counter() - started:.0f} s)", file=sys.stderr)
        print(f"{seed:>4}  " + "  ".join(row) + "  " + " | ".join(said), flush=True)
    medians = {name: statistics.median(values) for name, values in best.items()}
    print("median  " + "  ".join(f"{medians[name]:7.1f}" for name in rates))
    gaps = [t - h for t, h in zip(best["tuned"], best["10x"], strict=True)]
    print(f"10x against tuned: largest gap {max(gaps):.1f} points, median {statistics.median(gaps):.1f} "
          f"(issue 24's bar: within 2)")


if __name__ == "__main__":
    main()
