"""``POST /api/v1/generate``, its job, backgrounds and the dataset catalog against the running studio."""

from __future__ import annotations

import io
import json
import secrets
import time

import h5py
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from engine.augment import list_transforms
from engine.augment.backgrounds import make_background
from engine.augment.generate import OPTION_RANGES, GenerationConfig
from services.api import create_app
from services.app.generate import GenerateBody, generation_config
from services.app.validation import invalid_input_from
from services.platform.config import Config
from services.storage.store import open_store
from tests.scenes import LEGACY_BOX, encode, scene

# The legacy API's /generate body, key for key and value for value.
LEGACY = {
    "number_backgrounds": "2",
    "training_transforms": ["brightness", "color"],
    "testing_transforms": ["gaussian", "contrast"],
    "scales": ["500", "490"],
    "flip_vertically": "1",
    "flip_horizontally": "1",
    "flip_both": "1",
    "angels": ["15", "-15", "30", "-30"],
    "test_angels": ["5", "-5", "20", "-20", "35", "-35"],
    "apply_occulsion": "0",
    "occulsion_window": "0",
    "occulsion_stride": "0",
    "apply_center_crop": "0",
    "center_crop_windows": [112, 56],
}
CLASSES = ("gen_red", "gen_blue")


def post(studio, path: str, body: dict, role: str = "operator"):
    return studio.http.post(path, json=body, headers=studio.headers(role))


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def add_background(studio, data: bytes, split: str | None = None):
    return studio.http.post("/api/v1/backgrounds", files={"file": ("bg.png", data)},
                         data={"split": split} if split else {}, headers=studio.headers("operator"), timeout=30)


_MADE: set = set()


def make_library(studio):
    """Two backgrounds per split and one cut-out of each of two classes, made through the API (once per studio:
    the expected totals count one cut-out per class)."""
    if studio.data_dir in _MADE:
        return studio
    _MADE.add(studio.data_dir)
    for index, split in enumerate(("train", "train", "test", "test")):
        r = add_background(studio, png(make_background("noise", 96, 9000 + index)), split)
        assert r.status_code in (200, 409), r.text  # 409: an earlier module added the same picture
    for name, colour in zip(CLASSES, ((210, 40, 40), (40, 60, 210)), strict=True):
        image, _ = scene(colour)
        r = post(studio, "/api/v1/segment", {**LEGACY_BOX, "ean": name, "image": encode(image)})
        assert r.status_code == 200, r.text
    return studio


@pytest.fixture(scope="module")
def library(studio):
    return make_library(studio)


@pytest.fixture(scope="module")
def library_over_http(stack):
    return make_library(stack)


def test_legacy_spellings_and_correct_spellings_mean_the_same_engine_options():
    seed = generation_config(GenerateBody.model_validate(LEGACY))
    correct = {"angles" if k == "angels" else "test_angles" if k == "test_angels" else
               k.replace("occulsion", "occlusion"): v for k, v in LEGACY.items()}
    assert generation_config(GenerateBody.model_validate(correct)) == seed
    assert seed == GenerationConfig(number_backgrounds=2, training_transforms=("brightness", "color"),
                                    testing_transforms=("gaussian", "contrast"), scales=(500, 490),
                                    flip_vertically=True, flip_horizontally=True, flip_both=True,
                                    angles=(15, -15, 30, -30), test_angles=(5, -5, 20, -20, 35, -35),
                                    apply_occlusion=False, occlusion_window=0, occlusion_stride=0,
                                    apply_center_crop=False, center_crop_windows=(112, 56), image_size=224)


