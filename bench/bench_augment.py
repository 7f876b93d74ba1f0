"""Augmentation benchmark: samples/s written to HDF5 for the legacy API's /generate body, ours vs albumentations.

Work: the legacy API's example body (2 backgrounds, brightness+color for training, gaussian+contrast for
testing, scales 500/490, all three flips, 4 training and 6 test angles) on three RGBA cut-outs made
from ``skimage.data`` photos (coffee, chelsea, rocket in the shape of ``skimage.data.horse()``), the
shipped ``bgs/`` backgrounds, at image_size 224 and 512: 576 samples per run.

Runners, each in a fresh process so its peak RSS is its own:

* ``ours`` — :func:`engine.augment.generate.generate_dataset`.
* ``albumentations`` — the same samples built the way albumentations is usually used: a per-sample
  ``A.Compose`` (``Affine(fit_output=True)`` for the rotation, flips, ``LongestMaxSize``) on the cut-out,
  ``RandomResizedCrop`` + flip on the background, numpy alpha blending, the photometric ``A.Compose``
  (``RandomBrightnessContrast``, ``ColorJitter``, ``GaussianBlur``), written to HDF5 with h5py in
  64-sample chunks exactly like ours.
* ``albumentations-cached`` — the same, but each rotated/flipped/scaled cut-out is computed once and
  reused across backgrounds, as ours does: it shows how much of the gap is caching.

albumentations 2.0.8 is not a project dependency; install it for the benchmark only, e.g.
``pip install --no-deps --target /tmp/albu albumentations==2.0.8 albucore==0.0.24 stringzilla simsimd
eval-type-backport`` and pass ``--albumentations-path /tmp/albu`` (the default).

    .venv/bin/python bench/bench_augment.py [--sizes 224 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import skimage.data
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from engine.augment.backgrounds import list_backgrounds  # noqa: E402
from engine.augment.generate import GenerationConfig, count_samples, generate_dataset  # noqa: E402
from tests.legacy_generation import LEGACY_BODY  # noqa: E402

RUNNERS = ("ours", "albumentations", "albumentations-cached")
BUFFER = 64


def make_objects(folder: Path, copies: int = 1) -> dict[str, list[Path]]:
    """Three RGBA cut-outs (photos in the shape of the skimage horse), ``copies`` files of each."""
    horse = skimage.data.horse()
    horse = (~horse if horse.mean() > 0.5 else horse).astype(np.uint8) * 255
    objects: dict[str, list[Path]] = {}
    for name in ("coffee", "chelsea", "rocket"):
        photo = getattr(skimage.data, name)()
        alpha = cv2.resize(horse, (photo.shape[1], photo.shape[0]), interpolation=cv2.INTER_LINEAR)
        for copy in range(copies):
            path = folder / f"{name}_{copy}.png"
            Image.fromarray(np.dstack([photo, alpha])).save(path)
            objects.setdefault(name, []).append(path)
    return objects


# ------------------------------------------------------------------------------------------------ ours


def run_ours(config: GenerationConfig, objects, backgrounds, out: Path) -> int:
    result = generate_dataset(config, objects, backgrounds.train, backgrounds.test, out)
    return sum(result["totals"].values())


# -------------------------------------------------------------------------------------- albumentations


def run_albumentations(config: GenerationConfig, objects, backgrounds, out: Path, cached: bool) -> int:
    import albumentations as A

    size = config.image_size
    photometric = {
        "brightness": lambda: A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.0, p=1.0),
        "contrast": lambda: A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.2, p=1.0),
        "color": lambda: A.ColorJitter(brightness=0.0, contrast=0.0, saturation=(0.7, 1.3), hue=0.0, p=1.0),
        "gaussian": lambda: A.GaussianBlur(blur_limit=0, sigma_limit=(0.3, 1.5), p=1.0),
    }
    background_aug = A.Compose(
        [A.RandomResizedCrop(size=(size, size), scale=(0.49, 1.0), ratio=(1.0, 1.0)), A.HorizontalFlip()],
        seed=config.seed,
    )
    names = sorted(objects)
    done = 0
    with h5py.File(out, "w") as h5:
        for split in ("train", "test"):
            finish = A.Compose([photometric[n]() for n in config.transform_names(split)], seed=config.seed)
            bgs = [np.asarray(Image.open(p).convert("RGB")) for p in getattr(backgrounds, split)]
            writer = _H5Writer(h5, split, size)
            rng = np.random.default_rng(config.seed)
            for label, name in enumerate(names):
                for path in objects[name]:
                    source = np.asarray(Image.open(path).convert("RGBA"))
                    cache: dict = {}
                    for angle in config.angle_list(split):
                        for flip in config.flip_list():
                            for scale in config.scale_list():
                                side = round(scale / config.scale_reference * size)
                                for _ in range(config.number_backgrounds):
                                    key = (angle, flip, scale)
                                    if not cached or key not in cache:
                                        cache[key] = _turn(A, source, angle, flip, side)
                                    background = background_aug(image=bgs[rng.integers(len(bgs))])["image"]
                                    sample = _paste(background, cache[key], rng)
                                    writer.add(finish(image=sample)["image"], label)
                                    done += 1
            writer.flush()
    return done


def _turn(A, rgba: np.ndarray, angle: float, flip: str | None, side: int) -> np.ndarray:
    steps = [A.Affine(rotate=(angle, angle), fit_output=True, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)]
    if flip in ("horizontal", "both"):
        steps.append(A.HorizontalFlip(p=1.0))
    if flip in ("vertical", "both"):
        steps.append(A.VerticalFlip(p=1.0))
    turned = A.Compose(steps)(image=rgba)["image"]
    ys, xs = np.nonzero(turned[:, :, 3])
    turned = turned[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return A.LongestMaxSize(max_size=side, p=1.0)(image=turned)["image"]


def _paste(background: np.ndarray, rgba: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = rgba.shape[:2]
    y = int(rng.integers(background.shape[0] - height + 1))
    x = int(rng.integers(background.shape[1] - width + 1))
    out = background.copy()
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    region = out[y : y + height, x : x + width].astype(np.float32)
    out[y : y + height, x : x + width] = (rgba[:, :, :3] * alpha + region * (1.0 - alpha) + 0.5).astype(
        np.uint8
    )
    return out


class _H5Writer:
    """The same incremental layout as ours: resizable datasets, one chunk per image, 64-sample buffer."""

    def __init__(self, h5: h5py.File, split: str, size: int):
        shape = (size, size, 3)
        self.x = h5.create_dataset(
            f"X_{split}", (0, *shape), maxshape=(None, *shape), dtype=np.uint8, chunks=(1, *shape)
        )
        self.y = h5.create_dataset(f"y_{split}", (0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        self.images, self.labels = [], []

    def add(self, image: np.ndarray, label: int) -> None:
        self.images.append(image)
        self.labels.append(label)
        if len(self.images) == BUFFER:
            self.flush()

    def flush(self) -> None:
        if not self.images:
            return
        start, count = self.x.shape[0], len(self.images)
        self.x.resize(start + count, axis=0)
        self.y.resize(start + count, axis=0)
        self.x[start:] = np.stack(self.images)
        self.y[start:] = self.labels
        self.images, self.labels = [], []


# ----------------------------------------------------------------------------------------------- driver


def child(args: argparse.Namespace) -> None:
    """Run one runner once in this process and print a JSON line with samples, seconds and peak RSS."""
    if args.runner.startswith("albumentations"):
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        sys.path.insert(0, args.albumentations_path)
        import albumentations  # noqa: F401  (imported before the baseline is taken, like ours)
    config = GenerationConfig(**LEGACY_BODY, image_size=args.size)
    backgrounds = list_backgrounds(REPO / "bgs")
    with tempfile.TemporaryDirectory() as tmp:
        objects = make_objects(Path(tmp), args.copies)
        out = Path(tmp) / "set.h5"
        baseline = _current_rss_mb()
        start, cpu = time.perf_counter(), time.process_time()
        if args.runner == "ours":
            samples = run_ours(config, objects, backgrounds, out)
        else:
            samples = run_albumentations(
                config, objects, backgrounds, out, cached=args.runner.endswith("cached")
            )
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {"samples": samples, "seconds": seconds, "cpu_seconds": cpu_seconds}
    print(json.dumps({**figures, "peak_rss_mb": peak, "baseline_mb": baseline}))


def _current_rss_mb() -> float:
    """Resident memory now (Linux), so peak minus this is what the run itself added."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def albumentations_available(path: str) -> str | None:
    probe = (
        f"import sys; sys.path.insert(0, {path!r}); import albumentations; print(albumentations.__version__)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def run_child(runner: str, size: int, copies: int, albu_path: str) -> dict:
    command = [sys.executable, __file__, "--child", runner, "--size", str(size), "--copies", str(copies)]
    command += ["--albumentations-path", albu_path]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(runners: list[str], size: int, copies: int, repeats: int, albu_path: str) -> dict[str, dict]:
    """Median figures per runner; runners take turns within each repeat, so load spikes hit them alike."""
    runs: dict[str, list[dict]] = {runner: [] for runner in runners}
    for _ in range(repeats):
        for runner in runners:
            runs[runner].append(run_child(runner, size, copies, albu_path))
    return {runner: _summary(results) for runner, results in runs.items()}


def _summary(runs: list[dict]) -> dict:
    return {
        "samples": runs[0]["samples"],
        "rate": statistics.median(r["samples"] / r["seconds"] for r in runs),
        "cpu_rate": statistics.median(r["samples"] / r["cpu_seconds"] for r in runs),
        "rss": max(r["peak_rss_mb"] for r in runs),
        "added": max(r["peak_rss_mb"] - r["baseline_mb"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--albumentations-path", default="/tmp/albu")
    parser.add_argument("--child", dest="runner", choices=RUNNERS, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=224, help=argparse.SUPPRESS)
    parser.add_argument("--copies", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runner:
        return child(args)
    version = albumentations_available(args.albumentations_path)
    runners = list(RUNNERS) if version else ["ours"]
    if not version:
        print(f"albumentations is not importable from {args.albumentations_path!r}: only ours is measured.")
        print(
            "Install it for the benchmark only (see this file's docstring) and pass --albumentations-path.\n"
        )
    samples = sum(count_samples(GenerationConfig(**LEGACY_BODY), 3).values())
    print(
        f"legacy /generate body, 3 objects -> {samples} samples; albumentations {version or 'missing'}; "
        f"{os.cpu_count()} CPUs; medians of {args.repeats} runs, each in a fresh process\n"
    )
    for size in args.sizes:
        results = measure(runners, size, 1, args.repeats, args.albumentations_path)
        for runner, result in results.items():
            ratio = results["ours"]["rate"] / result["rate"]
            print(
                f"  {size:>4} px  {runner:<22} {result['rate']:6.1f} samples/s"
                f" ({result['cpu_rate']:6.1f} per CPU-s)  peak RSS {result['rss']:4.0f} MB"
                f" (+{result['added']:3.0f} MB in the run)  ours x{ratio:.2f}"
            )
        print()
    size = max(args.sizes)
    print(f"memory stays flat ({size} px, ours): peak RSS by dataset size")
    for copies in (1, 4):
        result = measure(["ours"], size, copies, 1, args.albumentations_path)["ours"]
        print(
            f"  {result['samples']:>5} samples  {result['rate']:6.1f} samples/s"
            f"  peak RSS {result['rss']:4.0f} MB (+{result['added']:3.0f} MB in the run)"
        )


if __name__ == "__main__":
    main()
