"""GrabCut: quality on composites with a known mask, strokes, the cut-out, and bad input."""

import cv2
import numpy as np
import pytest
import skimage.data

from engine.exceptions import InvalidInput
from engine.segmentation import grabcut, grabcut_full_resolution, make_cutout, mask_iou


def bottle_scene(width: int, height: int, photo=skimage.data.coffee, seed: int = 0):
    """A bottle-shaped piece of a real photo on a grey gradient with noise; returns image, mask, box."""
    rng = np.random.default_rng(seed)
    shape = np.zeros((height, width), np.uint8)
    cx, cy = width // 2, int(height * 0.58)
    cv2.ellipse(shape, (cx, cy), (int(width * 0.17), int(height * 0.27)), 0, 0, 360, 255, -1)
    cv2.rectangle(shape, (cx - width // 25, int(height * 0.12)), (cx + width // 25, cy), 255, -1)
    alpha = cv2.GaussianBlur(shape.astype(np.float32) / 255, (0, 0), 1.0)[..., None]
    fill = cv2.resize(photo(), (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    backdrop = np.full((height, width, 3), (196, 200, 206), np.float32)
    backdrop += np.linspace(-18, 18, width, dtype=np.float32)[None, :, None]
    backdrop += rng.normal(0, 3, (height, width, 1)).astype(np.float32)
    image = np.clip(fill * alpha + backdrop * (1 - alpha), 0, 255).astype(np.uint8)
    truth = alpha[..., 0] > 0.5
    ys, xs = np.nonzero(truth)
    pad = width // 25
    box = (int(xs.min()) - pad, int(ys.min()) - pad, int(xs.max()) + 1 + pad, int(ys.max()) + 1 + pad)
    return image, truth, box


def horse_scene(width: int, height: int):
    """The skimage horse silhouette (thin legs) filled with the astronaut photo, on a grey gradient."""
    horse = skimage.data.horse()
    horse = (~horse if horse.mean() > 0.5 else horse).astype(np.float32)
    alpha = np.zeros((height, width), np.float32)
    oh, ow, y0, x0 = int(height * 0.6), int(width * 0.5), int(height * 0.2), int(width * 0.25)
    alpha[y0 : y0 + oh, x0 : x0 + ow] = cv2.resize(horse, (ow, oh))
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.8)[..., None]
    fill = cv2.resize(skimage.data.astronaut(), (width, height)).astype(np.float32)
    backdrop = np.full((height, width, 3), (200, 205, 210), np.float32)
    image = np.clip(fill * alpha + backdrop * (1 - alpha), 0, 255).astype(np.uint8)
    pad = width // 25
    return image, alpha[..., 0] > 0.5, (x0 - pad, y0 - pad, x0 + ow + pad, y0 + oh + pad)


@pytest.fixture(scope="module")
def bottle():
    return bottle_scene(800, 600)


def test_recovers_a_known_object_on_a_photo_sized_image(bottle):
    image, truth, box = bottle
    result = grabcut(image, box)
    assert result.mask.shape == truth.shape and result.mask.dtype == bool
    assert mask_iou(result.mask, truth) >= 0.95


def test_as_good_as_full_resolution_grabcut_on_thin_shapes():
    image, truth, box = horse_scene(720, 540)
    ours = mask_iou(grabcut(image, box).mask, truth)
    full = mask_iou(grabcut_full_resolution(image, box), truth)
    assert ours >= 0.85
    assert ours >= full - 0.01


def test_small_images_are_no_worse_than_plain_grabcut():
    image, truth, box = bottle_scene(200, 150)
    ours = mask_iou(grabcut(image, box).mask, truth)
    assert ours >= 0.85
    assert ours >= mask_iou(grabcut_full_resolution(image, box), truth) - 0.005


def test_same_input_gives_the_same_mask(bottle):
    image, _, box = bottle
    assert np.array_equal(grabcut(image, box).mask, grabcut(image, box).mask)


def test_cutout_is_the_object_cropped_with_alpha(bottle):
    image, _, box = bottle
    result = grabcut(image, box)
    x1, y1, x2, y2 = result.bbox
    ys, xs = np.nonzero(result.mask)
    assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert result.cutout.shape == (y2 - y1, x2 - x1, 4) and result.cutout.dtype == np.uint8
    alpha = result.cutout[:, :, 3]
    assert np.array_equal(alpha == 255, result.mask[y1:y2, x1:x2]) and set(np.unique(alpha)) <= {0, 255}
    assert np.array_equal(result.cutout[:, :, :3], image[y1:y2, x1:x2])


def test_box_given_as_text_is_refused_the_request_model_parses_the_legacy_strings(bottle):
    image, _, box = bottle
    with pytest.raises(InvalidInput) as err:
        grabcut(image, tuple(str(v) for v in box))
    assert err.value.field == "x1" and "must be a number" in str(err.value)


def test_foreground_stroke_adds_what_the_box_alone_misses():
    image, truth, box = bottle_scene(400, 300)
    # a grey label stuck on the bottle: the same colour as the backdrop, so GrabCut leaves it out
    image[150:190, 185:215] = (196, 200, 206)
    label = np.zeros_like(truth)
    label[150:190, 185:215] = True
    plain = grabcut(image, box).mask
    assert plain[label].mean() < 0.5
    stroked = grabcut(image, box, fg_strokes=[[[190, 170], [210, 170]]], stroke_width=6).mask
    assert stroked[label].mean() > 0.9
    assert mask_iou(stroked, truth) > mask_iou(plain, truth)


def test_background_stroke_removes_what_it_covers():
    image, truth, box = bottle_scene(400, 300)
    neck = np.zeros_like(truth)
    neck[: int(300 * 0.3)] = True
    neck &= truth
    assert grabcut(image, box).mask[neck].mean() > 0.9
    ys, xs = np.nonzero(neck)
    stroke = [
        [[int(xs.min()) - 10, y], [int(xs.max()) + 10, y]] for y in range(int(ys.min()), int(ys.max()), 4)
    ]
    result = grabcut(image, box, bg_strokes=stroke, stroke_width=5).mask
    assert result[neck].mean() < 0.1
    assert result[truth & ~neck].mean() > 0.9


@pytest.mark.parametrize(
    ("box", "field"),
    [
        ((-1, 10, 100, 100), "x1"),
        ((10, -5, 100, 100), "y1"),
        ((10, 10, 401, 100), "x2"),
        ((10, 10, 100, 301), "y2"),
        ((100, 10, 100, 100), "x2"),
        ((100, 10, 50, 100), "x2"),
        ((10, 100, 100, 100), "y2"),
        (("ten", 10, 100, 100), "x1"),
        ((10.5, 10, 100, 100), "x1"),
        ((0, 0, 400, 300), "box"),
        ((1, 2, 3), "box"),
    ],
)
def test_bad_boxes_name_the_field(box, field):
    image = np.zeros((300, 400, 3), np.uint8)
    with pytest.raises(InvalidInput) as err:
        grabcut(image, box)
    assert err.value.field == field


@pytest.mark.parametrize("iterations", [0, 21, "5", 2.0, True])
def test_bad_iterations_name_the_field(bottle, iterations):
    image, _, box = bottle
    with pytest.raises(InvalidInput) as err:
        grabcut(image, box, iterations=iterations)
    assert err.value.field == "iterations"


@pytest.mark.parametrize("strokes", ["x", [[]], [[[1, 2, 3]]], [[["a", 2]]], [[[float("nan"), 1]]], 5])
@pytest.mark.parametrize("field", ["fg_strokes", "bg_strokes"])
def test_bad_strokes_name_the_field(bottle, strokes, field):
    image, _, box = bottle
    with pytest.raises(InvalidInput) as err:
        grabcut(image, box, **{field: strokes})
    assert err.value.field == field


@pytest.mark.parametrize(
    "image", [np.zeros((30, 40, 3), np.float32), np.zeros((30, 40, 2), np.uint8), "image"]
)
def test_bad_images_name_the_field(image):
    with pytest.raises(InvalidInput) as err:
        grabcut(image, (5, 5, 20, 20))
    assert err.value.field == "image"


def test_nothing_to_cut_is_a_clear_error():
    flat = np.full((120, 160, 3), 128, np.uint8)
    with pytest.raises(InvalidInput) as err:
        grabcut(flat, (40, 30, 120, 90))
    assert err.value.field == "box"
    assert "box" in str(err.value)


def test_make_cutout_refuses_an_empty_mask():
    with pytest.raises(InvalidInput):
        make_cutout(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), bool))
