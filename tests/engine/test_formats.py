"""The registry of dataset formats, whole: each format is recognised from a file another tool wrote, imports,
and, where it exports, comes back from its export with the same pixels, labels and split.

Each sample below is written the way people make one: h5py's plain ``f["X_train"] = array``, a zip made with
Python's ``zipfile`` as a file manager makes it (a wrapping folder, ``__MACOSX/`` and ``.DS_Store`` litter), a
spreadsheet's CSV (an id column and a ``labels`` column), COCO JSON as annotation tools export it (``info``,
``licenses``, boxes, areas, ``iscrowd``, ``supercategory``). A format registered without a sample here fails
:func:`test_every_format_has_a_sample_written_by_another_tool`.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from engine import archives, formats
from engine.exceptions import InvalidInput
from tests.zips import class_images, file_manager_zip, png


@dataclass(frozen=True)
class Sample:
    """A file of one format, and what importing it must give."""

    path: Path
    class_names: list[str]
    totals: dict[str, int] | None = None  # images per split (formats that make datasets)
    labels: dict[str, list[str]] | None = None  # image file name -> labels (formats that make annotations)


def hdf5_by_hand(tmp_path: Path) -> Sample:
    """X/y arrays written with plain h5py, no class names: the classes are the label values."""
    rng = np.random.default_rng(11)
    path = tmp_path / "by_hand.h5"
    with h5py.File(path, "w") as h5:
        h5["X_train"] = rng.integers(0, 256, (9, 12, 10, 3), dtype=np.uint8)
        h5["y_train"] = np.array([0, 1, 2] * 3)
        h5["X_test"] = rng.integers(0, 256, (6, 12, 10, 3), dtype=np.uint8)
        h5["y_test"] = np.array([2, 1, 0] * 2)
    return Sample(path, ["0", "1", "2"], {"train": 9, "test": 6})


def finder_zip(tmp_path: Path) -> Sample:
    """Class folders under a wrapping folder, PNGs (lossless), with a Finder's litter."""
    images = class_images({"cat": 6, "dog": 4}, size=16, seed=3)
    path = file_manager_zip(tmp_path / "pets.zip", images, encode=png)
    return Sample(path, ["cat", "dog"], {"train": 8, "test": 2})  # 20 % of each class held out


def _photos(zf: zipfile.ZipFile, names: list[str]) -> None:
    for i, name in enumerate(names):
        buf = io.BytesIO()
        Image.new("RGB", (20, 14), (30 * i, 90, 200 - 30 * i)).save(buf, "JPEG", quality=90)
        zf.writestr(f"export/images/{name}.jpg", buf.getvalue())


def spreadsheet_csv_zip(tmp_path: Path) -> Sample:
    """A spreadsheet's CSV (file names and a labels column, Windows line ends) beside an images folder."""
    path = tmp_path / "labelled.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("export/labels.csv", "filename,labels\r\nbeach.jpg,sea;sand\r\nstreet.jpg,car\r\n")
        _photos(zf, ["beach", "street"])
    return Sample(path, ["car", "sand", "sea"], labels={"beach.jpg": ["sea", "sand"], "street.jpg": ["car"]})


def coco_zip(tmp_path: Path) -> Sample:
    """COCO JSON as annotation tools export it: boxes, areas, iscrowd, supercategories, info and licenses."""
    coco = {"info": {"description": "exported", "version": "1.0", "year": 2024}, "licenses": [{"id": 1, "name": "x"}],
            "images": [{"id": 1, "file_name": "beach.jpg", "width": 20, "height": 14, "license": 1},
                       {"id": 2, "file_name": "street.jpg", "width": 20, "height": 14, "license": 1}],
            "categories": [{"id": 1, "name": "sea", "supercategory": "scene"},
                           {"id": 2, "name": "car", "supercategory": "vehicle"}],
            "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 7], "area": 140,
                             "iscrowd": 0, "segmentation": []},
                            {"id": 11, "image_id": 2, "category_id": 2, "bbox": [2, 2, 8, 5], "area": 40,
                             "iscrowd": 0, "segmentation": []}]}
    path = tmp_path / "coco.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("export/instances_default.json", json.dumps(coco, indent=2))
        _photos(zf, ["beach", "street"])
    return Sample(path, ["car", "sea"], labels={"beach.jpg": ["sea"], "street.jpg": ["car"]})


SAMPLES = {"hdf5": hdf5_by_hand, "class_folders": finder_zip, "csv": spreadsheet_csv_zip, "coco": coco_zip}
FORMATS = [f.name for f in formats.list_formats()]


def arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as h5:
        return {key: h5[key][:] for key in ("X_train", "y_train", "X_test", "y_test")}


def imported(fmt: formats.DatasetFormat, source: Path, target: Path) -> formats.Imported:
    return fmt.write_hdf5(source, target, formats.ImportOptions(test_fraction=0.2, seed=0), formats.ImportBudget())