def test_legacy_body_makes_a_dataset_with_the_legacy_layout(door):
    studio = make_library(door)
    r = post(studio, "/api/v1/generate", {**LEGACY, "image_size": 32, "classes": list(CLASSES)})
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["jobs"] == [answer["job_id"]] and answer["status_code"] == "200"
    record = studio.wait_job(answer["job_id"])
    assert record["status"] == "finished", record
    result = record["result"]
    # per object: train 5 angles x 4 flips x 2 scales x 2 backgrounds; test 7 angles x 4 x 2 x 2
    assert result["totals"] == {"train": 160, "test": 224}
    assert record["progress"]["done"] == record["progress"]["total"] == 384
    path = studio.data_dir / result["path"]
    assert path.parent == studio.data_dir / "datasets" and path.suffix == ".hdf5"
    with h5py.File(path) as h5:
        names = json.loads(h5.attrs["class_names"])
        assert names == sorted(CLASSES) and json.loads(h5.attrs["config"])["angles"] == [15, -15, 30, -30]
        for split, total in result["totals"].items():
            images, labels = h5[f"X_{split}"], h5[f"y_{split}"][:]
            assert images.dtype == np.uint8 and images.shape == (total, 32, 32, 3) and labels.shape == (total,)
            per_class = dict(zip(names, np.bincount(labels, minlength=len(names)).tolist(), strict=True))
            assert per_class == result["counts"][split] == {name: total // 2 for name in names}
        assert h5["X_train"][:].std() > 10  # pictures, not zeros
    listed = studio.http.get("/api/v1/datasets", headers=studio.headers("operator"), timeout=10).json()
    row = next(d for d in listed["datasets"] if d["id"] == result["dataset_id"])
    assert row["job_id"] == answer["job_id"] and row["image_size"] == 32 and row["class_names"] == names
    assert row["counts"] == result["counts"] and row["totals"] == result["totals"]
    assert row["config"]["test_angles"] == [5, -5, 20, -20, 35, -35] and row["folders"] is None


def test_named_dataset_with_folder_export_and_no_overwrite(library):
    studio = library
    name = "export_" + secrets.token_hex(3)
    body = {"number_backgrounds": 1, "image_size": 32, "classes": list(CLASSES), "hdf5_path": f"{name}.hdf5",
            "export_folders": True, "testing_transforms": [], "test_fraction": "0.25"}
    record = studio.wait_job(post(studio, "/api/v1/generate", body).json()["job_id"])
    assert record["status"] == "finished", record
    result = record["result"]
    assert result["dataset_id"] == name and result["folders"] == {"train": f"{name}_train", "test": f"{name}_test"}
    for split, per_class in result["counts"].items():
        for cls, count in per_class.items():
            files = list((studio.data_dir / f"{name}_{split}" / cls).glob("*.png"))
            assert len(files) == count > 0
    again = post(studio, "/api/v1/generate", {**body, "hdf5_path": name})
    assert again.status_code == 409 and again.json()["field"] == "hdf5_path"


def test_two_identical_requests_make_two_files_with_the_same_samples(library):
    studio = library
    body = {"image_size": 32, "classes": list(CLASSES), "seed": "7", "angels": ["20"]}
    ids = [post(studio, "/api/v1/generate", body).json()["job_id"] for _ in range(2)]
    results = [studio.wait_job(job_id)["result"] for job_id in ids]
    assert all(results) and results[0]["path"] != results[1]["path"]  # never the same file
    with h5py.File(studio.data_dir / results[0]["path"]) as a, h5py.File(studio.data_dir / results[1]["path"]) as b:
        for key in ("X_train", "y_train", "X_test", "y_test"):
            assert np.array_equal(a[key][:], b[key][:])  # same seed, same inputs: same samples


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"training_transforms": ["brightness", "sparkle"]}, "training_transforms", list_transforms()),
    ({"testing_transforms": ["nope"]}, "testing_transforms", ["gaussian", "contrast"]),
    ({"image_size": 8}, "image_size", ["32..1024"]),
    ({"angels": ["15", "400"]}, "angels", ["-360"]),
    ({"angles": ["400"]}, "angles", ["-360"]),
    ({"number_backgrounds": "0"}, "number_backgrounds", ["1..100"]),
    ({"apply_occulsion": "1", "occulsion_window": "999", "image_size": 64}, "occulsion_window", ["8..64"]),
    ({"apply_center_crop": "1", "center_crop_windows": []}, "center_crop_windows", []),
    ({"flip_both": "maybe"}, "flip_both", []),
    ({"classes": ["no_such_class"]}, "classes", ["gen_red"]),
    ({"name": "../outside"}, "name", []),
    ({"angle": ["15"]}, "angle", []),
])
def test_bad_options_are_400_naming_the_field_and_the_allowed_values(library, change, field, words):
    body = {**LEGACY, **change}
    if "angles" in change:  # one spelling per option: both at once is refused as ambiguous
        body.pop("angels")
    r = post(library, "/api/v1/generate", body)
    assert r.status_code == 400, r.text
    assert r.json()["field"].split(".")[0] == field
    assert all(word in r.json()["message"] for word in words), r.json()["message"]


