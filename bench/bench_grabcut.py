"""GrabCut benchmark: engine.segmentation.grabcut vs full-resolution cv2.grabCut, side by side.

Scenes are made so the true mask is known: the silhouette of ``skimage.data.horse()`` (thin legs, a
tail: hard for GrabCut) is filled with a real photo from ``skimage.data`` (coffee, astronaut, chelsea)
and alpha-composited onto a plain grey gradient with sensor-like noise, or onto a tinted real texture
(``skimage.data.brick()`` / ``grass()``). The box is the object's bounding box plus 4 % of the frame.

For each size and scene it prints the wall-clock and CPU time of both methods (medians over repeats),
their IoU against the true mask, and the speed ratios (wall clock; and CPU time, which is what counts
when other processes share the cores: ours uses up to two threads, cv2.grabCut one); then, per size,
the medians over scenes.

    .venv/bin/python bench/bench_grabcut.py                 # 1.1, 2.1 and 4.3 MP, all scenes
    .venv/bin/python bench/bench_grabcut.py --sizes 1200x900 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.segmentation import grabcut, grabcut_full_resolution, mask_iou  # noqa: E402

SIZES = ("1200x900", "1700x1250", "2400x1800")
SCENES = (
    ("coffee", "plain"),
    ("astronaut", "plain"),
    ("chelsea", "plain"),
    ("coffee", "brick"),
    ("astronaut", "brick"),
    ("astronaut", "grass"),
)


def make_scene(width: int, height: int, photo: str, background: str, seed: int = 0):
    """An RGB composite, its true mask and the GrabCut box ``(x1, y1, x2, y2)``."""
    horse = skimage.data.horse()
    horse = (~horse if horse.mean() > 0.5 else horse).astype(np.float32)  # object pixels = 1
    obj_h, obj_w = int(height * 0.6), int(width * 0.5)
    y0, x0 = int(height * 0.2), int(width * 0.25)
    alpha = np.zeros((height, width), np.float32)
    alpha[y0 : y0 + obj_h, x0 : x0 + obj_w] = cv2.resize(
        horse, (obj_w, obj_h), interpolation=cv2.INTER_LINEAR
    )
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(0.7, width / 1500))  # a lens-like soft edge
    fill = cv2.resize(getattr(skimage.data, photo)(), (width, height), interpolation=cv2.INTER_CUBIC)
    backdrop = _background(background, width, height, np.random.default_rng(seed))
    image = fill.astype(np.float32) * alpha[..., None] + backdrop * (1 - alpha[..., None])
    pad_x, pad_y = int(width * 0.04), int(height * 0.04)
    box = (x0 - pad_x, y0 - pad_y, x0 + obj_w + pad_x, y0 + obj_h + pad_y)
    return np.clip(image, 0, 255).astype(np.uint8), alpha > 0.5, box


def _background(kind: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "plain":
        plain = np.empty((height, width, 3), np.float32)
        plain[:] = (200, 205, 210)
        plain += np.linspace(-20, 20, width, dtype=np.float32)[None, :, None]
        return plain + rng.normal(0, 3, (height, width, 1)).astype(np.float32)
    texture = getattr(skimage.data, kind)()
    grey = (
        cv2.resize(texture, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)[..., None]
        / 255
    )
    return grey * np.array([90, 160, 70], np.float32) + np.array([40, 70, 30], np.float32)


def timed(fn, repeats: int):
    """Run ``fn`` ``repeats`` times; return its last result, median wall seconds and median CPU seconds."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return result, statistics.median(walls), statistics.median(cpus)


def bench_size(width: int, height: int, repeats: int, full_repeats: int) -> list[dict]:
    rows = []
    for photo, background in SCENES:
        image, truth, box = make_scene(width, height, photo, background)
        ours, ours_wall, ours_cpu = timed(lambda: grabcut(image, box).mask, repeats)  # noqa: B023
        full, full_wall, full_cpu = timed(lambda: grabcut_full_resolution(image, box), full_repeats)  # noqa: B023
        row = {
            "scene": f"{photo}/{background}",
            "full_s": full_wall,
            "full_cpu_s": full_cpu,
            "full_iou": mask_iou(full, truth),
            "ours_s": ours_wall,
            "ours_cpu_s": ours_cpu,
            "ours_iou": mask_iou(ours, truth),
        }
        row["speedup"] = full_wall / ours_wall
        row["cpu_speedup"] = full_cpu / ours_cpu
        rows.append(row)
        print(
            f"  {row['scene']:<17} cv2.grabCut {full_wall:7.2f} s  IoU {row['full_iou']:.4f} | "
            f"ours {ours_wall:6.3f} s (cpu {ours_cpu:.3f} s)  IoU {row['ours_iou']:.4f} | "
            f"x{row['speedup']:5.1f} (CPU x{row['cpu_speedup']:5.1f})",
            flush=True,
        )
    return rows


def summarise(label: str, rows: list[dict]) -> None:
    med = {key: statistics.median(r[key] for r in rows) for key in rows[0] if key != "scene"}
    diff = statistics.median(r["ours_iou"] - r["full_iou"] for r in rows)
    print(
        f"  MEDIAN {label}: cv2.grabCut {med['full_s']:.2f} s IoU {med['full_iou']:.4f} | "
        f"ours {med['ours_s']:.3f} s (cpu {med['ours_cpu_s']:.3f} s) IoU {med['ours_iou']:.4f} | "
        f"speed-up x{med['speedup']:.1f} (CPU time x{med['cpu_speedup']:.1f}) | "
        f"IoU ours-full (median per scene) {diff:+.4f}\n",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help="WIDTHxHEIGHT (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours per scene (default: 3)")
    parser.add_argument("--full-repeats", type=int, default=1, help="runs of cv2.grabCut (default: 1)")
    args = parser.parse_args(argv)
    print(f"GrabCut, 5 iterations; OpenCV {cv2.__version__}, {cv2.getNumberOfCPUs()} CPUs\n")
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        print(f"{size} ({width * height / 1e6:.1f} MP)")
        summarise(size, bench_size(width, height, args.repeats, args.full_repeats))


if __name__ == "__main__":
    main()
