"""HDF5 dataset generation: the legacy API's /generate body, layout, counts, determinism, safety."""

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from engine.augment.backgrounds import make_default_backgrounds
from engine.augment.generate import (
    GenerationConfig,
    count_samples,
    export_image_folders,
    generate_dataset,
    preview_samples,
)
from engine.exceptions import Cancelled, InvalidInput
from tests.legacy_generation import LEGACY_BODY


def write_object(path: Path, colour, shape: str) -> Path:
    rgba = np.zeros((60, 40, 4), np.uint8)
    if shape == "bar":
        rgba[5:55, 12:28] = (*colour, 255)
    else:
        yy, xx = np.mgrid[:60, :40]
        rgba[((yy - 30) / 28) ** 2 + ((xx - 20) / 18) ** 2 <= 1] = (*colour, 255)
    Image.fromarray(rgba).save(path)
    return path


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("library")
    objects = {
        "mug": [
            write_object(root / "mug1.png", (200, 30, 30), "egg"),
            write_object(root / "mug2.png", (30, 30, 200), "egg"),
        ],
        "bottle": [write_object(root / "bottle.png", (30, 160, 30), "bar")],
    }
    sets = make_default_backgrounds(root / "bgs", n_train=3, n_test=2, size=64)
    return objects, sets.train, sets.test


def small(**overrides) -> GenerationConfig:
    return GenerationConfig(**{**LEGACY_BODY, "image_size": 32, **overrides})


def generate(library, out: Path, config=None, **kwargs):
    objects, train, test = library
    return generate_dataset(config or small(), objects, train, test, out, **kwargs)


def test_the_legacy_body_expands_as_documented():
    config = GenerationConfig(**LEGACY_BODY)
    # per object: angles {0, ±15, ±30} x flips {none, h, v, both} x 2 scales x 2 backgrounds
    assert count_samples(config, 1) == {"train": 5 * 4 * 2 * 2, "test": 7 * 4 * 2 * 2}
    assert config.flip_both and not config.apply_occlusion and config.image_size == 224
    assert count_samples(config, 3) == {"train": 240, "test": 336}


def test_layout_attributes_and_counts(library, tmp_path):
    config = small()
    result = generate(library, tmp_path / "set.h5", config)
    with h5py.File(result["path"]) as h5:
        assert set(h5) == {"X_train", "y_train", "X_test", "y_test"}
        assert h5["X_train"].shape == (3 * 80, 32, 32, 3) and h5["X_train"].dtype == np.uint8
        assert h5["X_test"].shape == (3 * 112, 32, 32, 3)
        assert h5["y_train"].dtype.kind == "i"
        names = json.loads(h5.attrs["class_names"])
        assert names == ["bottle", "mug"]
        assert json.loads(h5.attrs["config"]) == config.to_dict()
        for split in ("train", "test"):
            labels = h5[f"y_{split}"][:]
            assert {names[i]: int((labels == i).sum()) for i in range(2)} == result["counts"][split]
        train_bgs, test_bgs = (
            json.loads(h5.attrs["train_backgrounds"]),
            json.loads(h5.attrs["test_backgrounds"]),
        )
    assert result["counts"]["train"] == {"bottle": 80, "mug": 160}
    assert set(train_bgs).isdisjoint(test_bgs) and train_bgs and test_bgs


def test_samples_show_the_object_on_a_background(library, tmp_path):
    result = generate(library, tmp_path / "set.h5", small(training_transforms=[], scales=[400]))
    with h5py.File(result["path"]) as h5:
        first = h5["X_train"][0]  # bottle, 0°, no flip: a green bar 400/512 of the frame tall
    green = (first[:, :, 1] > 120) & (first[:, :, 0] < 80) & (first[:, :, 2] < 80)
    rows = np.flatnonzero(green.any(axis=1))
    assert 20 <= len(rows) <= 27


def test_same_seed_same_file_other_seed_other_images(library, tmp_path):
    paths = [generate(library, tmp_path / f"{i}.h5")["path"] for i in range(2)]
    digests = {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}
    assert len(digests) == 1
    other = generate(library, tmp_path / "other.h5", small(seed=1))["path"]
    with h5py.File(paths[0]) as a, h5py.File(other) as b:
        assert not np.array_equal(a["X_train"][:], b["X_train"][:])