def test_an_empty_object_library_is_400(tmp_path):
    """A studio of its own (same code, empty DATA_DIR), so objects made by other tests do not count."""
    config = Config(data_dir=tmp_path, jwt_secret_key="k" * 40)
    app = create_app(config)
    open_store(tmp_path).create_user("op", "password123", "operator")
    client = app.test_client()
    token = client.post("/auth", json={"username": "op", "password": "password123"}).get_json()["access_token"]
    r = client.post("/api/v1/generate", json=LEGACY, headers={"Authorization": f"JWT {token}"})
    assert r.status_code == 400 and r.get_json()["field"] == "classes"
    assert "empty" in r.get_json()["message"] and open_store(tmp_path).count_rows("jobs") == 0


def test_cancel_mid_generation_leaves_no_file_and_no_row(library_over_http):
    """Cancelled while it runs: a job on a real worker process."""
    studio = library_over_http
    many = [str(a) for a in range(-170, 180, 10)]
    body = {**LEGACY, "image_size": 128, "number_backgrounds": 30, "angels": many, "test_angels": many,
            "classes": list(CLASSES), "name": "cancelled_" + secrets.token_hex(3)}
    job_id = post(studio, "/api/v1/generate", body).json()["job_id"]
    headers = studio.headers("operator")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until samples are being written
        record = studio.http.get(f"/api/v1/jobs/{job_id}", headers=headers, timeout=10).json()
        if (record.get("progress") or {}).get("done"):
            break
        time.sleep(0.1)
    assert record["status"] == "started" and record["progress"]["done"] < record["progress"]["total"], record
    r = studio.http.post(f"/api/v1/jobs/{job_id}/cancel", headers=headers, timeout=30)
    assert r.status_code == 200
    assert studio.wait_job(job_id)["status"] == "cancelled"
    time.sleep(0.5)  # the job's own clean-up runs as it unwinds
    assert not list((studio.data_dir / "datasets").glob(f"*{body['name']}*"))
    assert open_store(studio.data_dir).get_dataset(body["name"]) is None


def test_backgrounds_are_listed_by_split_and_never_in_both(library):
    studio = library
    listed = studio.http.get("/api/v1/backgrounds", headers=studio.headers("annotator"), timeout=10).json()
    assert listed["counts"]["train"] >= 2 and listed["counts"]["test"] >= 2
    assert {b["split"] for b in listed["backgrounds"]} == {"train", "test"}
    picture = png(make_background("tiles", 64, 777 + time.time_ns() % 100_000))
    first = add_background(studio, picture)  # no split: the smaller set
    assert first.status_code == 200, first.text
    smaller = min(("train", "test"), key=lambda s: (listed["counts"][s], s != "train"))
    assert first.json()["split"] == smaller and first.json()["origin"] == "user"
    other = "test" if smaller == "train" else "train"
    twin = add_background(studio, picture, other)
    assert twin.status_code == 409 and twin.json()["field"] == "file"
    assert add_background(studio, b"not a picture").json()["field"] == "file"
    assert add_background(studio, picture, "validation").json()["field"] == "split"
    r = studio.http.post("/api/v1/backgrounds", files={"file": ("bg.png", picture)},
                      headers=studio.headers("annotator"), timeout=10)
    assert r.status_code == 403


def test_the_body_holds_numbers_to_the_engines_ranges_and_names_the_field_as_spelled():
    schema = GenerateBody.model_json_schema()["properties"]
    assert (schema["image_size"]["minimum"], schema["image_size"]["maximum"]) == OPTION_RANGES["image_size"]
    for spelling in ("occulsion_window", "occlusion_window"):
        with pytest.raises(ValidationError) as err:
            GenerateBody.model_validate({spelling: str(int(OPTION_RANGES["occlusion_window"][1]) + 1)})
        assert invalid_input_from(err.value).field == spelling
