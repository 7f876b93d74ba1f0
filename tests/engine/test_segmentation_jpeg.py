"""GrabCut on JPEG photos: no halo of background round objects on textured and plain backgrounds.

The scenes are composites with a known mask: a rounded shape cut out of a ``skimage.data`` photo, with a
lens-like soft edge, on a tinted ``skimage.data`` texture (gravel, grass, brick) or a plain grey, then
saved as JPEG the way Pillow does by default (4:2:0 chroma) and decoded back. ``bench/bench_grabcut.py``
builds its JPEG table from the same scenes.
"""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.exceptions import InvalidInput
from engine.segmentation import grabcut, grabcut_full_resolution, mask_iou, refine
from tests.photo_scenes import composite, through_jpeg, with_shadow

SCENES = [("chelsea", "gravel"), ("coffee", "grey-gravel"), ("coffee", "grass"), ("astronaut", "grass"),
          ("chelsea", "brick"), ("coffee", "brick"), ("chelsea", "plain"), ("astronaut", "noise")]


@pytest.mark.parametrize("quality", [85, 95])
@pytest.mark.parametrize(("photo", "backdrop"), SCENES)
def test_no_halo_on_jpeg(photo, backdrop, quality):
    image, truth, box = composite(400, 300, photo, backdrop)
    decoded = through_jpeg(image, quality)
    ours = grabcut(decoded, box).mask
    reference = grabcut_full_resolution(decoded, box)
    assert mask_iou(ours, truth) >= 0.95
    assert mask_iou(ours, truth) >= mask_iou(reference, truth) - 0.005
    ring = cv2.dilate(truth.view(np.uint8), np.ones((21, 21), np.uint8)).astype(bool) & ~truth
    assert ours[ring].mean() < 0.2  # the 10 px round the object, which a halo fills


def test_no_halo_on_a_photo_sized_jpeg():
    image, truth, box = composite(1600, 1200, "coffee", "gravel")
    ours = grabcut(through_jpeg(image, 85), box).mask
    assert mask_iou(ours, truth) >= 0.97


def test_lossless_composites_stay_as_good():
    image, truth, box = composite(400, 300, "astronaut", "plain")
    ours = mask_iou(grabcut(image, box).mask, truth)
    assert ours >= 0.97
    assert ours >= mask_iou(grabcut_full_resolution(image, box), truth) - 0.005


# ------------------------------------------------------------------------ strokes refine the previous cut


def test_a_background_stroke_on_a_halo_removes_it_and_keeps_the_object():
    data, truth, box, ring, stroke, width = with_shadow(400, 300)
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    first = grabcut(image, box)
    assert first.mask[ring].mean() > 0.9  # the halo a user would see
    second = refine(image, first, box, bg_strokes=[stroke], stroke_width=width)
    left = ring & (np.arange(image.shape[1])[None, :] < np.mean(np.nonzero(truth)[1]))
    assert second.mask[left].mean() < 0.05
    assert second.mask[truth].mean() > 0.99
    assert mask_iou(second.mask, truth) > mask_iou(first.mask, truth) + 0.05
    # the same strokes sent again (a client that sends all strokes so far) change nothing more
    again = refine(image, second, box, bg_strokes=[stroke], stroke_width=width)
    assert mask_iou(again.mask, second.mask) > 0.995


def test_refining_without_strokes_keeps_the_cut():
    image, truth, box = composite(400, 300, "coffee", "grass")
    first = grabcut(through_jpeg(image, 85), box)
    assert np.array_equal(refine(through_jpeg(image, 85), first, box).mask, first.mask)


def test_refining_a_cut_of_another_image_names_the_image():
    image, _, box = composite(400, 300, "coffee", "grass")
    first = grabcut(image, box)
    with pytest.raises(InvalidInput) as err:
        refine(image[:200], first, (10, 10, 100, 100))
    assert err.value.field == "image"