def test_every_format_has_a_sample_written_by_another_tool():
    assert sorted(SAMPLES) == sorted(FORMATS)


@pytest.mark.parametrize("name", FORMATS)
def test_a_file_another_tool_wrote_is_recognised_and_imported(tmp_path, name):
    fmt = formats.get_format(name)
    sample = SAMPLES[name](tmp_path)
    assert formats.sniff(sample.path) == fmt.container  # what the request reads: the first bytes
    assert formats.recognise(sample.path, fmt.container.name) is fmt  # what the job reads
    assert any(sample.path.name.endswith(suffix) for suffix in fmt.suffixes)  # the uploader offers it
    if fmt.makes == "annotations":
        got = fmt.read_labelled(sample.path, archives.ZipLimits())
        assert {Path(member).name: labels for member, labels in got.items} == sample.labels
        assert got.labels == sample.class_names and got.missing == []
        return
    info = imported(fmt, sample.path, tmp_path / "canonical.h5")
    assert info.class_names == sample.class_names
    assert {split: sum(per_class.values()) for split, per_class in info.counts.items()} == sample.totals
    stored = arrays(tmp_path / "canonical.h5")
    assert stored["X_train"].dtype == np.uint8 and stored["X_train"].shape[1:3] == tuple(info.shape)
    with h5py.File(tmp_path / "canonical.h5", "r") as h5:  # the file names its classes, as every dataset does
        assert json.loads(h5.attrs["class_names"]) == sample.class_names


def test_an_hdf5_file_written_by_hand_keeps_its_pixels_and_labels(tmp_path):
    sample = hdf5_by_hand(tmp_path)
    imported(formats.get_format("hdf5"), sample.path, tmp_path / "canonical.h5")
    original, stored = arrays(sample.path), arrays(tmp_path / "canonical.h5")
    for key in original:
        assert np.array_equal(original[key], stored[key]), key


EXPORTERS = [f.name for f in formats.list_formats() if f.export_as]


@pytest.mark.parametrize("name", EXPORTERS)
def test_an_export_comes_back_with_the_same_pixels_labels_and_split(tmp_path, name):
    """Any file that makes a dataset, imported, then exported in ``name``, then imported again: the same dataset."""
    fmt = formats.get_format(name)
    sample = SAMPLES[name](tmp_path)
    first = tmp_path / "first.h5"
    info = imported(fmt, sample.path, first)
    exported = first if fmt.canonical else tmp_path / f"exported{fmt.suffixes[0]}"
    if not fmt.canonical:
        fmt.write_export(first, exported, info.class_names, "again")
    assert formats.recognise(exported) is fmt
    again = imported(fmt, exported, tmp_path / "again.h5")
    assert again.class_names == info.class_names and again.counts == info.counts
    one, two = arrays(first), arrays(tmp_path / "again.h5")
    for key in one:
        assert np.array_equal(one[key], two[key]), key


def test_the_exports_are_the_registrys_words_and_an_unknown_one_is_named(tmp_path):
    assert list(formats.export_formats()) == ["hdf5", "zip"]  # the API's ?format= words, canonical first
    with pytest.raises(InvalidInput, match="one of hdf5, zip") as refused:
        formats.get_export("tar")
    assert refused.value.field == "format"


@pytest.mark.parametrize("content", [b"notes.txt renamed to notes.zip", b"", b"\x89PNG\r\n\x1a\n" + bytes(64)],
                         ids=["text", "empty", "png"])
def test_an_unknown_file_is_refused_naming_every_known_format(tmp_path, content):
    path = tmp_path / "upload.zip"
    path.write_bytes(content)
    with pytest.raises(InvalidInput) as refused:
        formats.sniff(path)
    message = str(refused.value)
    assert refused.value.field == "file" and "neither a zip nor an HDF5 file" in message
    assert all(f"{fmt.name} (" in message for fmt in formats.list_formats()), message


def test_the_request_reads_only_the_head_and_the_end_record(tmp_path):
    """A zip's directory is not read by the request: a directory that lies past its end record still passes
    ``sniff`` and the container's check; the job's recognition (which reads it) refuses it."""
    sample = finder_zip(tmp_path)
    data = bytearray(sample.path.read_bytes())
    start = data.rindex(b"PK\x01\x02", 0, data.rindex(b"PK\x05\x06"))
    data[start:start + 4] = b"XX\x01\x02"  # the last directory record, broken
    sample.path.write_bytes(bytes(data))
    container = formats.sniff(sample.path)
    assert container.check(sample.path, archives.ZipLimits())["entries"] > 0
    with pytest.raises(InvalidInput) as refused:
        formats.recognise(sample.path)
    assert refused.value.field == "file"


def test_the_uploader_offers_every_formats_endings():
    offered = formats.upload_suffixes()
    for fmt in formats.list_formats():
        assert all(suffix.lstrip(".") in offered for suffix in fmt.suffixes), fmt.name
