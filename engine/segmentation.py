"""GrabCut segmentation from a box (and optional strokes), fast enough to be interactive on big photos.

Plain ``cv2.grabCut`` costs about a quarter of a microsecond per pixel per iteration on one core, so a
1 MP photo takes over a second and a 12 MP one tens of seconds. :func:`grabcut` solves coarse to fine:

1. **Coarse.** The box plus a margin of context (the region of interest) is sampled on a grid whose
   longest side is ``work_size`` cells, one full-resolution pixel per cell at a seeded random place
   (not averaged: averaging turns textures into flat colours that no real pixel has, and the colour
   models learnt from them then misjudge the photo). GrabCut runs there with the requested iterations.
2. **Colour models at full resolution.** The two GMMs are re-estimated (one OpenCV-style learning
   step) on a second, independent jittered sample labelled by the coarse result.
3. **Uncertain region.** A band about a coarse cell wide around the upscaled boundary, plus the coarse
   cells whose colour contradicts their label (gaps between legs that coarse smoothing filled in, thin
   parts it cut off).
4. **Fine.** Tiles holding uncertain pixels are cut again at full resolution with OpenCV's
   ``GC_EVAL_FREEZE_MODEL`` and the re-estimated models; everything else keeps its coarse label as a
   hard constraint. Tiles are large (GrabCut derives its edge contrast ``beta`` from the window, and
   small windows around an edge would weaken edge snapping) and run on a small thread pool (OpenCV
   releases the GIL).

Why JPEG leaves a halo, and the colour floor. On an object pasted on gravel, grass, brick or a plain
grey, full-resolution ``cv2.grabCut`` keeps a band of background 5–15 px wide once the picture went
through JPEG (at 400×300, quality 75–95, IoU down to 0.75, against 0.92–0.98 as PNG). Putting the
JPEG's luma with the lossless chroma gives back the PNG's IoU, the reverse keeps the halo, and adding
noise to widen the models changes nothing: the chroma is to blame. Such backgrounds hold almost one hue
(chroma spread under one level), so OpenCV learns background components narrower than a level in
chroma; JPEG smears the object's chroma (2× subsampled, quantised in 16 px blocks) one or two levels
into the background up to about 12 px out, and every such pixel becomes impossible as background.
Every colour component here is therefore given a floor, ``_COLOUR_FLOOR`` (2 levels standard
deviation across the grey axis, 1 along it; OpenCV adds 0.01): the halo goes (at 400×300, IoU
0.87–0.995 where ``cv2.grabCut`` gets 0.75–0.99, never more than 0.001 below it), and lossless pictures
gain too. A floor of 3 levels starts to lose object parts whose colour is close to the background's
(the astronaut's pale sky on plain grey); 2 levels on luma as well nibbled the rim of a cat on red
brick. The learning steps are therefore ours (:func:`_solve`); OpenCV seeds the models and cuts with
them frozen.

``bench/bench_grabcut.py`` compares this with full-resolution ``cv2.grabCut`` on composites with a known
mask: at 1–4 MP it is 10–20× faster for the same or better IoU, and it has a JPEG table.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from threadpoolctl import ThreadpoolController

from engine.exceptions import InvalidInput

DEFAULT_ITERATIONS = 5
MAX_ITERATIONS = 20
MAX_STROKE_WIDTH = 500  # image pixels
DEFAULT_STROKE_WIDTH = 8
DEFAULT_WORK_SIZE = 256
_CONTEXT_MARGIN = 0.5  # context kept around the box, as a fraction of its longest side
_TILE = 256  # refinement tiles at full resolution: big, so GrabCut's contrast (beta) stays near global
_TILE_MARGIN = 8  # context around the uncertain pixels of a tile, so tile seams do not show
_COARSE_SEED, _SAMPLE_SEED = 1, 0  # two independent jittered grids (see _jittered_grid)
_BAND_CELLS = 0.75  # half-width of the refined band, in coarse cells
_DISAGREE_LOGLIK = 1.0  # log-likelihood ratio past which a coarse cell's colour contradicts its label
_N_COMPONENTS = 5  # OpenCV's GrabCut GMMs have five components; a model is 5 + 15 + 45 = 65 doubles
# Covariance added to every colour component (RGB levels squared): about the colour error JPEG leaves
# near edges (see the module docstring). Across the grey axis (chroma) 2 levels standard deviation; along
# it (luma, which JPEG keeps at full resolution) 1 level, so objects that differ from the background
# mainly in brightness keep their edge.
_GREY_AXIS = np.outer(np.full(3, 1 / np.sqrt(3)), np.full(3, 1 / np.sqrt(3)))
_COLOUR_FLOOR = 2.0**2 * (np.eye(3) - _GREY_AXIS) + 1.0**2 * _GREY_AXIS

_STROKE_REACH = 1  # a stroke re-decides pixels up to this many stroke widths away
# tiles of a stroke's re-cut: a thin band along a stroke fills less of a small tile; the models are
# frozen, so only the edge contrast (beta) depends on the tile
_STROKE_TILE = 128
_STROKE_SAMPLES = 40_000  # pixels round the strokes the models are re-learnt from
_STROKE_WEIGHT = 4  # how many times a painted pixel counts when the models are re-learnt

Box = tuple[int, int, int, int]
Strokes = Sequence[Sequence[Sequence[float]]]


@dataclass(frozen=True)
class Segmentation:
    """The result of :func:`grabcut`.

    Attributes:
        mask: H×W bool array over the whole image, True on the object.
        cutout: RGBA uint8 array cropped to the mask's bounding box; alpha is 255 on the object, 0 elsewhere.
        bbox: ``(x1, y1, x2, y2)`` of the crop in image pixels (x2, y2 exclusive).
        models: the background and foreground colour models (OpenCV's 1×65 GMMs) the mask was cut
            with; :func:`refine` starts from them.
    """

    mask: np.ndarray
    cutout: np.ndarray
    bbox: Box
    models: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True)
class _Hints:
    """What the user marked, in the pixels of the image being cut: the box, the strokes and their width."""

    rect: Box  # (x1, y1, x2, y2), x2 and y2 exclusive
    fg: list[np.ndarray]  # object strokes, each an N×2 float array of (x, y)
    bg: list[np.ndarray]  # background strokes
    width: int  # stroke thickness

    def shifted(self, dx: int, dy: int) -> _Hints:
        """The same hints in a crop whose origin is at ``(-dx, -dy)``."""
        x1, y1, x2, y2 = self.rect
        return _Hints((x1 + dx, y1 + dy, x2 + dx, y2 + dy), _shift(self.fg, (dx, dy)), _shift(self.bg, (dx, dy)),
                      self.width)


@dataclass(frozen=True)
class _Coarse:
    labels: np.ndarray  # GrabCut labels (GC_BGD .. GC_PR_FGD) on the small grid
    rect: np.ndarray  # bool, True inside the box on the small grid
    bgd: np.ndarray
    fgd: np.ndarray
    scale: tuple[float, float]  # (sx, sy): small size / full size


# ----------------------------------------------------------------------------------------------- public


def grabcut(
    image_rgb: np.ndarray,
    box: Sequence[int],
    iterations: int = DEFAULT_ITERATIONS,
    fg_strokes: Strokes | None = None,
    bg_strokes: Strokes | None = None,
    stroke_width: int = DEFAULT_STROKE_WIDTH,
    *,
    work_size: int = DEFAULT_WORK_SIZE,
    workers: int | None = None,
) -> Segmentation:
    """Cut the object inside ``box`` out of an image with coarse-to-fine GrabCut.

    Args:
        image_rgb: H×W×3 uint8 RGB image (H×W grey and H×W×4 RGBA are accepted and converted).
        box: ``(x1, y1, x2, y2)`` corners in image pixels, x2 and y2 exclusive.
        iterations: GrabCut iterations of the coarse solve, 1 to 20.
        fg_strokes: polylines (lists of ``[x, y]`` points) painted as certain foreground.
        bg_strokes: polylines painted as certain background.
        stroke_width: stroke thickness in image pixels.
        work_size: longest side, in pixels, of the coarse solve; larger is slower and closer to plain GrabCut.
        workers: threads for the full-resolution tiles (default: up to 2).

    Returns:
        The mask over the whole image and the RGBA cut-out cropped to the object.

    Raises:
        InvalidInput: a bad box, iteration count or stroke (``field`` names it), or nothing was found.
    """
    image, hints = _validated(image_rgb, box, iterations, fg_strokes, bg_strokes, stroke_width)
    if not 32 <= int(work_size) <= 4096:
        raise InvalidInput(f"'work_size' must be 32..4096, got {work_size}", "work_size")
    with _one_blas_thread():
        mask, models = _grabcut_mask(image, hints, iterations, int(work_size), workers)
    return _segmentation(image, mask, models)


def refine(
    image_rgb: np.ndarray,
    previous: Segmentation,
    box: Sequence[int],
    fg_strokes: Strokes | None = None,
    bg_strokes: Strokes | None = None,
    stroke_width: int = DEFAULT_STROKE_WIDTH,
    *,
    workers: int | None = None,
) -> Segmentation:
    """Apply strokes to a previous cut of the same image instead of cutting it again from scratch.

    The colour models are re-learnt with the painted pixels on their side, and only the pixels near the
    strokes are cut again (at full resolution); the rest of the previous mask stays. Strokes already
    applied may be sent again: they change nothing more.

    Args:
        image_rgb: the image ``previous`` was cut from.
        previous: a result of :func:`grabcut` or :func:`refine` on this image.
        box: the box of the first cut; outside it only painted object becomes object.
        fg_strokes: polylines painted as certain foreground.
        bg_strokes: polylines painted as certain background.
        stroke_width: stroke thickness in image pixels.
        workers: threads for the full-resolution tiles (default: up to 2).

    Returns:
        The new mask and cut-out, with the re-learnt models.

    Raises:
        InvalidInput: bad box or strokes (``field`` names them), a previous cut of another size (``image``),
            or nothing left of the object.
    """
    image, hints = _validated(image_rgb, box, 1, fg_strokes, bg_strokes, stroke_width)
    if previous.models is None or previous.mask.shape != image.shape[:2]:
        raise InvalidInput("the previous cut is of another image; cut this one first", "image")
    with _one_blas_thread():
        mask, models = _refine_with_strokes(image, hints, previous, workers)
    return _segmentation(image, mask, models)


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()  # finding the loaded BLAS libraries takes milliseconds: once


def _one_blas_thread():
    """The colour-model products are small (N×10 by 10×5): on busy cores, BLAS threads waiting for each
    other made the learning steps 3× slower than one thread (0.3 s against 1 s on a loaded 2-core host)."""
    return _blas_controller().limit(limits=1, user_api="blas")


def _segmentation(image: np.ndarray, mask: np.ndarray, models) -> Segmentation:
    if not mask.any():
        raise InvalidInput(
            "GrabCut found no object inside the box; draw the box around the object or paint foreground",
            "box",
        )
    cutout, bbox = make_cutout(image, mask)
    return Segmentation(mask=mask, cutout=cutout, bbox=bbox, models=models)


def grabcut_full_resolution(
    image_rgb: np.ndarray,
    box: Sequence[int],
    iterations: int = DEFAULT_ITERATIONS,
    fg_strokes: Strokes | None = None,
    bg_strokes: Strokes | None = None,
    stroke_width: int = DEFAULT_STROKE_WIDTH,
) -> np.ndarray:
    """Plain ``cv2.grabCut`` on the whole image at full resolution: the slow reference.

    Returns:
        H×W bool mask. Same arguments and validation as :func:`grabcut`.
    """
    image, hints = _validated(image_rgb, box, iterations, fg_strokes, bg_strokes, stroke_width)
    labels = _initial_labels(image.shape[:2], hints, (1.0, 1.0))
    _run_grabcut(image, labels, iterations)
    return (labels & 1).astype(bool)


def _validated(image_rgb, box, iterations, fg_strokes, bg_strokes, stroke_width) -> tuple[np.ndarray, _Hints]:
    """The checks the GrabCut entry points share: the RGB image and the user's hints."""
    image = _as_rgb(image_rgb)
    rect = _validate_box(box, image.shape)
    _validate_iterations(iterations)
    width = _validate_stroke_width(stroke_width)
    fg = _validate_strokes(fg_strokes, "fg_strokes")
    bg = _validate_strokes(bg_strokes, "bg_strokes")
    return image, _Hints(rect, fg, bg, width)


def make_cutout(image_rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, Box]:
    """Crop an RGB image to a mask's bounding box and use the mask as alpha.

    Returns:
        ``(rgba, (x1, y1, x2, y2))`` with x2, y2 exclusive.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise InvalidInput("the mask is empty: there is nothing to cut out", "mask")
    y1, y2, x1, x2 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    alpha = mask[y1:y2, x1:x2].astype(np.uint8) * 255
    return np.dstack([image_rgb[y1:y2, x1:x2, :3], alpha]), (x1, y1, x2, y2)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


# ------------------------------------------------------------------------------------------- validation


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise InvalidInput("'image' must be an H×W×3 uint8 array", "image")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] not in (3, 4) or min(image.shape[:2]) < 2:
        raise InvalidInput(f"'image' must be an H×W×3 uint8 array, got shape {image.shape}", "image")
    return np.ascontiguousarray(image[:, :, :3])


def _validate_box(box: Sequence[int], shape: tuple[int, ...]) -> Box:
    height, width = shape[:2]
    if len(box) != 4:
        raise InvalidInput("'box' must be (x1, y1, x2, y2)", "box")
    names, limits = ("x1", "y1", "x2", "y2"), (width, height, width, height)
    values = []
    for name, value, limit in zip(names, box, limits, strict=True):
        values.append(_int_in_range(value, name, 0, limit))
    x1, y1, x2, y2 = values
    if x2 <= x1:
        raise InvalidInput(f"'x2' ({x2}) must be greater than 'x1' ({x1})", "x2")
    if y2 <= y1:
        raise InvalidInput(f"'y2' ({y2}) must be greater than 'y1' ({y1})", "y2")
    return x1, y1, x2, y2


def _int_in_range(value: object, field: str, low: int, high: int) -> int:
    # Text ("37") is parsed by the request model at the edge; here only numbers (37, 37.0) are taken.
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InvalidInput(f"'{field}' must be a number, got {value!r}", field)
    number = float(value)
    if not np.isfinite(number) or number != int(number) or not low <= number <= high:
        raise InvalidInput(f"'{field}' must be a whole number in {low}..{high}, got {value!r}", field)
    return int(number)


def _validate_iterations(iterations: int) -> None:
    if isinstance(iterations, bool) or not isinstance(iterations, int | np.integer):
        raise InvalidInput(f"'iterations' must be an integer 1..{MAX_ITERATIONS}", "iterations")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise InvalidInput(f"'iterations' must be 1..{MAX_ITERATIONS}, got {iterations}", "iterations")


def _validate_stroke_width(width: int) -> int:
    return _int_in_range(width, "stroke_width", 1, MAX_STROKE_WIDTH)


def _validate_strokes(strokes: Strokes | None, field: str) -> list[np.ndarray]:
    """Return each polyline as an N×2 float array; points may fall outside the image (drawing clips)."""
    if strokes is None:
        return []
    if isinstance(strokes, str | bytes) or not isinstance(strokes, Sequence):
        raise InvalidInput(f"'{field}' must be a list of polylines, each a list of [x, y] points", field)
    message = f"'{field}' must be a list of polylines, each a non-empty list of [x, y] numbers"
    lines = []
    for line in strokes:
        try:
            points = np.asarray(line, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(message, field) from exc
        if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0 or not np.isfinite(points).all():
            raise InvalidInput(message, field)
        lines.append(points)
    return lines


# ------------------------------------------------------------------------------------------ the solver


def _grabcut_mask(image, hints: _Hints, iterations, work_size, workers):
    """The mask over the whole image and the ``(background, foreground)`` models it was cut with."""
    height, width_px = image.shape[:2]
    rx1, ry1, rx2, ry2 = _region_of_interest(hints, (height, width_px))
    roi = image[ry1:ry2, rx1:rx2]
    local = hints.shifted(-rx1, -ry1)
    scale = min(1.0, work_size / max(roi.shape[:2]))
    if scale == 1.0:  # small enough: the coarse solve is already at full resolution
        labels = _initial_labels(roi.shape[:2], local, (1.0, 1.0))
        models = _solve(roi, labels, iterations)
        roi_mask = (labels & 1).astype(bool)
    else:
        coarse = _coarse_solve(roi, local, iterations, scale)
        roi_mask, models = _refine(roi, local, coarse, workers)
    mask = np.zeros((height, width_px), bool)
    mask[ry1:ry2, rx1:rx2] = roi_mask
    return mask, models


def _region_of_interest(hints: _Hints, shape: tuple[int, int]) -> Box:
    """The box plus context on every side (and any foreground stroke), clipped to the image."""
    x1, y1, x2, y2 = hints.rect
    margin = int(np.ceil(_CONTEXT_MARGIN * max(x2 - x1, y2 - y1))) + 2
    x1, y1, x2, y2 = x1 - margin, y1 - margin, x2 + margin, y2 + margin
    for line in hints.fg:
        x1, y1 = min(x1, int(line[:, 0].min())), min(y1, int(line[:, 1].min()))
        x2, y2 = max(x2, int(line[:, 0].max()) + 1), max(y2, int(line[:, 1].max()) + 1)
    return max(0, x1), max(0, y1), min(shape[1], x2), min(shape[0], y2)


def _shift(lines: list[np.ndarray], offset: tuple[int, int]) -> list[np.ndarray]:
    return [line + np.asarray(offset, dtype=np.float64) for line in lines]


def _initial_labels(shape, hints: _Hints, scale) -> np.ndarray:
    """GrabCut's mask mode: sure background outside the box, probable foreground inside, strokes sure."""
    sx, sy = scale
    rect = hints.rect
    labels = np.full(shape, cv2.GC_BGD, np.uint8)
    x1, y1 = int(np.floor(rect[0] * sx)), int(np.floor(rect[1] * sy))
    x2, y2 = max(x1 + 1, int(np.ceil(rect[2] * sx))), max(y1 + 1, int(np.ceil(rect[3] * sy)))
    labels[y1:y2, x1:x2] = cv2.GC_PR_FGD
    _paint(labels, hints.bg, cv2.GC_BGD, hints.width, scale)
    _paint(labels, hints.fg, cv2.GC_FGD, hints.width, scale)
    return labels


def _paint(labels: np.ndarray, lines: list[np.ndarray], value: int, width: int, scale) -> None:
    thickness = max(1, int(round(width * min(scale))))
    for line in lines:
        points = np.round(line * np.asarray(scale)).astype(np.int32).reshape(-1, 1, 2)
        if len(points) == 1:  # a click: a dot of the stroke's width
            cv2.circle(labels, tuple(int(v) for v in points[0, 0]), max(1, thickness // 2), value, -1)
        else:
            cv2.polylines(labels, [points], False, value, thickness)


def _run_grabcut(image: np.ndarray, labels: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """cv2.grabCut in mask mode, in place on ``labels``; seeded so the same input gives the same mask."""
    if not (labels & 1).any():
        raise InvalidInput("the foreground strokes and the box leave no room for the object", "fg_strokes")
    if (labels & 1).all():
        raise InvalidInput("nothing is marked as background: leave background around the box", "box")
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(0)  # GrabCut seeds its GMMs with k-means on OpenCV's global RNG
    try:
        cv2.grabCut(image, labels, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error as exc:  # e.g. too few pixels of one kind to fit five colour clusters
        raise InvalidInput(f"GrabCut cannot work with this box: {exc.err}", "box") from exc
    return bgd, fgd


def _solve(image: np.ndarray, labels: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """GrabCut in place on ``labels`` with colour models that never get narrower than the floor.

    OpenCV seeds the models (k-means); the learning steps are ours, so that every covariance gets
    ``_COLOUR_FLOOR``, then OpenCV cuts with the models frozen.
    """
    bgd, fgd = _run_grabcut(image, labels, 0)
    bgd, fgd = _floored(bgd), _floored(fgd)
    pixels = image.reshape(-1, 3).astype(np.float64)
    for _ in range(iterations):
        is_fg = (labels & 1).astype(bool).ravel()
        if is_fg.all() or not is_fg.any():
            break  # one side is empty: nothing left to learn it from
        bgd, fgd = _relearn_gmm(pixels[~is_fg], bgd), _relearn_gmm(pixels[is_fg], fgd)
        cv2.grabCut(image, labels, None, bgd, fgd, 1, cv2.GC_EVAL_FREEZE_MODEL)
    return bgd, fgd


def _floored(model: np.ndarray) -> np.ndarray:
    out = model.copy()
    out[0, 4 * _N_COMPONENTS :] += np.tile(_COLOUR_FLOOR.ravel(), _N_COMPONENTS)
    return out


def _coarse_solve(roi, hints: _Hints, iterations, scale) -> _Coarse:
    height, width_px = roi.shape[:2]
    small_w, small_h = max(2, round(width_px * scale)), max(2, round(height * scale))
    small = _jittered_grid(roi, small_w, small_h, _COARSE_SEED)
    factors = (small_w / width_px, small_h / height)
    labels = _initial_labels((small_h, small_w), hints, factors)
    in_rect = labels == cv2.GC_PR_FGD  # before the solve: the pixels GrabCut is free to decide
    bgd, fgd = _solve(small, labels, iterations)
    return _Coarse(labels=labels, rect=in_rect, bgd=bgd, fgd=fgd, scale=factors)


def _jittered_grid(roi: np.ndarray, width: int, height: int, seed: int) -> np.ndarray:
    """A ``width``×``height`` image made of one full-resolution pixel per cell, at a random place in the cell.

    Unlike an averaged (area) shrink, it keeps the photo's own colour statistics, which are what the
    full-resolution cut is judged on: averaging turns textures into flat colours that no full-resolution
    pixel has. The random place (seeded, so results repeat) keeps a regular texture such as bricks from
    aliasing with the grid.
    """
    rng = np.random.default_rng(seed)
    sx, sy = width / roi.shape[1], height / roi.shape[0]
    ys = (np.arange(height)[:, None] + rng.random((height, width))) / sy
    xs = (np.arange(width)[None, :] + rng.random((height, width))) / sx
    ys = np.minimum(ys.astype(np.intp), roi.shape[0] - 1)
    xs = np.minimum(xs.astype(np.intp), roi.shape[1] - 1)
    return np.ascontiguousarray(roi[ys, xs])


def _refine(roi, hints: _Hints, coarse: _Coarse, workers) -> np.ndarray:
    # fresh samples, not the coarse image's own pixels: the coarse models already fit those
    small_h, small_w = coarse.labels.shape
    samples = _jittered_grid(roi, small_w, small_h, _SAMPLE_SEED).astype(np.float64)
    is_fg = (coarse.labels & 1).astype(bool)
    bgd = _relearn_gmm(samples[~is_fg], coarse.bgd)
    fgd = _relearn_gmm(samples[is_fg], coarse.fgd)
    contradicts = _contradicting_cells(samples, is_fg, coarse.rect, bgd, fgd)
    mask, uncertain = _upscaled_labels(roi.shape[:2], coarse, contradicts)
    fixed = _initial_labels(roi.shape[:2], hints, (1.0, 1.0))
    uncertain &= fixed == cv2.GC_PR_FGD  # strokes and the outside of the box are never revisited
    mask[fixed == cv2.GC_FGD] = True
    mask[fixed == cv2.GC_BGD] = False
    _cut_tiles(roi, mask, uncertain, bgd, fgd, workers)
    return mask, (bgd, fgd)


def _contradicting_cells(samples, is_fg, in_rect, bgd, fgd) -> np.ndarray:
    """Coarse cells inside the box whose colour votes, with some margin, against their coarse label."""
    llr = np.zeros(is_fg.shape, np.float32)
    llr[in_rect] = _gmm_loglik(samples[in_rect], fgd) - _gmm_loglik(samples[in_rect], bgd)
    llr = cv2.blur(llr, (3, 3))  # one sampled pixel per cell is noisy; let neighbours vote
    wrong = (is_fg & (llr < -_DISAGREE_LOGLIK)) | (~is_fg & (llr > _DISAGREE_LOGLIK))
    return wrong & in_rect


def _upscaled_labels(shape, coarse: _Coarse, contradicts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution mask from the coarse labels, and the pixels worth cutting again."""
    height, width = shape
    fg = (coarse.labels & 1).astype(np.uint8)
    mask = cv2.resize(fg.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) > 0.5
    radius = int(np.ceil(_BAND_CELLS / min(coarse.scale))) + 1  # the coarse boundary is right to about a cell
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    mask_u8 = mask.view(np.uint8)
    band = cv2.dilate(mask_u8, kernel) != cv2.erode(mask_u8, kernel)
    cells = cv2.dilate(contradicts.astype(np.uint8), np.ones((3, 3), np.uint8))
    band |= cv2.resize(cells, (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    return mask, band


def _cut_tiles(roi, mask, uncertain, bgd, fgd, workers, size: int = _TILE) -> None:
    """Graph-cut the uncertain pixels at full resolution, tile by tile, writing into ``mask`` in place."""
    height, width = mask.shape
    rows, cols = -(-height // size), -(-width // size)
    padded = np.zeros((rows * size, cols * size), bool)
    padded[:height, :width] = uncertain
    tiles = list(zip(*np.nonzero(padded.reshape(rows, size, cols, size).any(axis=(1, 3))), strict=True))
    before = mask.copy()  # every tile reads the coarse labels, never a neighbour's fresh result

    def cut(tile: tuple[int, int]) -> None:
        _cut_one_tile(roi, before, mask, uncertain, tile, bgd, fgd, size)

    workers = workers or min(2, os.cpu_count() or 1)
    if workers <= 1 or len(tiles) < 2:
        for tile in tiles:
            cut(tile)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(cut, tiles))  # each tile writes a disjoint block of ``mask``


def _cut_one_tile(roi, before, mask, uncertain, tile, bgd, fgd, size) -> None:
    height, width = mask.shape
    cy, cx = tile[0] * size, tile[1] * size
    core = uncertain[cy : cy + size, cx : cx + size]
    rows, cols = np.flatnonzero(core.any(axis=1)), np.flatnonzero(core.any(axis=0))
    uy1, uy2, ux1, ux2 = cy + rows[0], cy + rows[-1] + 1, cx + cols[0], cx + cols[-1] + 1
    wy1, wx1 = max(0, uy1 - _TILE_MARGIN), max(0, ux1 - _TILE_MARGIN)
    wy2, wx2 = min(height, uy2 + _TILE_MARGIN), min(width, ux2 + _TILE_MARGIN)
    labels = np.where(before[wy1:wy2, wx1:wx2], cv2.GC_FGD, cv2.GC_BGD).astype(np.uint8)
    labels[uncertain[wy1:wy2, wx1:wx2]] += 2  # GC_BGD->GC_PR_BGD, GC_FGD->GC_PR_FGD
    window = np.ascontiguousarray(roi[wy1:wy2, wx1:wx2])
    cv2.grabCut(window, labels, None, bgd.copy(), fgd.copy(), 1, cv2.GC_EVAL_FREEZE_MODEL)
    # certain pixels keep their label through the cut, so the whole block can be written back
    mask[uy1:uy2, ux1:ux2] = (labels[uy1 - wy1 : uy2 - wy1, ux1 - wx1 : ux2 - wx1] & 1).astype(bool)


# ------------------------------------------------------------------------------- strokes on a previous cut


def _refine_with_strokes(image, hints: _Hints, previous: Segmentation, workers):
    rect, fg, bg, width = hints.rect, hints.fg, hints.bg, hints.width
    height, width_px = image.shape[:2]
    fg_paint = _painted((height, width_px), fg, width)
    bg_paint = _painted((height, width_px), bg, width)
    mask = previous.mask.copy()
    inside = np.zeros((height, width_px), bool)
    inside[rect[1] : rect[3], rect[0] : rect[2]] = True
    painted = fg_paint | bg_paint
    if not painted.any():
        return mask, previous.models
    reach = max(_STROKE_REACH * width, 2 * _TILE_MARGIN)
    wx1, wy1, wx2, wy2 = _grown_bounds(painted, reach, (height, width_px))
    window = np.ascontiguousarray(image[wy1:wy2, wx1:wx2])
    w_mask, w_fg, w_bg = mask[wy1:wy2, wx1:wx2], fg_paint[wy1:wy2, wx1:wx2], bg_paint[wy1:wy2, wx1:wx2]
    w_mask[w_bg] = False
    w_mask[w_fg] = True  # as in grabcut(): object strokes win where strokes cross, even outside the box
    near = cv2.distanceTransform((~(w_fg | w_bg)).view(np.uint8), cv2.DIST_L2, 3) <= reach
    bgd, fgd = _models_with_strokes(window, w_mask, w_fg | w_bg, near, previous.models)
    uncertain = near & ~w_fg & ~w_bg & inside[wy1:wy2, wx1:wx2]
    if uncertain.any():
        _cut_tiles(window, w_mask, uncertain, bgd, fgd, workers, _STROKE_TILE)
    return mask, (bgd, fgd)


def _painted(shape: tuple[int, int], lines: list[np.ndarray], width: int) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    _paint(canvas, lines, 1, width, (1.0, 1.0))
    return canvas.astype(bool)


def _grown_bounds(pixels: np.ndarray, grow: int, shape: tuple[int, int]) -> Box:
    rows, cols = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
    return (max(0, int(cols[0]) - grow), max(0, int(rows[0]) - grow),
            min(shape[1], int(cols[-1]) + 1 + grow), min(shape[0], int(rows[-1]) + 1 + grow))


def _models_with_strokes(window, mask, painted, near, models):
    """Re-learn both models round the strokes; painted pixels count ``_STROKE_WEIGHT`` times.

    Painted pixels say what the user sees, which the previous models got wrong; weighting them makes
    the colour they mark win over the wrongly labelled pixels round it. The models are local (learnt
    where the strokes are), which is where they are used; samples are capped so a long stroke on a
    big photo stays quick.
    """
    pixels = window.reshape(-1, 3)
    around = _capped(np.flatnonzero(near.ravel()), _STROKE_SAMPLES)
    strokes = _capped(np.flatnonzero(painted.ravel()), _STROKE_SAMPLES // _STROKE_WEIGHT)
    chosen = np.concatenate([around, np.repeat(strokes, _STROKE_WEIGHT - 1)])
    x, is_fg = pixels[chosen].astype(np.float64), mask.ravel()[chosen]
    bgd, fgd = models
    return _relearn_gmm(x[~is_fg], bgd), _relearn_gmm(x[is_fg], fgd)


def _capped(indices: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` of ``indices``, evenly spread (deterministic)."""
    if len(indices) <= limit:
        return indices
    return indices[np.linspace(0, len(indices) - 1, limit).astype(np.intp)]


# --------------------------------------------------------------------- OpenCV's GMM, read and re-learnt


def _unpack_gmm(model: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split OpenCV's 1×65 GMM into weights (5), means (5×3) and covariances (5×3×3)."""
    flat = model.ravel()
    k = _N_COMPONENTS
    return flat[:k], flat[k : 4 * k].reshape(k, 3), flat[4 * k :].reshape(k, 3, 3)


def _quadratic_features(x: np.ndarray) -> np.ndarray:
    """N×10 ``[x², y², z², xy, xz, yz, x, y, z, 1]``: any Gaussian's log density is linear in them."""
    x = np.asarray(x, np.float64)
    a, b, c = x[:, 0], x[:, 1], x[:, 2]
    return np.column_stack([a * a, b * b, c * c, a * b, a * c, b * c, a, b, c, np.ones(len(x))])


def _component_loglik(x: np.ndarray, model: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
    """N×5 log of weight × Gaussian density for each component (−inf for empty components).

    One matrix product for all components: the quadratic form expanded over :func:`_quadratic_features`.
    """
    weights, means, covs = _unpack_gmm(model)
    features = _quadratic_features(x) if features is None else features
    coefficients = np.zeros((10, _N_COMPONENTS))
    live = np.flatnonzero(weights > 0)
    for k in live:
        cov = covs[k] + np.eye(3) * 0.01  # OpenCV adds the same ridge to singular covariances
        inv, mean = np.linalg.inv(cov), means[k]
        quad = -0.5 * np.array([inv[0, 0], inv[1, 1], inv[2, 2], 2 * inv[0, 1], 2 * inv[0, 2], 2 * inv[1, 2]])
        constant = np.log(weights[k]) - 0.5 * np.log(np.linalg.det(cov)) - 0.5 * mean @ inv @ mean
        coefficients[:, k] = np.concatenate([quad, inv @ mean, [constant]])
    out = features @ coefficients
    dead = np.ones(_N_COMPONENTS, bool)
    dead[live] = False
    out[:, dead] = -np.inf
    return out


def _gmm_loglik(x: np.ndarray, model: np.ndarray) -> np.ndarray:
    per_component = _component_loglik(x, model)
    top = np.maximum(per_component.max(axis=1), -1e300)  # finite even where every density underflows
    return top + np.log(np.exp(per_component - top[:, None]).sum(axis=1))


def _relearn_gmm(x: np.ndarray, model: np.ndarray) -> np.ndarray:
    """One learning step as in OpenCV: give each sample its likeliest component, refit each component.

    Every covariance gets ``_COLOUR_FLOOR`` added. The sums are taken over the quadratic features at
    once (one matrix product), which keeps a step on a few hundred thousand pixels to milliseconds.
    """
    if len(x) < 4 * _N_COMPONENTS:
        return model  # too few samples to refit; keep the coarse model
    features = _quadratic_features(x)
    component = _component_loglik(x, model, features).argmax(axis=1)
    one_hot = np.zeros((len(x), _N_COMPONENTS))
    one_hot[np.arange(len(x)), component] = 1.0
    sums = one_hot.T @ features  # per component: Σx², Σxy ..., Σx, count
    counts = sums[:, 9]
    keep = counts >= 4  # components too small to refit are dropped; the rest share their weight
    if not keep.any():
        return model
    n = np.maximum(counts, 1)[:, None]
    means = sums[:, 6:9] / n
    second = sums[:, :6] / n
    covs = np.empty((_N_COMPONENTS, 3, 3))
    for (i, j), column in zip(((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)), range(6), strict=True):
        covs[:, i, j] = covs[:, j, i] = second[:, column] - means[:, i] * means[:, j]
    covs += _COLOUR_FLOOR
    weights = np.where(keep, counts, 0.0)
    means[~keep], covs[~keep] = 0.0, 0.0
    weights /= weights.sum()
    return np.concatenate([weights, means.ravel(), covs.ravel()])[None, :]

