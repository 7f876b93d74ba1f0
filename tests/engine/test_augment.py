"""Transforms (the whole registry), the pure functions under them, compositing and backgrounds."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from engine.augment import functional as F
from engine.augment.backgrounds import (
    assign_split,
    list_background_kinds,
    list_backgrounds,
    load_background,
    make_background,
    make_default_backgrounds,
    split_backgrounds,
)
from engine.augment.compositing import composite_on_background
from engine.augment.transforms import (
    Transform,
    create_transform,
    describe_transform,
    list_transforms,
    register_transform,
)
from engine.exceptions import InvalidInput

REPO = Path(__file__).resolve().parents[2]
ALL = list_transforms()


def certain(name: str) -> Transform:
    """The transform with its probability (if any) at 1, so every call does something."""
    params = describe_transform(name)["params"]
    return create_transform(name, **({"p": 1.0} if "p" in params else {}))


@pytest.fixture
def scene():
    """A noisy image with a red square and the square's mask."""
    rng = np.random.default_rng(7)
    image = (rng.random((48, 64, 3)) * 80).astype(np.uint8)
    mask = np.zeros((48, 64), bool)
    mask[12:30, 20:44] = True
    image[mask] = (230, 20, 20)
    return image, mask


def red(image: np.ndarray) -> np.ndarray:
    return (image[:, :, 0].astype(int) - image[:, :, 1] > 100) & (image[:, :, 0] > 150)


# ----------------------------------------------------------------------------- the registry, as a whole


