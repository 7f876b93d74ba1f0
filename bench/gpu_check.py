"""First proof of the CUDA paths on a GPU machine (prepared to run by hand, not a test).

1. One GPU, mixed precision (float16 autocast + GradScaler), a few epochs on scikit-learn's digits:
   training samples/s, test accuracy, and that the checkpoint holds the scaler's state and reloads.
2. With more than one GPU: the same run as DistributedDataParallel over every GPU (NCCL), then with
   SyncBatchNorm; samples/s and the scaling efficiency against (1).

Offline: the data ships inside scikit-learn and the model is built from scratch. Prints a JSON line last.
Usage: ``python bench/gpu_check.py [--epochs 4] [--side 32]``.
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
import numpy as np
import torch
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import checkpoints  # noqa: E402
from engine.datasets import ArrayDataset  # noqa: E402
from engine.inference import Predictor  # noqa: E402
from engine.launch import fit_distributed  # noqa: E402
from engine.training import TrainConfig  # noqa: E402

CLASSES = [str(d) for d in range(10)]


def digits(config: TrainConfig, side: int) -> tuple[ArrayDataset, ArrayDataset]:
    data = load_digits()
    grey = (data.images * (255 / 16)).round().astype(np.uint8)
    images = np.stack([cv2.resize(g, (side, side), interpolation=cv2.INTER_LINEAR) for g in grey])
    images = np.repeat(images[..., None], 3, axis=3)
    pre = config.preprocessing()
    return (ArrayDataset(images[:1400], data.target[:1400], pre, train=True),
            ArrayDataset(images[1400:], data.target[1400:], pre))


def run(world_size: int, config: TrainConfig, side: int, sync_batchnorm: bool = False) -> dict:
    train, test = digits(config, side)
    records = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = fit_distributed(world_size, config, train, test, CLASSES, tmp, on_epoch=records.append,
                                 device="cuda", sync_batchnorm=sync_batchnorm)
        assert checkpoints.load(result.last_path).scaler is not None, "mixed precision ran without a GradScaler"
        predictor = Predictor(result.best_path)
        image = (load_digits().images[1500] * (255 / 16)).astype(np.uint8)
        predictor_answer = predictor.predict_batch([np.repeat(cv2.resize(image, (side, side))[..., None], 3, 2)])
    rates = [r["train_samples_per_s"] for r in records[1:]] or [records[-1]["train_samples_per_s"]]
    return {"world_size": world_size, "sync_batchnorm": sync_batchnorm,
            "train_samples_per_s": round(statistics.median(rates), 1),
            "best_test_accuracy": round(result.best_score, 2), "wall_s": round(time.perf_counter() - started, 1),
            "predict_ok": bool(predictor_answer)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--model", default="convnetb")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here")
        return 1
    gpus = torch.cuda.device_count()
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {gpus} x {torch.cuda.get_device_name(0)}",
          flush=True)
    figures = {"gpus": gpus, "runs": []}
    for world_size, sync in [(1, False)] + ([(gpus, False), (gpus, True)] if gpus > 1 else []):
        # The effective batch is shared among the processes: keep it a multiple of the GPU count.
        config = TrainConfig(model_name=args.model, num_classes=10, epochs=args.epochs, batch_size=64 * gpus,
                             learning_rate=0.05, image_size=args.side, seed=3)
        found = run(world_size, config, args.side, sync)
        figures["runs"].append(found)
        print(f"{world_size} GPU process(es){' + SyncBatchNorm' if sync else ''}: "
              f"{found['train_samples_per_s']:.1f} samples/s, best test accuracy {found['best_test_accuracy']:.2f} %, "
              f"{found['wall_s']:.1f} s", flush=True)
    if gpus > 1:
        one, many = figures["runs"][0]["train_samples_per_s"], figures["runs"][1]["train_samples_per_s"]
        figures["scaling_efficiency_pct"] = round(100 * many / (gpus * one), 1)
        print(f"scaling efficiency over {gpus} GPUs: {figures['scaling_efficiency_pct']:.1f} %")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
