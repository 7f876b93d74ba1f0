"""Benchmark: ``POST /api/v1/predict`` latency over HTTP next to the bare decode + model forward, in one run.

The API runs as ``make run`` runs it (gunicorn, one torch thread) on a temporary DATA_DIR with a real
Redis and worker (``tests.harness.Stack``); each model of ``--models`` is a checkpoint at its default input
size, trained for one epoch on a few images (latency does not depend on the weights). The bare peer
decodes the same base64 JPEG and runs the same checkpoint's ``Predictor`` in this process, on one thread.
Each round alternates one HTTP request and one bare call (so both meet the same machine load); the figures
are medians over rounds. Target: HTTP p50 <= 1.3x the bare decode + forward p50.

Usage: ``python bench/bench_predict.py [--models convnetj,resnet18] [--requests 100] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.datasets import ArrayDataset  # noqa: E402
from engine.images import decode_image  # noqa: E402
from engine.inference import Predictor  # noqa: E402
from engine.training import TrainConfig, fit  # noqa: E402
from services.app import training  # noqa: E402
from services.storage.store import open_store  # noqa: E402
from tests.harness import Stack  # noqa: E402


def photo_data_url(side: int) -> str:
    """A real photo (scikit-image's astronaut) as the JPEG data URL a client would send."""
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((side, side)).save(buf, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def make_model(stack: Stack, name: str) -> dict:
    """A catalogued checkpoint of ``name`` (one epoch on random images), as a training job leaves it."""
    config = TrainConfig(name, num_classes=5, epochs=1, batch_size=4)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    data = ArrayDataset(images, np.arange(8) % 5, config.preprocessing())
    job_id = f"bench-{name}"
    fit(config, data, data, [f"class{i}" for i in range(5)], stack.data_dir / "checkpoints" / job_id)
    return training.register_model(stack.config, open_store(stack.data_dir), job_id, "bench")


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def http_call(session: requests.Session, url: str, body: dict) -> float:
    start = time.perf_counter()
    r = session.post(url, json=body, timeout=60)
    elapsed = time.perf_counter() - start
    assert r.status_code == 200, r.text
    return elapsed


def bare_call(predictor: Predictor, image: str, max_pixels: int) -> tuple[float, float]:
    """Decode + predict, and predict() alone (preprocessing + forward, on the decoded image)."""
    start = time.perf_counter()
    pixels = decode_image(image, "image", max_pixels)
    middle = time.perf_counter()
    predictor.predict(pixels)
    end = time.perf_counter()
    return end - start, end - middle


def one_round(session, url: str, body: dict, predictor: Predictor, n: int, max_pixels: int) -> tuple:
    """``n`` HTTP calls and ``n`` bare calls, alternating, so both meet the same machine load."""
    http, both, forward = [], [], []
    for _ in range(n):
        http.append(http_call(session, url, body))
        whole, alone = bare_call(predictor, body["image"], max_pixels)
        both.append(whole)
        forward.append(alone)
    return (*percentiles(http), *percentiles(both), *percentiles(forward))


def bench_model(args: argparse.Namespace, stack: Stack, session: requests.Session, name: str) -> dict:
    """Median p50/p99 of both sides for one model (its own checkpoint, catalogued)."""
    row = make_model(stack, name)
    predictor = Predictor(stack.data_dir / row["path"])
    url, body = stack.url + "/api/v1/predict", {"image": photo_data_url(args.image_side), "model": row["id"]}
    limit = stack.config.max_image_pixels
    one_round(session, url, body, predictor, args.warmup, limit)
    rounds = [one_round(session, url, body, predictor, args.requests, limit) for _ in range(args.rounds)]
    medians = [statistics.median(values) for values in zip(*rounds, strict=True)]
    keys = ("http_p50_ms", "http_p99_ms", "bare_p50_ms", "bare_p99_ms", "predict_p50_ms", "predict_p99_ms")
    result = {k: round(v, 2) for k, v in zip(keys, medians, strict=True)}
    result.update(model=name, input=predictor.preprocessing["image_size"][0],
                  ratio_p50=round(result["http_p50_ms"] / result["bare_p50_ms"], 2))
    return result


def report(args: argparse.Namespace, results: list[dict]) -> None:
    print(f"/predict latency ({args.image_side} px JPEG upload as a data URL, 1 torch thread, CPU; "
          f"medians of {args.rounds} rounds x {args.requests} alternating calls), ms:")
    print(f"  {'model':<22}{'side':<34}{'p50':>8}{'p99':>8}")
    for r in results:
        name = f"{r['model']} ({r['input']} px)"
        print(f"  {name:<22}{'HTTP POST /api/v1/predict':<34}{r['http_p50_ms']:>8.2f}{r['http_p99_ms']:>8.2f}"
              f"   x{r['ratio_p50']} of bare p50 (target <= 1.3)")
        print(f"  {'':<22}{'bare decode + predict()':<34}{r['bare_p50_ms']:>8.2f}{r['bare_p99_ms']:>8.2f}")
        print(f"  {'':<22}{'  of which predict() (prep + fwd)':<34}{r['predict_p50_ms']:>8.2f}"
              f"{r['predict_p99_ms']:>8.2f}")
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="convnetj,resnet18",
                        help="registered models, comma-separated (each at its default input size)")
    parser.add_argument("--image-side", type=int, default=512, help="side of the uploaded JPEG")
    parser.add_argument("--requests", type=int, default=100, help="calls per round and side")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the API process runs (OMP_NUM_THREADS=1)
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        stack = Stack(Path(tmp)).start()
        try:
            session = requests.Session()
            session.headers["Authorization"] = f"JWT {stack.token('client')}"
            results = [bench_model(args, stack, session, name) for name in args.models.split(",")]
        finally:
            stack.close()
    report(args, results)


if __name__ == "__main__":
    main()
