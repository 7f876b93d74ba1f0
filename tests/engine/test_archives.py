"""Zips of class folders, made the way file managers make them, and hostile zips."""

from __future__ import annotations

import json
import zipfile

import h5py
import numpy as np
import pytest

from engine import archives, formats
from engine.exceptions import InvalidInput
from tests.zips import (
    annotated_zip,
    class_images,
    file_manager_zip,
    jpeg,
    named_entry_zip,
    ratio_bomb_zip,
    symlink_zip,
)


def test_a_finder_zip_is_read_as_class_folders_without_the_litter(tmp_path):
    images = class_images({"cat": 5, "dog": 4})
    archive = archives.read_class_folders(file_manager_zip(tmp_path / "p.zip", images))
    assert archive.layout == "class_folders" and archive.class_names == ["cat", "dog"]
    assert len(archive.entries) == 9 and archive.ignored == []
    assert all("__MACOSX" not in e.member and ".DS_Store" not in e.member for e in archive.entries)


def test_the_split_is_stratified_seeded_and_leaves_each_class_in_both_splits(tmp_path):
    archive = archives.read_class_folders(file_manager_zip(tmp_path / "p.zip", class_images({"a": 10, "b": 3})))
    splits = archives.split_entries(archive, 0.2, seed=7)
    test_per_class = {c: sum(e.class_name == c for e in splits["test"]) for c in ("a", "b")}
    assert test_per_class == {"a": 2, "b": 1} and len(splits["train"]) == 10
    assert splits == archives.split_entries(archive, 0.2, seed=7)
    assert splits != archives.split_entries(archive, 0.2, seed=8)


def test_train_and_test_folders_keep_their_split(tmp_path):
    path = tmp_path / "s.zip"
    images = class_images({"a": 3, "b": 2})
    file_manager_zip(path, images, root="ds", split="train")
    with zipfile.ZipFile(path, "a") as zf:  # val/ is the test split when there is no test/
        for name in images:
            zf.writestr(f"ds/val/{name}/v.jpg", jpeg(images[name][0]))
    archive = archives.read_class_folders(path)
    splits = archives.split_entries(archive, 0.5, 0)
    assert archive.layout == "split_folders"
    assert [len(splits["train"]), len(splits["test"])] == [5, 2]


def test_write_then_export_then_write_gives_identical_pixels_and_labels(tmp_path):
    images = class_images({"a": 4, "b": 3, "c": 3})
    archive = archives.read_class_folders(file_manager_zip(tmp_path / "p.zip", images))
    splits = archives.split_entries(archive, 0.3, 0)
    report = archives.write_zip_as_hdf5(tmp_path / "p.zip", tmp_path / "one.h5", archive, splits)
    assert report.shape == (24, 24) and report.bad_images == []
    assert sum(report.counts["train"].values()) + sum(report.counts["test"].values()) == 10
    archives.write_hdf5_as_zip(tmp_path / "one.h5", tmp_path / "back.zip", archive.class_names, "one")
    again = archives.read_class_folders(tmp_path / "back.zip")
    assert again.layout == "split_folders" and again.class_names == archive.class_names
    archives.write_zip_as_hdf5(tmp_path / "back.zip", tmp_path / "two.h5", again, archives.split_entries(again, 0.3, 0))
    with h5py.File(tmp_path / "one.h5") as one, h5py.File(tmp_path / "two.h5") as two:
        for key in ("X_train", "y_train", "X_test", "y_test"):
            assert np.array_equal(one[key][:], two[key][:]), key


def test_images_of_different_sizes_become_one_square_size(tmp_path):
    images = class_images({"a": 2, "b": 2})
    images["b"][0] = np.zeros((40, 30, 3), np.uint8)
    archive = archives.read_class_folders(file_manager_zip(tmp_path / "p.zip", images))
    report = archives.write_zip_as_hdf5(tmp_path / "p.zip", tmp_path / "o.h5", archive,
                                        archives.split_entries(archive, 0.5, 0))
    assert report.shape == (224, 224)
    with h5py.File(tmp_path / "o.h5") as h5:
        assert h5["X_train"].shape[1:] == (224, 224, 3)


def test_a_dataset_larger_than_the_free_disk_is_refused_before_writing(tmp_path):
    archive = archives.read_class_folders(file_manager_zip(tmp_path / "p.zip", class_images({"a": 2, "b": 2})))
    with pytest.raises(InvalidInput, match="GB are free") as err:
        archives.write_zip_as_hdf5(tmp_path / "p.zip", tmp_path / "o.h5", archive,
                                   archives.split_entries(archive, 0.5, 0), image_size=512, free_bytes=10**6)
    assert err.value.field == "image_size" and not (tmp_path / "o.h5").exists()


def test_bad_images_are_named_and_refused_unless_skipped(tmp_path):
    path = file_manager_zip(tmp_path / "p.zip", class_images({"a": 3, "b": 3}))
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("photos/a/broken.jpg", b"\xff\xd8\xff\xe0 this is no jpeg")
    archive = archives.read_class_folders(path)
    splits = archives.split_entries(archive, 0.3, 0)
    with pytest.raises(InvalidInput, match="photos/a/broken.jpg") as err:
        archives.write_zip_as_hdf5(path, tmp_path / "o.h5", archive, splits)
    assert err.value.field == "file" and "skip_bad_images" in str(err.value)
    report = archives.write_zip_as_hdf5(path, tmp_path / "o.h5", archive, splits, skip_bad_images=True)
    assert report.bad_images == ["photos/a/broken.jpg"]
    assert sum(report.counts["train"].values()) + sum(report.counts["test"].values()) == 6


