"""Benchmark: held-out accuracy of the model a run gets when it names none, beside convnetj from scratch (the
legacy document's model and settings) and a logistic regression on the raw pixels, on the same splits of three
datasets this project did not make.

* ``digits``: scikit-learn's 1,797 handwritten digits, 8 x 8 grey (1,400 train, 397 test);
* ``faces``: scikit-image's ``lfw_subset``, 100 faces and 100 non-faces, 25 x 25 grey, through JPEG at quality
  85 (150 train, 50 test);
* ``scenes``: 64 x 64 patches of six scikit-image photos (coffee, chelsea, astronaut, rocket, hubble_deep_field,
  immunohistochemistry): 40 training patches per photo from its left half, 20 test patches from its right half;
* ``scenes-large``: the same photos, 150 training and 50 test patches each (900 and 300).

Runners, each on the same split and seed:

* ``default``: what ``POST /api/v1/train`` trains for a body that names only the data: the model of
  ``engine.run_config.default_model`` with the request's default settings, built by the service's own
  ``with_default_model`` and ``to_train_config``;
* ``convnetj``: the legacy body (convnetj from scratch, SGD 0.05, ``lr_decay`` on plateau, 20 epochs, batch 32)
  at the data's own size;
* ``logistic regression``: scikit-learn's ``LogisticRegression`` on the pixels scaled to [0, 1];
* with ``--fine-tune``, where the default is head-only: then fine-tuning the whole network from the head-only
  run's best weights for 5 epochs (SGD 0.01, the backbone at 0.001), the second stage the issue asks for "if it
  helps".

Usage: ``python bench/bench_training_quality.py [--threads 2] [--datasets digits faces scenes scenes-large]
[--fine-tune]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.datasets import ArrayDataset  # noqa: E402
from engine.training import TrainConfig, fit, fit_head  # noqa: E402
from services.app.train_request import DataFacts, TrainRequest, to_train_config, with_default_model  # noqa: E402

SCENES = ["coffee", "chelsea", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry"]
LEGACY = {"model_name": "convnetj", "batch_size": 32, "lr_decay": 1, "l2_reg": 0.0001, "learning_rate": 0.05,
          "num_epochs": 20, "is_transform": 1}


def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images * 255 / 16).round().astype(np.uint8)
    return images[:1400], data.target[:1400], images[1400:], data.target[1400:]


def faces():
    from skimage.data import lfw_subset

    def through_jpeg(image: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG", quality=85)
        return np.asarray(Image.open(buf))

    pictures = np.stack([through_jpeg(p) for p in (lfw_subset() * 255).round().astype(np.uint8)])
    labels = np.r_[np.ones(100), np.zeros(100)].astype(int)
    order = np.random.default_rng(0).permutation(200)
    return pictures[order[:150]], labels[order[:150]], pictures[order[150:]], labels[order[150:]]


def scenes(train_count: int = 40, test_count: int = 20):
    from skimage import data

    rng = np.random.default_rng(0)
    split = {"train": ([], []), "test": ([], [])}
    for label, name in enumerate(SCENES):
        picture = getattr(data, name)()
        half = picture.shape[1] // 2
        for part, count, offset in (("train", train_count, 0), ("test", test_count, half)):
            for _ in range(count):
                y, x = rng.integers(0, picture.shape[0] - 64), offset + rng.integers(0, half - 64)
                split[part][0].append(picture[y:y + 64, x:x + 64])
                split[part][1].append(label)
    return (np.stack(split["train"][0]), np.array(split["train"][1]),
            np.stack(split["test"][0]), np.array(split["test"][1]))


DATASETS = {"digits": digits, "faces": faces, "scenes": scenes, "scenes-large": lambda: scenes(150, 50)}


def run(config: TrainConfig, xtr, ytr, xte, yte, fine_tune: bool = False) -> tuple[float, float, str]:
    """Best held-out accuracy and seconds; with ``fine_tune`` after a head-only run, also the second stage's."""
    pre = config.preprocessing()
    names = [str(i) for i in range(config.num_classes)]
    train, test = ArrayDataset(xtr, ytr, pre, train=True), ArrayDataset(xte, yte, pre)
    start, then = time.perf_counter(), ""
    with tempfile.TemporaryDirectory() as directory:
        if config.head_only:
            result = fit_head(config, train, test, names, Path(directory) / "run", Path(directory) / "features")
        else:
            result = fit(config, train, test, names, Path(directory) / "run")
        seconds = time.perf_counter() - start
        if fine_tune and config.head_only:
            stage = dataclasses.replace(config, head_only=False, pretrained=False, weights_path=str(result.best_path),
                                        epochs=5, learning_rate=0.01, lr_pretrained=0.001, lr_schedule="none")
            started = time.perf_counter()
            tuned = fit(stage, train, test, names, Path(directory) / "fine-tune")
            then = f"; then fine-tune: {tuned.best_score:.1f} ({time.perf_counter() - started:.0f} s more)"
    return result.best_score, seconds, then


def config_of(body: dict, xtr, ytr) -> tuple[TrainConfig, str]:
    req = TrainRequest.model_validate({"dataset": "hdf5", "hdf5_path": "bench.h5", **body})
    side = max(xtr.shape[1:3])
    req, choice = with_default_model(req, DataFacts([str(c) for c in sorted(set(ytr))], False, len(xtr), {}, side))
    described = f"{req.model_name}" + (f", {choice.transfer_mode}" if choice else "")
    return to_train_config(req, len(set(ytr)), False, None, side), described


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--datasets", nargs="+", default=["digits", "faces", "scenes"], choices=list(DATASETS))
    parser.add_argument("--fine-tune", action="store_true", help="after a head-only default, fine-tune too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"held-out accuracy % (seconds), {args.threads} threads")
    print(f"{'dataset':<8} {'default (ours)':<34} {'convnetj from scratch':<24} {'logistic regression':<20}")
    for name in args.datasets:
        xtr, ytr, xte, yte = DATASETS[name]()
        default_config, described = config_of({}, xtr, ytr)
        ours, ours_s, then = run(default_config, xtr, ytr, xte, yte, args.fine_tune)
        legacy_config, _ = config_of(LEGACY, xtr, ytr)
        scratch, scratch_s, _ = run(legacy_config, xtr, ytr, xte, yte)
        start = time.perf_counter()
        flat = lambda x: x.reshape(len(x), -1) / 255  # noqa: E731
        logistic = 100 * LogisticRegression(max_iter=5000).fit(flat(xtr), ytr).score(flat(xte), yte)
        logistic_s = time.perf_counter() - start
        print(f"{name:<8} {f'{ours:.1f} ({ours_s:.0f} s) {described}':<34} {f'{scratch:.1f} ({scratch_s:.0f} s)':<24} "
              f"{f'{logistic:.1f} ({logistic_s:.0f} s)':<20}{then}", flush=True)


if __name__ == "__main__":
    main()
