"""Path-like fields with hostile values: refused with a 4xx naming the field, nothing written outside DATA_DIR.

In-process, through the API's test client (the raw HTTP parser's own limits are ``test_hardening_doors.py``'s)."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.harness import LocalStudio

HOSTILE = ["../escape", "/etc/passwd", "a\x00b", "x" * 5000, "..", "sub/../../escape"]


def png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.full((60, 80, 3), 30, np.uint8)
    img[15:45, 20:60] = rng.integers(150, 255, 3, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def tree_beside(data_dir: Path) -> set[str]:
    """Every path under DATA_DIR's parent folder except DATA_DIR and what it holds (not walked)."""
    found = set()
    for folder, subfolders, files in os.walk(data_dir.parent):
        if folder == str(data_dir.parent):
            subfolders[:] = [s for s in subfolders if s != data_dir.name]
        found.update(os.path.join(folder, name) for name in subfolders + files)
    return found


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> LocalStudio:
    return LocalStudio.in_own_folder(tmp_path_factory, "hostile")


@pytest.fixture
def outside(studio):
    """Everything beside DATA_DIR (its parent folder, which holds nothing else of any other studio's,
    recursively, minus DATA_DIR itself), before and after."""
    before = tree_beside(studio.data_dir)
    yield
    assert tree_beside(studio.data_dir) == before, "something was written outside DATA_DIR"


JSON_CASES = [
    ("/api/v1/segment", lambda v: {"x1": "10", "y1": "10", "x2": "70", "y2": "50", "ean": v,
                                   "image": "data:image/png;base64," + base64.b64encode(png()).decode()}, "ean"),
    ("/api/v1/train", lambda v: {"model_name": "lenet5", "dataset": "hdf5", "hdf5_path": v, "num_epochs": 1},
     "hdf5_path"),
    ("/api/v1/train", lambda v: {"model_name": "lenet5", "dataset": "custom", "trainset_dir": v,
                                 "testset_dir": "t", "num_epochs": 1}, "trainset_dir"),
    ("/api/v1/train", lambda v: {"model_name": "lenet5", "dataset": "custom", "trainset_dir": "t",
                                 "testset_dir": v, "num_epochs": 1}, "testset_dir"),
    ("/api/v1/generate", lambda v: {"name": v}, "name"),
    ("/api/v1/predict", lambda v: {"model": v, "image": base64.b64encode(png()).decode()}, "model"),
]


@pytest.mark.parametrize("value", HOSTILE, ids=["dotdot", "absolute", "nul", "long", "bare-dotdot", "nested"])
@pytest.mark.parametrize("route,body,field", JSON_CASES, ids=[f"{r}:{f}" for r, _, f in JSON_CASES])
def test_hostile_path_fields_are_refused_naming_the_field(studio, outside, route, body, field, value):
    r = studio.client().post(route, json=body(value), headers=studio.headers("admin"))
    assert r.status_code in (400, 404, 413), (r.status_code, r.text[:300])
    assert r.json["field"] == field, r.json


@pytest.mark.parametrize("value", HOSTILE, ids=["dotdot", "absolute", "nul", "long", "bare-dotdot", "nested"])
def test_hostile_upload_ids_are_refused(studio, outside, value):
    r = studio.client().post("/imgup", data={"file": (io.BytesIO(png()), "p.png"), "id_name": value},
                             headers=studio.headers("admin"))
    assert r.status_code == 400 and r.json["field"] == "id_name", r.text[:300]


@pytest.mark.parametrize("value", ["..%2F..%2Fetc", "%2Fetc%2Fpasswd", "a%00b", "x" * 3000])
@pytest.mark.parametrize("route", ["/api/v1/models/{}/export?format=onnx", "/api/v1/objects/{}/image",
                                   "/imginfo/{}", "/api/v1/jobs/{}", "/api/v1/datasets/{}"])
def test_hostile_ids_in_paths_are_404_or_400(studio, outside, route, value):
    r = studio.client().get(route.format(value), headers=studio.headers("admin"))
    assert r.status_code in (400, 404), (r.status_code, r.text[:300])
    assert set(r.json) >= {"error", "message", "field"}


def test_hostile_upload_file_names_are_never_used_as_paths(studio, outside):
    r = studio.client().post("/api/v1/backgrounds", headers=studio.headers("admin"),
                             data={"file": (io.BytesIO(png(7)), "../../../escape.png"), "split": "train"})
    assert r.status_code in (200, 201, 409), r.text[:300]
    stored = [p for p in (studio.data_dir / "bgs").rglob("*") if p.is_file()]
    assert stored, "the background was not stored"
    assert all(os.path.commonpath([p.resolve(), studio.data_dir.resolve()]) == str(studio.data_dir.resolve())
               for p in stored)
    assert not any("escape" in p.name for p in stored)