@pytest.mark.parametrize("make, words", [
    (lambda p: named_entry_zip(p, "../../evil.png"), "zip-slip"),
    (lambda p: named_entry_zip(p, "a/../../evil.png"), "zip-slip"),
    (lambda p: named_entry_zip(p, "/etc/cron.d/evil.png"), "absolute"),
    (lambda p: named_entry_zip(p, "C:\\Windows\\evil.png"), "absolute"),
    (symlink_zip, "symbolic link"),
    (ratio_bomb_zip, "zip bomb"),
], ids=["dotdot", "nested-dotdot", "absolute", "drive", "symlink", "ratio-bomb"])
def test_hostile_zips_are_refused_naming_the_field(tmp_path, make, words):
    with pytest.raises(InvalidInput, match=words) as err:
        archives.read_class_folders(make(tmp_path / "h.zip"))
    assert err.value.field == "file"


def test_total_size_limit_and_not_a_zip(tmp_path):
    path = file_manager_zip(tmp_path / "p.zip", class_images({"a": 3, "b": 3}))
    with pytest.raises(InvalidInput, match="expands to"):
        archives.read_class_folders(path, archives.ZipLimits(max_total_bytes=1000))
    text = tmp_path / "notes.zip"
    text.write_text("just some notes, renamed")
    with pytest.raises(InvalidInput, match="neither a zip"):
        formats.sniff(text)
    with pytest.raises(InvalidInput, match="not a readable zip") as err:
        archives.read_class_folders(text)
    assert err.value.field == "file"


@pytest.mark.parametrize("layout, message", [
    ({"only/x.jpg": 1}, "at least two classes"),
    ({"x.jpg": 1, "y.jpg": 1}, "inside class folders"),
    ({"train/a/x.jpg": 1, "train/b/x.jpg": 1}, "no test/"),
    ({"train/a/x.jpg": 1, "dogs/x.jpg": 1}, "mixes split folders"),
])
def test_unclear_layouts_are_refused(tmp_path, layout, message):
    with zipfile.ZipFile(tmp_path / "l.zip", "w") as zf:
        for name in layout:
            zf.writestr(name, jpeg(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(InvalidInput, match=message):
        archives.read_class_folders(tmp_path / "l.zip")


# ------------------------------------------------------------------------------------- annotations
def read_labelled(path):
    """A zip of labelled images read by the format the registry recognises it as (CSV or COCO)."""
    return formats.recognise(path).read_labelled(path, archives.ZipLimits())


def test_the_projects_own_csv_export_and_a_labels_column_are_read(tmp_path):
    onehot = "Id,sea,tree,car\nbeach,1,0,0\nstreet,0,1,1\nnowhere,1,0,0\n"
    got = read_labelled(annotated_zip(tmp_path / "a.zip", "labels.csv", onehot))
    assert got.items == [("shoot/images/beach.jpg", ["sea"]), ("shoot/images/street.jpg", ["tree", "car"])]
    assert got.missing == ["nowhere"] and got.labels == ["car", "sea", "tree"]
    listed = "filename,labels\nbeach.jpg,sea\nimages/street.jpg,tree;car\n"
    got = read_labelled(annotated_zip(tmp_path / "b.zip", "labels.csv", listed, ("beach", "street", "x")))
    assert dict(got.items)["shoot/images/street.jpg"] == ["tree", "car"] and got.unannotated == ["shoot/images/x.jpg"]


def test_coco_json_labels_are_the_categories_of_each_images_annotations(tmp_path):
    coco = {"images": [{"id": 1, "file_name": "beach.jpg"}, {"id": 2, "file_name": "street.jpg"}],
            "categories": [{"id": 7, "name": "sea"}, {"id": 9, "name": "zebra"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 4, 4]},
                            {"id": 2, "image_id": 1, "category_id": 9}, {"id": 3, "image_id": 1, "category_id": 7}]}
    got = read_labelled(annotated_zip(tmp_path / "c.zip", "instances.json", json.dumps(coco)))
    assert got.items == [("shoot/images/beach.jpg", ["sea", "zebra"]), ("shoot/images/street.jpg", [])]
    assert formats.Probe(file_manager_zip(tmp_path / "f.zip", class_images({"a": 1, "b": 1}))).label_file is None


@pytest.mark.parametrize("name, text, message", [
    ("l.csv", "Id,sea\nbeach,yes\n", "other than 0/1"),
    ("l.json", "{\"images\": 3}", "not COCO JSON"),
    ("l.csv", "Id,sea\nmissing,1\n", "no row"),
])
def test_unreadable_annotations_are_refused_naming_file(tmp_path, name, text, message):
    with pytest.raises(InvalidInput, match=message) as err:
        read_labelled(annotated_zip(tmp_path / "z.zip", name, text))
    assert err.value.field == "file"
