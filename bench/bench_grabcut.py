"""GrabCut benchmark: engine.segmentation.grabcut vs full-resolution cv2.grabCut, side by side.

Scenes are made so the true mask is known: the silhouette of ``skimage.data.horse()`` (thin legs, a
tail: hard for GrabCut) is filled with a real photo from ``skimage.data`` (coffee, astronaut, chelsea)
and alpha-composited onto a plain grey gradient with sensor-like noise, or onto a tinted real texture
(``skimage.data.brick()`` / ``grass()``). The box is the object's bounding box plus 4 % of the frame.

For each size and scene it prints the wall-clock and CPU time of both methods (medians over repeats),
their IoU against the true mask, and the speed ratios (wall clock; and CPU time, which is what counts
when other processes share the cores: ours uses up to two threads, cv2.grabCut one); then, per size,
the medians over scenes.

The HTTP table (``--table http``) is the speed goal alone, in a few minutes: per size (1, 3, 12 MP; a
q85 JPEG with a shadow ring round the object), full-resolution ``cv2.grabCut`` on the decoded pixels
(once, at the sizes in ``--full-sizes``), then the medians of ``POST /api/v1/segment`` for a first cut
and for a background stroke refining it, and the ratio; plus where a 3 MP request's time goes, stage by
stage, in-process (``--http-repeats`` runs each).

The JPEG table (``--table jpeg``, the default) is what users send: the composites of
``tests/photo_scenes.py`` (a rounded piece of a skimage photo on grey gravel, tinted grass,
brick, a plain grey and the project's procedural "noise"), saved by Pillow as JPEG (4:2:0) and decoded.
Per background × quality × size it gives the IoU and wall time of full-resolution ``cv2.grabCut``, of
the fast path as it was before the colour floor (read from git, commit ``BEFORE``), and of today's;
then the median ``POST /api/v1/segment`` time per size against a real API (Redis, worker, gunicorn),
with the first cut and a stroke's refinement apart. ``cv2.grabCut`` takes minutes at 12 MP, so it runs
only at the sizes in ``--full-sizes`` (default 1 and 3 MP) and only at ``--full-quality`` (add
``--full-every-quality`` for every quality at 1 MP, as in the README's run: about 10 minutes at load
average 11 on the 2 cores); 12 MP runs at that quality only.

    .venv/bin/python bench/bench_grabcut.py                        # JPEG table, about 8 minutes when busy
    .venv/bin/python bench/bench_grabcut.py --table http           # HTTP vs cv2.grabCut, 1/3/12 MP, 2-4 min
    .venv/bin/python bench/bench_grabcut.py --table lossless       # 1.1, 2.1 and 4.3 MP, all scenes
    .venv/bin/python bench/bench_grabcut.py --table lossless --sizes 1200x900 --repeats 1
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from engine.segmentation import grabcut, grabcut_full_resolution, mask_iou  # noqa: E402
from tests.photo_scenes import composite, jpeg_bytes, with_shadow  # noqa: E402

BEFORE = "bf51dd5"  # the fast path before the colour floor (JPEG halo)
JPEG_SIZES = {"1MP": (1200, 900), "3MP": (2000, 1500), "12MP": (4000, 3000)}
JPEG_SCENES = (("grey-gravel", "coffee"), ("grass", "coffee"), ("brick", "astronaut"), ("plain", "coffee"),
               ("noise", "chelsea"))

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


# ------------------------------------------------------------------------------------------ JPEG table


def load_before():
    """engine.segmentation as of ``BEFORE`` (None outside a git checkout)."""
    try:
        source = subprocess.run(["git", "show", f"{BEFORE}:engine/segmentation.py"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "segmentation_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("segmentation_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def decoded(data: bytes) -> np.ndarray:
    from engine.images import decode_image

    return decode_image(data)


def jpeg_rows(sizes, qualities, full_sizes, full_quality, before, full_every_quality=False) -> list[dict]:
    rows = []
    for size in sizes:
        width, height = JPEG_SIZES[size]
        for backdrop, photo in JPEG_SCENES:
            image, truth, box = composite(width, height, photo, backdrop)
            for quality in qualities if size != "12MP" else [full_quality]:
                pixels = decoded(jpeg_bytes(image, quality))
                row = {"size": size, "scene": f"{photo}/{backdrop}", "q": quality}
                if size in full_sizes and (quality == full_quality or (full_every_quality and size == "1MP")):
                    mask, row["full_s"], _ = timed(lambda: grabcut_full_resolution(pixels, box), 1)  # noqa: B023
                    row["full_iou"] = mask_iou(mask, truth)
                if before is not None:
                    mask, row["before_s"], _ = timed(lambda: before.grabcut(pixels, box).mask, 1)  # noqa: B023
                    row["before_iou"] = mask_iou(mask, truth)
                mask, row["ours_s"], _ = timed(lambda: grabcut(pixels, box).mask, 1)  # noqa: B023
                row["ours_iou"] = mask_iou(mask, truth)
                rows.append(row)
                print("  " + format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    def cell(key):
        return (f"IoU {row[key + '_iou']:.3f} {row[key + '_s']:6.2f} s" if key + "_iou" in row
                else "            -      ")

    return (f"{row['size']:>5} {row['scene']:<22} q{row['q']:<3} cv2.grabCut {cell('full')} | "
            f"before {cell('before')} | ours {cell('ours')}")


def summarise_jpeg(rows: list[dict]) -> None:
    print("\nMEDIANS per size (over backgrounds and qualities; cv2.grabCut where it ran):")
    for size in dict.fromkeys(r["size"] for r in rows):
        group = [r for r in rows if r["size"] == size]
        parts = []
        for key, name in (("full", "cv2.grabCut"), ("before", "before"), ("ours", "ours")):
            ran = [r for r in group if key + "_iou" in r]
            if ran:
                parts.append(f"{name} IoU {statistics.median(r[key + '_iou'] for r in ran):.3f} "
                             f"{statistics.median(r[key + '_s'] for r in ran):.2f} s (n={len(ran)})")
        both = [r for r in group if "full_iou" in r]
        worst = min((r["ours_iou"] - r["full_iou"] for r in both), default=float("nan"))
        print(f"  {size:>5}: " + " | ".join(parts) + f" | worst ours-cv2 per scene {worst:+.3f}"
              f" | min ours IoU {min(r['ours_iou'] for r in group):.3f}")


def http_times(sizes, repeats: int, breakdown_size: str | None = None) -> dict:
    """Median ``POST /api/v1/segment`` wall time per size: a first cut of a q85 JPEG, and a stroke after it."""
    import requests

    from tests.harness import Stack

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp)).start()
        try:
            for size in sizes:
                width, height = JPEG_SIZES[size]
                data, truth, box, _, stroke, stroke_width = with_shadow(width, height)
                x1, y1, x2, y2 = box
                body = {"x1": str(x1), "y1": str(y1), "x2": str(x2), "y2": str(y2), "ean": "bench",
                        "image": "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")}
                firsts, strokes = [], []
                for _ in range(repeats):  # a body without strokes is always a first cut
                    firsts.append(_post(requests, stack, body))
                    strokes.append(_post(requests, stack, {**body, "bg_strokes": [stroke],
                                                           "stroke_width": stroke_width}))
                out[size] = (statistics.median(firsts), statistics.median(strokes), len(data))
                print(f"  HTTP {size:>5}: first cut {out[size][0]:.2f} s, a stroke {out[size][1]:.2f} s "
                      f"(JPEG {len(data) / 1e6:.1f} MB, medians of {repeats})", flush=True)
                _forget_cuts(stack)
                if size == breakdown_size:
                    stage_breakdown(stack, body, {**body, "bg_strokes": [stroke], "stroke_width": stroke_width},
                                    repeats)
        finally:
            stack.close()
    return out


def run_http(args) -> None:
    """cv2.grabCut vs HTTP per size, side by side in one run, then the 3 MP stage breakdown."""
    from engine.images import decode_image

    print(f"HTTP vs cv2.grabCut (q85 JPEG with a shadow ring; OpenCV {cv2.__version__}); medians of "
          f"{args.http_repeats}\n")
    full = {}
    for size in args.jpeg_sizes:
        if size in args.full_sizes:
            data, _, box, *_ = with_shadow(*JPEG_SIZES[size])
            _, full[size], _ = timed(lambda: grabcut_full_resolution(decode_image(data), box), 1)  # noqa: B023
            print(f"  cv2.grabCut {size:>5}: {full[size]:.2f} s", flush=True)
    http = http_times(args.jpeg_sizes, args.http_repeats, breakdown_size="3MP")
    print("\n| size | cv2.grabCut | HTTP first cut | ratio | HTTP stroke |")
    print("| --- | --- | --- | --- | --- |")
    for size, (first, stroke, _) in http.items():
        ratio = f"{full[size] / first:.1f}×" if size in full else "–"
        reference = f"{full[size]:.2f} s" if size in full else "–"
        print(f"| {size} | {reference} | {first:.2f} s | {ratio} | {stroke:.2f} s |")


def stage_breakdown(stack, body: dict, stroke_body: dict, repeats: int) -> None:
    """Medians of each stage of a request in-process (the API's own functions, this process's CPU)."""
    import hashlib
    import json

    from services.app import segment
    from services.storage.store import open_store

    config, store = stack.config, open_store(stack.data_dir)
    stages: dict[str, list[float]] = {}

    def stage(name, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        stages.setdefault(name, []).append(time.perf_counter() - start)
        return out

    strokes = segment.SegmentBody(**stroke_body)
    for _ in range(repeats):
        parsed = stage("parse body", segment.SegmentBody, **body)
        box = parsed.box()
        digest = stage("sha256 of the body", lambda text: hashlib.sha256(text.encode()).hexdigest(), parsed.image)
        image = stage("decode (first time)", segment.decode, config, parsed.image)
        stage("decode (kept, a stroke)", segment.decode_kept, config, parsed.image, digest)
        cut = stage("GrabCut", segment.cut_out, image, box)
        stage("remember the cut (Redis)", segment.remember_cut, config, "bench", digest, box, cut)
        png = stage("cut-out PNG", segment.encode_cutout_png, cut.cutout)
        text = stage("base64", lambda data: base64.b64encode(data).decode("ascii"), png)
        stage("JSON", json.dumps, {"output_image": text})
        stage("save object + row", segment.save_object, config, store, "bench", png, source=None, bbox=cut.bbox,
              created_by="bench", size=(1, 1))
        previous = stage("recall the cut (Redis)", segment.recall_cut, config, "bench", digest, box, image.shape[:2])
        stage("refine with a stroke", segment.refine_cut, image, previous, box, None, strokes.bg_strokes,
              strokes.stroke_width)
    print("  where a 3 MP request's time goes, in-process (medians):")
    for name, seconds in stages.items():
        print(f"    {name:<26} {1000 * statistics.median(seconds):7.1f} ms")


def _post(requests, stack, body: dict) -> float:
    start = time.perf_counter()
    r = requests.post(stack.url + "/api/v1/segment", json=body, headers=stack.headers("operator"), timeout=600)
    r.raise_for_status()
    return time.perf_counter() - start


def _forget_cuts(stack) -> None:
    from services.jobs.runtime import redis_connection

    conn = redis_connection(stack.redis_url)
    for key in conn.keys("segment:last-cut:*"):
        conn.delete(key)


def run_jpeg(args) -> None:
    before = load_before()
    print(f"JPEG table: GrabCut, 5 iterations; OpenCV {cv2.__version__}, {cv2.getNumberOfCPUs()} CPUs; "
          f"'before' = fast path at {BEFORE}" + ("" if before else " (not found: skipped)") + "\n")
    rows = jpeg_rows(args.jpeg_sizes, args.qualities, args.full_sizes, args.full_quality, before,
                     args.full_every_quality)
    summarise_jpeg(rows)
    print("\nHTTP end to end (POST /api/v1/segment, q85 JPEG, shadow-ring scene):")
    http = http_times(args.jpeg_sizes, args.http_repeats)
    three = [r for r in rows if r["size"] == "3MP" and "full_s" in r]
    if "3MP" in http and three:
        full = statistics.median(r["full_s"] for r in three)
        print(f"\n  3 MP: cv2.grabCut {full:.1f} s vs HTTP first cut {http['3MP'][0]:.2f} s: "
              f"x{full / http['3MP'][0]:.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--table", choices=("jpeg", "lossless", "http"), default="jpeg")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help="lossless: WIDTHxHEIGHT (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="lossless: runs of ours per scene (default: 3)")
    parser.add_argument("--full-repeats", type=int, default=1, help="lossless: runs of cv2.grabCut (default: 1)")
    parser.add_argument("--jpeg-sizes", nargs="+", default=list(JPEG_SIZES), choices=list(JPEG_SIZES))
    parser.add_argument("--qualities", nargs="+", type=int, default=[75, 85, 95])
    parser.add_argument("--full-sizes", nargs="+", default=["1MP", "3MP"], help="sizes where cv2.grabCut runs")
    parser.add_argument("--full-quality", type=int, default=85, help="the quality cv2.grabCut runs at")
    parser.add_argument("--full-every-quality", action="store_true", help="cv2.grabCut at every quality at 1 MP")
    parser.add_argument("--http-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.table == "jpeg":
        run_jpeg(args)
        return
    if args.table == "http":
        run_http(args)
        return
    print(f"GrabCut, 5 iterations; OpenCV {cv2.__version__}, {cv2.getNumberOfCPUs()} CPUs\n")
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        print(f"{size} ({width * height / 1e6:.1f} MP)")
        summarise(size, bench_size(width, height, args.repeats, args.full_repeats))


if __name__ == "__main__":
    main()