def test_registry_holds_the_legacy_names_and_the_required_transforms():
    required = {
        "brightness",
        "color",
        "gaussian",
        "contrast",
        "gamma",
        "rotation",
        "scale",
        "flip_horizontal",
    }
    required |= {"flip_vertical", "flip_both", "center_crop", "sliding_window", "random_erasing"}
    assert required <= set(ALL)
    assert ALL == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_keeps_dtype_and_channels_and_the_mask_keeps_the_image_size(name, scene):
    image, mask = scene
    out, out_mask = certain(name)(image, mask, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out_mask.dtype == bool and out_mask.shape == out.shape[:2]


@pytest.mark.parametrize("name", ALL)
def test_float_images_stay_float_in_range(name, scene):
    image = scene[0].astype(np.float32) / 255
    out, _ = certain(name)(image, None, np.random.default_rng(0))
    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("name", ALL)
def test_mask_travels_with_the_image(name, scene):
    image, mask = scene
    out, out_mask = certain(name)(image, mask, np.random.default_rng(3))
    if describe_transform(name)["kind"] == "photometric":
        assert np.array_equal(out_mask, mask)
    visible = red(out)
    # the mask still covers the red square wherever it moved (erasing clears both together)
    assert visible.sum() > 0 and (visible & out_mask).sum() >= 0.85 * visible.sum()
    assert (visible & out_mask).sum() >= 0.85 * out_mask.sum()


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_output(name, scene):
    image, mask = scene
    first = certain(name)(image, mask, np.random.default_rng(42))
    second = certain(name)(image, mask, np.random.default_rng(42))
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


@pytest.mark.parametrize("name", ALL)
def test_rgba_keeps_its_alpha_through_colour_changes(name):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[5:15, 5:25] = (200, 100, 50, 255)
    out, _ = certain(name)(rgba, None, np.random.default_rng(1))
    assert out.shape[2] == 4
    if describe_transform(name)["kind"] == "photometric":
        assert np.array_equal(out[:, :, 3], rgba[:, :, 3])


@pytest.mark.parametrize("name", ALL)
def test_every_bad_parameter_raises_naming_transform_and_field(name):
    for field in describe_transform(name)["params"]:
        with pytest.raises(InvalidInput) as err:
            create_transform(name, **{field: "not-a-number"})
        assert err.value.field == field and name in str(err.value)


@pytest.mark.parametrize("name", ALL)
def test_unknown_parameter_is_refused(name):
    with pytest.raises(InvalidInput) as err:
        create_transform(name, colour_depth=3)
    assert err.value.field == "colour_depth"


def test_out_of_range_values_are_refused_with_the_allowed_range():
    cases = [
        ("brightness", {"limit": 2}, "limit"),
        ("gamma", {"low": 2.0, "high": 1.0}, "low"),
        ("gaussian", {"sigma_min": -1}, "sigma_min"),
        ("rotation", {"angles": []}, "angles"),
        ("rotation", {"angles": [10, 720]}, "angles"),
        ("scale", {"sizes": [0]}, "sizes"),
        ("scale", {"sizes": [2.5]}, "sizes"),
        ("center_crop", {"windows": [True]}, "windows"),
        ("sliding_window", {"stride": 0}, "stride"),
        ("flip_both", {"p": 1.5}, "p"),
        ("random_erasing", {"fill": "glitter"}, "fill"),
    ]
    for name, params, field in cases:
        with pytest.raises(InvalidInput) as err:
            create_transform(name, **params)
        assert err.value.field == field, (name, params)


def test_unknown_transform_lists_the_known_ones():
    with pytest.raises(InvalidInput) as err:
        create_transform("sepia")
    assert err.value.field == "transform" and "brightness" in str(err.value)


def test_randomness_only_from_the_injected_generator(scene):
    with pytest.raises(TypeError):
        create_transform("brightness")(scene[0], None, 0)


def test_a_name_registers_once():
    with pytest.raises(ValueError):

        @register_transform("brightness")
        @dataclasses.dataclass(frozen=True)
        class Again(Transform):
            pass


# -------------------------------------------------------------------------------- what a user would see


def test_rotation_grows_the_canvas_and_loses_nothing():
    rgba = np.zeros((40, 80, 4), np.uint8)
    rgba[:, :] = (10, 200, 30, 255)
    out = F.rotate(rgba, 45)
    assert out.shape[0] > 80 and out.shape[1] > 80
    assert abs(out[:, :, 3].astype(float).sum() / 255 - 40 * 80) < 0.02 * 40 * 80
    opaque = out[:, :, 3] == 255
    assert np.abs(out[opaque][:, :3].astype(int) - (10, 200, 30)).max() <= 1  # no dark fringe inside
    assert F.rotate(rgba, 90).shape[:2] == (80, 40)


def test_flip_both_is_a_half_turn_not_a_transpose(scene):
    image = scene[0]
    assert np.array_equal(F.flip(image, "both"), np.rot90(image, 2))
    assert np.array_equal(F.flip(image, "horizontal"), image[:, ::-1])
    assert np.array_equal(F.flip(image, "vertical"), image[::-1])


def test_crops_take_the_centre_and_the_stride_grid(scene):
    image = scene[0]
    assert np.array_equal(F.crop(image, *F.center_crop_box(image.shape, 16)), image[16:32, 24:40])
    assert F.sliding_window_origins(image.shape, 32, 16) == [
        (0, 0),
        (16, 0),
        (32, 0),
        (0, 16),
        (16, 16),
        (32, 16),
    ]


def test_photometric_functions_do_what_they_say(scene):
    image = scene[0]
    assert F.adjust_brightness(image, 0.1).mean() == pytest.approx(image.mean() + 25.5, abs=1.0)
    assert F.adjust_contrast(image, 0.5).std() < 0.6 * image.std()
    assert F.adjust_gamma(image, 0.5).mean() > image.mean()
    grey = F.adjust_saturation(image, 0.0).astype(int)
    assert np.abs(grey[:, :, 0] - grey[:, :, 1]).max() <= 1
    assert (
        np.abs(np.diff(F.gaussian_blur(image, 2.0).astype(int), axis=1)).mean()
        < np.abs(np.diff(image.astype(int), axis=1)).mean()
    )


def test_random_erasing_hides_part_of_the_object_and_its_mask(scene):
    image, mask = scene
    transform = create_transform("random_erasing", p=1.0, area_min=0.3, area_max=0.3)
    out, out_mask = transform(image, mask, np.random.default_rng(5))
    changed = np.any(out != image, axis=2)
    assert 0.25 * mask.size < changed.sum() <= 0.31 * mask.size
    assert not out_mask[changed].any()


# ---------------------------------------------------------------------------------------- compositing


def test_composite_keeps_the_object_wholly_inside_and_is_seeded():
    obj = np.zeros((60, 30, 4), np.uint8)
    obj[:, :] = (250, 0, 0, 255)
    background = np.full((100, 150, 3), (0, 0, 250), np.uint8)
    for seed in range(20):
        image, mask = composite_on_background(obj, background, np.random.default_rng(seed), (64, 48))
        assert image.shape == (48, 64, 3) and image.dtype == np.uint8
        height = np.nonzero(mask.any(axis=1))[0]
        # the 2:1 object, scaled to 50-95 % of the frame's shorter side, is never cut by the frame
        assert 0.5 * 48 - 1 <= len(height) <= 0.95 * 48 + 1
        assert (image[mask][:, 0] > 200).all() and (image[~mask][:, 2] > 200).all()
    again = composite_on_background(obj, background, np.random.default_rng(3), 64)
    assert np.array_equal(again[0], composite_on_background(obj, background, np.random.default_rng(3), 64)[0])


def test_composite_refuses_a_non_rgba_object():
    with pytest.raises(InvalidInput) as err:
        composite_on_background(np.zeros((5, 5, 3), np.uint8), np.zeros((9, 9, 3), np.uint8), None, 8)
    assert err.value.field == "object"


# ---------------------------------------------------------------------------------------- backgrounds


def test_procedural_backgrounds_are_deterministic_and_varied():
    for kind in list_background_kinds():
        first = make_background(kind, 64, seed=3)
        assert first.shape == (64, 64, 3) and first.dtype == np.uint8
        assert np.array_equal(first, make_background(kind, 64, seed=3))
        assert not np.array_equal(first, make_background(kind, 64, seed=4))


def test_default_backgrounds_are_split_into_disjoint_sets(tmp_path):
    sets = make_default_backgrounds(tmp_path, seed=0, n_train=4, n_test=2, size=64)
    listed = list_backgrounds(tmp_path)
    assert listed.train == sorted(sets.train) and listed.test == sorted(sets.test)
    assert len(listed.train) == 4 and len(listed.test) == 2
    assert {p.name for p in listed.train}.isdisjoint(p.name for p in listed.test)
    assert load_background(listed.test[0]).shape == (64, 64, 3)


def test_the_same_picture_in_both_sets_is_refused(tmp_path):
    sets = make_default_backgrounds(tmp_path, n_train=2, n_test=1, size=32)
    (tmp_path / "test" / "copy.jpg").write_bytes(sets.train[0].read_bytes())
    with pytest.raises(InvalidInput) as err:
        list_backgrounds(tmp_path)
    assert err.value.field == "backgrounds"


def test_split_by_content_is_stable_and_fills_both_sides(tmp_path):
    paths = make_default_backgrounds(tmp_path, n_train=6, n_test=0, size=32).train
    first = split_backgrounds(paths, test_fraction=0.3)
    assert first == split_backgrounds(list(reversed(paths)), test_fraction=0.3)
    assert first.train and first.test and set(first.train).isdisjoint(first.test)
    assert assign_split(b"same bytes") == assign_split(b"same bytes")


def test_shipped_backgrounds_exist_and_are_disjoint():
    shipped = list_backgrounds(REPO / "bgs")
    assert len(shipped.train) >= 12 and len(shipped.test) >= 4
    assert sum(p.stat().st_size for p in shipped.train + shipped.test) < 2_000_000