def test_progress_is_reported_up_to_the_total(library, tmp_path):
    seen = []
    generate(library, tmp_path / "set.h5", on_progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (576, 576)
    assert all(a[0] < b[0] for a, b in zip(seen, seen[1:], strict=False))


def test_cancelling_leaves_no_file(library, tmp_path):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 10

    with pytest.raises(Cancelled):
        generate(library, tmp_path / "set.h5", should_stop=stop)
    assert list(tmp_path.iterdir()) == []


def test_a_broken_object_leaves_no_file(library, tmp_path):
    objects, train, test = library
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(InvalidInput) as err:
        generate_dataset(small(), {**objects, "odd": [broken]}, train, test, tmp_path / "set.h5")
    assert err.value.field == "objects"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png"]


def test_an_existing_dataset_is_never_overwritten(library, tmp_path):
    out = tmp_path / "set.h5"
    out.write_bytes(b"precious")
    with pytest.raises(InvalidInput):
        generate(library, out)
    assert out.read_bytes() == b"precious"


def test_train_and_test_backgrounds_must_differ(library, tmp_path):
    objects, train, _ = library
    with pytest.raises(InvalidInput) as err:
        generate_dataset(small(), objects, train, [train[0]], tmp_path / "set.h5")
    assert err.value.field == "backgrounds"
    with pytest.raises(InvalidInput):
        generate_dataset(small(), objects, train, [], tmp_path / "set.h5")
    with pytest.raises(InvalidInput) as err:
        generate_dataset(small(), {}, train, train, tmp_path / "set.h5")
    assert err.value.field == "classes"


def test_crops_and_sliding_windows_add_views(library, tmp_path):
    config = small(
        apply_center_crop=True,
        center_crop_windows=[16],
        apply_occlusion=True,
        occlusion_window=16,
        occlusion_stride=16,
        angles=[],
        test_angles=[],
        flip_both=False,
        flip_vertically=False,
        apply_random_erasing=True,
    )
    assert config.views_per_composite() == 1 + 1 + 4
    expected = count_samples(config, 3)
    result = generate(library, tmp_path / "set.h5", config)
    assert result["totals"] == expected == {"train": 3 * 2 * 2 * 2 * 6, "test": 3 * 2 * 2 * 2 * 6}


def test_test_fraction_caps_the_test_split(library, tmp_path):
    config = small(test_fraction=0.2)
    counts = count_samples(config, 3)
    assert counts["test"] == 3 * 20  # 80 train composites per object x 0.2 / 0.8
    assert generate(library, tmp_path / "set.h5", config)["totals"] == counts


def test_preview_shows_exactly_what_the_job_writes(library, tmp_path):
    objects, train, _ = library
    config = small()
    preview = preview_samples(config, objects, train, "train", count=5)
    assert len(preview) == 5
    path = generate(library, tmp_path / "set.h5", config)["path"]
    indices = np.linspace(0, 239, num=5).round().astype(int)
    with h5py.File(path) as h5:
        for (image, name), index in zip(preview, indices, strict=True):
            assert np.array_equal(image, h5["X_train"][index])
            assert name == json.loads(h5.attrs["class_names"])[h5["y_train"][index]]


def test_export_as_image_folders(library, tmp_path):
    path = generate(library, tmp_path / "set.h5", small(angles=[], test_angles=[]))["path"]
    counts = export_image_folders(Path(path), tmp_path / "folders")
    assert counts["train"] == {"bottle": 16, "mug": 32}
    files = sorted((tmp_path / "folders" / "test" / "mug").glob("*.png"))
    assert len(files) == 32
    with h5py.File(path) as h5:
        first_mug = int(np.flatnonzero(h5["y_test"][:] == 1)[0])
        assert np.array_equal(np.asarray(Image.open(files[0])), h5["X_test"][first_mug])
    with pytest.raises(InvalidInput):
        export_image_folders(Path(path), tmp_path / "folders")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"number_backgrounds": 0}, "number_backgrounds"),
        ({"training_transforms": ["sepia"]}, "training_transforms"),
        ({"testing_transforms": "gaussian"}, "testing_transforms"),
        ({"scales": ["big"]}, "scales"),
        ({"scales": [600]}, "scales"),
        ({"flip_both": "maybe"}, "flip_both"),
        ({"angles": [400]}, "angles"),
        ({"image_size": 10}, "image_size"),
        ({"apply_center_crop": True, "center_crop_windows": [300]}, "center_crop_windows"),
        ({"apply_center_crop": True, "center_crop_windows": []}, "center_crop_windows"),
        ({"apply_occlusion": True}, "occlusion_window"),
        ({"apply_occlusion": True, "occlusion_window": 16, "occlusion_stride": 0}, "occlusion_stride"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_options_name_the_field(overrides, field):
    with pytest.raises(InvalidInput) as err:
        small(**overrides)
    assert err.value.field == field


@pytest.mark.parametrize(("overrides", "field"), [
    ({"number_backgrounds": "2"}, "number_backgrounds"),
    ({"scales": ["500"]}, "scales"),
    ({"flip_both": "1"}, "flip_both"),
    ({"angles": ["15"]}, "angles"),
    ({"test_fraction": "0.2"}, "test_fraction"),
])
def test_text_is_refused_because_the_request_model_parses_it(overrides, field):
    with pytest.raises(InvalidInput) as err:
        small(**overrides)
    assert err.value.field == field and "got '" in str(err.value)  # the text itself is named


def test_unknown_transform_message_lists_the_registry():
    with pytest.raises(InvalidInput) as err:
        GenerationConfig(training_transforms=["sepia"])
    assert "brightness" in str(err.value) and "gaussian" in str(err.value)


def test_config_round_trips_through_its_json():
    config = small(test_fraction=0.25, seed=7)
    assert GenerationConfig(**json.loads(json.dumps(config.to_dict()))) == config
