"""Path-like fields with hostile values: refused with a 4xx naming the field, nothing written outside DATA_DIR."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

HOSTILE = ["../escape", "/etc/passwd", "a\x00b", "x" * 5000, "..", "sub/../../escape"]


def png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.full((60, 80, 3), 30, np.uint8)
    img[15:45, 20:60] = rng.integers(150, 255, 3, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def tree(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


@pytest.fixture
def outside(stack):
    """Everything beside DATA_DIR (its parent folder, which holds nothing else of any other stack's,
    recursively, minus DATA_DIR itself), before and after."""
    parent = stack.data_dir.parent

    def snapshot():
        return {p for p in tree(parent) if not p.startswith(str(stack.data_dir))}

    before = snapshot()
    yield
    assert snapshot() == before, "something was written outside DATA_DIR"


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
def test_hostile_path_fields_are_refused_naming_the_field(stack, outside, route, body, field, value):
    r = requests.post(stack.url + route, json=body(value), headers=stack.headers("admin"), timeout=60)
    assert r.status_code in (400, 404, 413), (r.status_code, r.text[:300])
    assert r.json()["field"] == field, r.json()


@pytest.mark.parametrize("value", HOSTILE, ids=["dotdot", "absolute", "nul", "long", "bare-dotdot", "nested"])
def test_hostile_upload_ids_are_refused(stack, outside, value):
    r = requests.post(stack.url + "/imgup", files={"file": ("p.png", png())}, data={"id_name": value},
                      headers=stack.headers("admin"), timeout=60)
    assert r.status_code == 400 and r.json()["field"] == "id_name", r.text[:300]


@pytest.mark.parametrize("value", ["..%2F..%2Fetc", "%2Fetc%2Fpasswd", "a%00b", "x" * 3000])
@pytest.mark.parametrize("route", ["/api/v1/models/{}/export?format=onnx", "/api/v1/objects/{}/image",
                                   "/imginfo/{}", "/api/v1/jobs/{}", "/api/v1/datasets/{}"])
def test_hostile_ids_in_paths_are_404_or_400(stack, outside, route, value):
    r = requests.get(stack.url + route.format(value), headers=stack.headers("admin"), timeout=30)
    assert r.status_code in (400, 404), (r.status_code, r.text[:300])
    assert set(r.json()) >= {"error", "message", "field"}


def test_hostile_upload_file_names_are_never_used_as_paths(stack, outside):
    r = requests.post(stack.url + "/api/v1/backgrounds", headers=stack.headers("admin"), timeout=60,
                      files={"file": ("../../../escape.png", png(7))}, data={"split": "train"})
    assert r.status_code in (200, 201, 409), r.text[:300]
    stored = [p for p in (stack.data_dir / "bgs").rglob("*") if p.is_file()]
    assert all(os.path.commonpath([p.resolve(), stack.data_dir.resolve()]) == str(stack.data_dir.resolve())
               for p in stored)
    assert not any("escape" in p.name for p in stored)
