"""Bringing data in and out through the API alone: upload, import job, catalog, export, delete, train, predict.

In-process (the import jobs run through RQ in the test's process), but for the legacy training body unchanged
(its loader processes) and a large upload's memory in the API's own process, which need the real stack.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import zipfile
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from tests.harness import peak_rss_during, stream_multipart, unique
from tests.zips import (
    annotated_zip,
    class_images,
    digits_zip,
    file_manager_zip,
    named_entry_zip,
    ratio_bomb_zip,
    stored_zip,
    symlink_zip,
)

# The legacy API's /train body; only dataset/hdf5_path point at the upload and num_epochs is shortened.
LEGACY_TRAIN = {"model_name": "convnetj", "dataset": "hdf5", "num_classes": 3, "batch_size": 16, "is_transform": 1,
              "num_workers": 2, "lr_decay": 1, "l2_reg": 0.0001, "hdf5_path": "dataset-512x512.hdf5",
              "trainset_dir": "TRAIN_data_224", "testset_dir": "TEST_data_224", "convert_grey": 0,
              "learning_rate": 0.01, "num_epochs": "3"}


def upload(studio, path: Path, name: str, role: str = "operator", **form):
    with open(path, "rb") as fh:
        return studio.http.post("/api/v1/datasets", files={"file": (path.name, fh)},
                             data={"name": name, **form}, headers=studio.headers(role), timeout=120)


def imported(studio, path: Path, name: str, **form) -> dict:
    r = upload(studio, path, name, **form)
    assert r.status_code == 202, r.text
    record = studio.wait_job(r.json()["job_id"], timeout=180)
    assert record["status"] == "finished", record
    return record


def get(studio, path: str, **kw):
    return studio.http.get(path, headers=studio.headers("operator"), timeout=60, **kw)




def tree(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*")} if folder.exists() else set()


@pytest.fixture
def outside(studio, tmp_path):
    """Everything beside DATA_DIR (but the test's own folder), DATA_DIR's uploads and datasets: unchanged."""
    parent = studio.data_dir.parent

    def snapshot():
        beside = {p for p in tree(parent) if not p.startswith((str(studio.data_dir), str(tmp_path)))}
        return beside, tree(studio.data_dir / "uploads"), tree(studio.data_dir / "datasets")

    before = snapshot()
    yield
    assert snapshot() == before, "a refused upload wrote something"


# ------------------------------------------------------------------------------------------ upload
def test_a_finder_zip_becomes_a_dataset_with_counts_thumbnails_and_size(studio, tmp_path):
    name = unique("pets")
    path = file_manager_zip(tmp_path / "pets.zip", class_images({"cat": 10, "dog": 5}))
    r = upload(studio, path, name, test_fraction="0.2", seed="3", mirror_symmetric="true")
    assert r.status_code == 202, r.text
    answer = r.json()  # what the request knows without reading the zip's directory
    assert answer["format"] == "zip" and answer["name"] == name and answer["jobs"] == [answer["job_id"]]
    record = studio.wait_job(answer["job_id"])
    assert record["status"] == "finished", record
    result = record["result"]  # what the job found in the zip
    assert result["class_names"] == ["cat", "dog"] and result["layout"] == "class_folders" and result["images"] == 15
    assert result["dataset_id"] == name
    assert record["progress"]["done"] == record["progress"]["total"] == 15
    row = get(studio, f"/api/v1/datasets/{name}").json()
    assert row["counts"] == {"train": {"cat": 8, "dog": 4}, "test": {"cat": 2, "dog": 1}}
    assert row["totals"] == {"train": 12, "test": 3} and row["kind"] == "hdf5" and row["origin"] == "uploaded"
    assert row["created_by"] == "operator" and row["config"]["layout"] == "class_folders"
    assert row["mirror_symmetric"] is True  # as the form said: cats and dogs look the same mirrored
    file = studio.data_dir / "datasets" / f"{name}.hdf5"
    assert row["path"] == f"datasets/{name}.hdf5" and row["size_bytes"] == file.stat().st_size
    assert {t["class"] for t in row["thumbnails"]} == {"cat", "dog"}
    listed = get(studio, "/api/v1/datasets").json()["datasets"]
    assert any(d["id"] == name and d["totals"] == row["totals"] for d in listed)
    assert not [p for p in (studio.data_dir / "uploads").iterdir()], "the upload must not stay behind"
    assert upload(studio, path, name).status_code == 409  # never overwritten


def test_an_hdf5_file_in_the_legacy_layout_is_taken_as_it_is(studio, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.h5"
    with h5py.File(path, "w") as h5:  # written the way a user writes one with plain h5py
        h5["X_train"] = rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
        h5["y_train"] = np.arange(12) % 3
        h5["X_test"] = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
        h5["y_test"] = np.arange(6) % 3
    name = unique("mine")
    imported(studio, path, name)
    row = get(studio, f"/api/v1/datasets/{name}").json()
    assert row["class_names"] == ["0", "1", "2"] and row["totals"] == {"train": 12, "test": 6}
    with h5py.File(studio.data_dir / row["path"]) as one, h5py.File(path) as two:
        assert np.array_equal(one["X_train"][:], two["X_train"][:])


def test_an_hdf5_file_from_another_tool_is_imported_in_the_studio_layout(studio, tmp_path):
    """Float pixels in [0, 1], channels first, one-hot labels, X_val, names as a list: rewritten as uint8
    N x H x W x C with class indices, so counts, thumbnails and the zip export all read it."""
    rng = np.random.default_rng(1)
    pixels = {split: rng.integers(0, 256, (n, 3, 8, 10)).astype(np.uint8) for split, n in (("train", 9), ("val", 6))}
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        for split, images in pixels.items():
            h5[f"X_{split}"] = images.astype(np.float32) / 255
            h5[f"y_{split}"] = np.eye(3, dtype=np.float32)[np.arange(len(images)) % 3]
        h5.attrs["class_names"] = ["ant", "bee", "cow"]
    name = unique("other")
    imported(studio, tmp_path / "other.h5", name)
    row = get(studio, f"/api/v1/datasets/{name}").json()
    assert row["class_names"] == ["ant", "bee", "cow"] and row["totals"] == {"train": 9, "test": 6}
    assert row["counts"]["test"] == {"ant": 2, "bee": 2, "cow": 2}
    with h5py.File(studio.data_dir / row["path"]) as h5:
        assert h5["X_train"].dtype == np.uint8 and h5["X_train"].shape == (9, 8, 10, 3)
        assert np.array_equal(h5["X_test"][:], np.moveaxis(pixels["val"], 1, -1))
        assert h5["y_train"][:].tolist() == [0, 1, 2] * 3
    assert get(studio, f"/api/v1/datasets/{name}/export?format=zip").status_code == 200


def test_bad_images_fail_the_import_by_name_unless_skipped(studio, tmp_path):
    path = file_manager_zip(tmp_path / "b.zip", class_images({"a": 3, "b": 3}))
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("photos/b/half.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    name = unique("bad")
    r = upload(studio, path, name)
    record = studio.wait_job(r.json()["job_id"])
    assert record["status"] == "failed" and "photos/b/half.jpg" in record["error"], record
    assert "skip_bad_images" in record["error"]
    assert not (studio.data_dir / "datasets" / f"{name}.hdf5").exists()
    assert not [p for p in (studio.data_dir / "datasets").iterdir() if p.name.startswith(f".{name}")]
    assert get(studio, f"/api/v1/datasets/{name}").status_code == 404
    record = imported(studio, path, name, skip_bad_images="true")
    assert record["result"]["skipped_images"] == ["photos/b/half.jpg"]


# What each hostile upload is, and the words its refusal must say.
HOSTILE = {
    "zip-slip": (lambda p: named_entry_zip(p, "../../../../evil.png"), "climbs out"),
    "absolute": (lambda p: named_entry_zip(p, "/tmp/evil.png"), "absolute path"),
    "symlink": (symlink_zip, "symbolic link"),
    "ratio-bomb": (ratio_bomb_zip, "zip bomb"),
    "renamed-text": (lambda p: p.write_text("notes.txt renamed to notes.zip") or p, "neither a zip"),
    "one-class": (lambda p: file_manager_zip(p, class_images({"only": 3})), "at least two classes"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_uploads_are_refused_naming_file_and_write_nothing(studio, tmp_path, outside, kind):
    """Refused by the request when its first bytes tell (not a zip), else by the import job, which reads the
    zip's directory: its error names ``file`` and the upload is gone when it ends."""
    make, words = HOSTILE[kind]
    path = tmp_path / "upload.zip"
    make(path)
    r = upload(studio, path, unique("hostile"))
    if kind == "renamed-text":
        assert r.status_code == 400 and r.json()["field"] == "file" and words in r.json()["message"], r.text
        return
    assert r.status_code == 202, r.text
    record = studio.wait_job(r.json()["job_id"])
    assert record["status"] == "failed" and "'file'" in record["error"] and words in record["error"], record


def test_a_class_folder_zip_without_a_name_fails_its_import_naming_name(studio, tmp_path, outside):
    """Only the job knows a zip holds class folders (annotated images need no name): it names the field."""
    path = file_manager_zip(tmp_path / "p.zip", class_images({"a": 2, "b": 2}))
    r = upload(studio, path, "")
    assert r.status_code == 202, r.text
    record = studio.wait_job(r.json()["job_id"])
    assert record["status"] == "failed" and "'name' is required" in record["error"], record


@pytest.mark.parametrize("form, field", [
    ({"name": "../escape"}, "name"), ({"name": "/etc/x"}, "name"),
    ({"name": "ok", "test_fraction": "1.5"}, "test_fraction"), ({"name": "ok", "test_fraction": "x"}, "test_fraction"),
    ({"name": "ok", "seed": "-1"}, "seed"),
])
def test_bad_form_fields_are_named(studio, tmp_path, outside, form, field):
    path = file_manager_zip(tmp_path / "p.zip", class_images({"a": 2, "b": 2}))
    with open(path, "rb") as fh:
        r = studio.http.post("/api/v1/datasets", files={"file": ("p.zip", fh)}, data=form,
                          headers=studio.headers("operator"), timeout=60)
    assert r.status_code == 400 and r.json()["field"] == field, r.text


def test_missing_file_roles_and_size_limit(studio, outside):
    r = studio.http.post("/api/v1/datasets", data={"name": "x"}, headers=studio.headers("operator"))
    assert r.status_code == 400 and r.json()["field"] == "file"
    for role in ("annotator", "client"):
        r = studio.http.post("/api/v1/datasets", data={"name": "x"}, headers=studio.headers(role))
        assert r.status_code == 403
    # The JSON limit of the other routes is unchanged.
    big = b"\0" * ((studio.config.max_upload_mb + 1) * 1024 * 1024)
    r = studio.http.post("/api/v1/backgrounds", files={"file": ("x.png", big)}, headers=studio.headers("operator"))
    assert r.status_code == 413


def test_a_declared_body_above_the_dataset_limit_is_refused_before_a_byte_is_read(stack):
    """Over HTTP, on gunicorn: the answer comes from the headers alone."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.api_port, timeout=30)
    conn.putrequest("POST", "/api/v1/datasets")
    conn.putheader("Authorization", stack.headers("operator")["Authorization"])
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str((stack.config.max_dataset_mb + 1) * 1024 * 1024))
    conn.endheaders()
    answer = conn.getresponse()
    assert answer.status == 413 and b"MAX_DATASET_MB" in answer.read()
    conn.close()


# ------------------------------------------------------------------------------- export and delete
def test_import_export_import_gives_identical_images_and_labels(studio, tmp_path):
    first = unique("round")
    imported(studio, file_manager_zip(tmp_path / "r.zip", class_images({"x": 6, "y": 5, "z": 4})), first)
    exported = get(studio, f"/api/v1/datasets/{first}/export?format=zip")
    assert exported.status_code == 200 and exported.headers["Content-Disposition"].endswith(f"{first}.zip")
    (tmp_path / "back.zip").write_bytes(exported.content)
    second = unique("again")
    imported(studio, tmp_path / "back.zip", second)
    one, two = (get(studio, f"/api/v1/datasets/{n}").json() for n in (first, second))
    assert one["counts"] == two["counts"] and two["config"]["layout"] == "split_folders"
    with h5py.File(studio.data_dir / one["path"]) as a, h5py.File(studio.data_dir / two["path"]) as b:
        for key in ("X_train", "y_train", "X_test", "y_test"):
            assert np.array_equal(a[key][:], b[key][:]), key
    h5 = get(studio, f"/api/v1/datasets/{first}/export?format=hdf5")
    assert h5.content == (studio.data_dir / one["path"]).read_bytes()
    assert get(studio, f"/api/v1/datasets/{first}/export?format=tar").json()["field"] == "format"


def test_delete_removes_file_and_row_and_unknown_is_404(studio, tmp_path):
    name = unique("gone")
    imported(studio, file_manager_zip(tmp_path / "g.zip", class_images({"a": 2, "b": 2})), name)
    get(studio, f"/api/v1/datasets/{name}/export?format=zip")
    r = studio.http.delete(f"/api/v1/datasets/{name}", headers=studio.headers("operator"), timeout=30)
    assert r.status_code == 200, r.text
    assert get(studio, f"/api/v1/datasets/{name}").status_code == 404
    assert not (studio.data_dir / "datasets" / f"{name}.hdf5").exists()
    assert not (studio.data_dir / "exports" / f"{name}-dataset.zip").exists()
    r = studio.http.delete(f"/api/v1/datasets/{name}", headers=studio.headers("operator"), timeout=30)
    assert r.status_code == 404


# ---------------------------------------------------------------------------- zip -> train -> predict
def test_upload_a_zip_train_with_the_legacy_body_then_predict(stack, tmp_path):
    name = unique("digits")
    imported(stack, digits_zip(tmp_path / "digits.zip"), name)
    body = {**LEGACY_TRAIN, "hdf5_path": f"{name}.hdf5", "num_epochs": "8"}
    r = stack.http.post("/api/v1/train", json=body, headers=stack.headers("operator"), timeout=60)
    assert r.status_code == 202, r.text
    record = stack.wait_job(r.json()["job_id"], timeout=300)
    assert record["status"] == "finished", record
    # 100 % from epoch 5 where this was written (is_transform no longer flips digits); chance is 33 %.
    assert record["history"][-1]["best_accuracy"] >= 90, [h["test_accuracy"] for h in record["history"]]
    # The dataset a model was trained on cannot be deleted from under it.
    r = stack.http.delete(f"/api/v1/datasets/{name}", headers=stack.headers("operator"), timeout=30)
    assert r.status_code == 409 and r.json()["field"] == "name" and "model" in r.json()["message"]
    model = next(m for m in stack.http.get("/api/v1/models/trained", headers=stack.headers("operator"),
                                         timeout=30).json()["models"] if m["job_id"] == record["id"])
    digits = load_digits()
    picture = (digits.images[digits.target == 2][-1] * 255 / 16).astype(np.uint8)  # not among the uploaded
    picture = cv2.resize(picture, (32, 32), interpolation=cv2.INTER_LINEAR)
    buf = io.BytesIO()
    Image.fromarray(picture).convert("RGB").save(buf, "JPEG", quality=85)
    body = {"image": "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), "model": model["id"]}
    r = stack.http.post("/api/v1/predict", json=body, headers=stack.headers("client"), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["results"] == "digit_2", r.json()
    assert os.path.commonpath([stack.data_dir, stack.data_dir / "datasets" / f"{name}.hdf5"]) == str(stack.data_dir)


# --------------------------------------------------------------------------------- annotated images
def test_a_csv_of_multi_labels_imports_images_into_the_annotated_set(studio, tmp_path):
    a, b = unique("beach"), unique("street")
    text = f"Id,sea,tree,car,unicorn\n{a},1,0,0,1\n{b},0,1,1,0\nnot_in_zip,1,0,0,0\n"
    path = annotated_zip(tmp_path / "a.zip", "labels.csv", text, (a, b))
    r = upload(studio, path, "")
    assert r.status_code == 202, r.text  # the request reads no labels: the job refuses them, naming them
    record = studio.wait_job(r.json()["job_id"])
    assert record["status"] == "failed" and "'file'" in record["error"] and "unicorn" in record["error"], record
    assert studio.http.get(f"/imginfo/{a}", headers=studio.headers("operator"), timeout=30).status_code == 404
    r = upload(studio, path, "", unknown_labels="add")  # a role: refused at once, nothing read
    assert r.status_code == 403 and r.json()["field"] == "unknown_labels"
    r = upload(studio, path, "", unknown_labels="drop")
    assert r.status_code == 202, r.text
    record = studio.wait_job(r.json()["job_id"])
    assert record["status"] == "finished", record
    result = record["result"]
    assert result["imported"] == 2 and result["unknown_labels"] == ["unicorn"]
    assert result["missing_images"] == ["not_in_zip"] and result["annotation_file"] == "shoot/labels.csv"
    info = {n: studio.http.get(f"/imginfo/{n}", headers=studio.headers("operator"), timeout=30).json()
            for n in (a, b)}
    assert info[a]["labels"] == ["sea"] and sorted(info[b]["labels"]) == ["car", "tree"]
    assert (studio.data_dir / "newdata" / "labels" / f"{a}.json").is_file()
    r = upload(studio, path, "", unknown_labels="drop")  # ids taken, no overwrite
    record = studio.wait_job(r.json()["job_id"])
    assert record["status"] == "failed" and a in record["error"] and "overwrite=true" in record["error"], record


def test_coco_json_with_images_imports_labels(studio, tmp_path):
    a = unique("coco")
    coco = {"images": [{"id": 1, "file_name": f"{a}.jpg"}], "categories": [{"id": 3, "name": "bus"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}]}
    record = imported(studio, annotated_zip(tmp_path / "c.zip", "coco.json", json.dumps(coco), (a,)), "")
    assert record["result"]["imported"] == 1
    info = studio.http.get(f"/imginfo/{a}", headers=studio.headers("operator"), timeout=30).json()
    assert info["labels"] == ["bus"]


# ------------------------------------------------------------------------------------------- memory
def test_a_large_upload_streams_to_disk_with_flat_api_memory(stack, tmp_path):
    import psutil

    path = stored_zip(tmp_path / "big.zip", megabytes=320)
    baseline, peak, (status, body) = peak_rss_during(psutil.Process(stack.api.pid),
                                                     lambda: stream_multipart(stack, path, unique("big")))
    assert status == 202, body[:300]
    growth = (peak - baseline) / 2**20
    print(f"\nupload {path.stat().st_size / 2**20:.0f} MB: API RSS {baseline / 2**20:.0f} MB before, "
          f"peak {peak / 2**20:.0f} MB (+{growth:.0f} MB)")
    assert growth < 64, f"the API grew {growth:.0f} MB while streaming"
    path.unlink()
