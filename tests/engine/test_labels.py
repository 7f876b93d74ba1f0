"""Label sets, annotations, atomic storage, the multi-label split and the exports."""

from __future__ import annotations

import io
import itertools
import json
import os
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from engine import labels as lb
from engine.exceptions import InvalidInput, StudioError

LEGACY_LABELS = [
    "sea", "ground-other", "platform", "building-other", "branch", "grass", "hill", "fog", "snow", "leaves",
    "river", "road", "bush", "tree", "bridge", "flower", "railroad", "pavement", "mountain", "playingfield",
    "house", "boat", "fire hydrant", "person", "motorcycle", "stop sign", "bicycle", "bench",
    "traffic light", "bus", "parking meter", "train", "truck", "car",
]  # fmt: skip
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def png_bytes(size: tuple[int, int] = (4, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def all_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_default_labels_are_the_legacy_34_in_order(tmp_path):
    assert list(lb.DEFAULT_LABELS) == LEGACY_LABELS
    assert len(lb.DEFAULT_LABELS) == 34
    assert lb.read_label_set(tmp_path) == LEGACY_LABELS


# ---------------------------------------------------------------------------------------------- ids


@pytest.mark.parametrize("value", ["1", "a_1", "IMG-2019.08.03", "x" * 128, "a..b"])
def test_id_name_accepted(value):
    assert lb.validate_id_name(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "../x",
        "..",
        ".",
        "a/b",
        "a\\b",
        "/etc/passwd",
        "x\x00y",
        "x" * 129,
        ".hidden",
        "",
        "a b",
        "é",
        5,
        None,
    ],
)
def test_id_name_refused(value):
    with pytest.raises(InvalidInput) as err:
        lb.validate_id_name(value, field="id")
    assert err.value.field == "id"


def test_image_and_annotation_paths(tmp_path):
    assert lb.image_path(tmp_path, "a_1", ".JPG") == tmp_path / "images" / "a_1.jpg"
    assert lb.annotation_path(tmp_path, "a_1") == tmp_path / "labels" / "a_1.json"
    with pytest.raises(InvalidInput):
        lb.annotation_path(tmp_path, "../../etc/passwd")
    with pytest.raises(InvalidInput):
        lb.image_path(tmp_path, "1", "exe")
    assert lb.extension_for_format("JPEG") == "jpg"
    with pytest.raises(InvalidInput, match="PDF"):
        lb.extension_for_format("PDF")


# ---------------------------------------------------------------------------------------- labels


def test_validate_labels_names_the_unknown_label():
    with pytest.raises(InvalidInput, match="'unicorn'") as err:
        lb.validate_labels(["tree", "unicorn"], LEGACY_LABELS, field="tags")
    assert err.value.field == "tags"
    assert "'tree'" not in str(err.value).split(";")[0]


def test_validate_labels_orders_and_deduplicates():
    assert lb.validate_labels(["car", "sea", "car", "fire hydrant"], LEGACY_LABELS) == [
        "sea",
        "fire hydrant",
        "car",
    ]
    assert lb.validate_labels([], LEGACY_LABELS) == []


@pytest.mark.parametrize("value", ["tree", None, ["tree", 3]])
def test_validate_labels_refuses_non_lists(value):
    with pytest.raises(InvalidInput):
        lb.validate_labels(value, LEGACY_LABELS)


def test_label_set_round_trip(tmp_path):
    assert lb.write_label_set(tmp_path, [" cat ", "dog", "fire hydrant"]) == ["cat", "dog", "fire hydrant"]
    assert lb.read_label_set(tmp_path) == ["cat", "dog", "fire hydrant"]
    assert json.loads((tmp_path / "labelset.json").read_text()) == {"labels": ["cat", "dog", "fire hydrant"]}


@pytest.mark.parametrize(
    ("labels", "message"),
    [([], "non-empty"), (["a", "b", "a"], "duplicate labels: 'a'"), (["a/b"], "without '/'"),
     (["x" * 65], "1..64"), (["tab\there"], "printable"), ("sea", "non-empty list")],
)  # fmt: skip
def test_label_set_refuses_bad_sets(tmp_path, labels, message):
    with pytest.raises(InvalidInput, match=message) as err:
        lb.write_label_set(tmp_path, labels)
    assert err.value.field == "labels"
    assert not (tmp_path / "labelset.json").exists()


def test_label_set_refuses_dropping_used_labels(tmp_path):
    lb.write_annotation(tmp_path, "1", ["tree", "car"], LEGACY_LABELS)
    lb.write_annotation(tmp_path, "2", ["bus"], LEGACY_LABELS)
    assert lb.labels_in_use(tmp_path) == {"tree", "car", "bus"}
    with pytest.raises(InvalidInput, match="still used by images: 'bus', 'car'") as err:
        lb.write_label_set(tmp_path, ["tree", "sea"])
    assert err.value.field == "labels"
    assert lb.read_label_set(tmp_path) == LEGACY_LABELS  # unchanged
    assert lb.write_label_set(tmp_path, ["tree", "car", "bus", "kite"]) == ["tree", "car", "bus", "kite"]
    with pytest.raises(InvalidInput, match="'kite'"):
        lb.write_label_set(tmp_path, ["tree"], in_use={"kite", "tree"})


def test_corrupt_label_set_is_an_error_not_a_silent_default(tmp_path):
    (tmp_path / "labelset.json").write_text("{not json")
    with pytest.raises(StudioError, match="labelset.json"):
        lb.read_label_set(tmp_path)


# ----------------------------------------------------------------------------------- annotations


def test_annotation_file_format(tmp_path):
    record = lb.write_annotation(tmp_path, "a_1", ["car", "tree"], LEGACY_LABELS, labelled_by="ann", now=NOW)
    expected = {
        "id_name": "a_1",
        "labels": ["tree", "car"],
        "labelled_by": "ann",
        "labelled_at": "2024-05-01T12:00:00+00:00",
    }
    assert record == expected
    assert json.loads((tmp_path / "labels" / "a_1.json").read_text()) == expected
    assert lb.read_annotation(tmp_path, "a_1") == expected
    assert lb.read_annotation(tmp_path, "2") is None


def test_annotation_with_unknown_label_writes_nothing(tmp_path):
    with pytest.raises(InvalidInput, match="'unicorn'"):
        lb.write_annotation(tmp_path, "1", ["unicorn"], LEGACY_LABELS)
    assert all_files(tmp_path) == []


def test_corrupt_annotation_is_reported(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "1.json").write_text('{"labels": "tree"}')
    with pytest.raises(StudioError, match="1.json"):
        lb.read_annotation(tmp_path, "1")


# --------------------------------------------------------------------------------------- storage


def test_writes_leave_no_temporary_files(tmp_path):
    lb.save_image_atomic(tmp_path, "1", png_bytes(), "png")
    lb.write_annotation(tmp_path, "1", ["sea"], LEGACY_LABELS)
    lb.write_label_set(tmp_path, LEGACY_LABELS)
    assert all_files(tmp_path) == ["images/1.png", "labels/1.json", "labelset.json"]


def test_failed_replace_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    lb.write_annotation(tmp_path, "1", ["sea"], LEGACY_LABELS, now=NOW)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        lb.write_annotation(tmp_path, "1", ["car"], LEGACY_LABELS)
    assert lb.read_annotation(tmp_path, "1")["labels"] == ["sea"]
    assert all_files(tmp_path) == ["labels/1.json"]


def test_save_image_refuses_overwrite_unless_asked(tmp_path):
    first, second = png_bytes((4, 3)), png_bytes((5, 5))
    path = lb.save_image_atomic(tmp_path, "1", first, "png")
    assert path == tmp_path / "images" / "1.png"
    assert path.read_bytes() == first
    with pytest.raises(FileExistsError):
        lb.save_image_atomic(tmp_path, "1", second, "png")
    with pytest.raises(FileExistsError):
        lb.save_image_atomic(tmp_path, "1", second, "jpg")  # same id, other extension
    assert path.read_bytes() == first
    assert lb.save_image_atomic(tmp_path, "1", second, "png", overwrite=True).read_bytes() == second
    new_path = lb.save_image_atomic(tmp_path, "1", b"jpeg bytes", "jpg", overwrite=True)
    assert all_files(tmp_path) == ["images/1.jpg"]
    assert lb.find_image(tmp_path, "1") == new_path


def test_save_image_validates_before_writing(tmp_path):
    with pytest.raises(InvalidInput):
        lb.save_image_atomic(tmp_path, "../evil", b"x", "png")
    assert all_files(tmp_path) == []


def test_find_image_matches_exact_ids_only(tmp_path):
    lb.save_image_atomic(tmp_path, "a.b", png_bytes(), "png")
    assert lb.find_image(tmp_path, "a") is None
    assert lb.find_image(tmp_path, "a.b") == tmp_path / "images" / "a.b.png"


def test_labelled_images_sorted_and_only_complete_pairs(tmp_path):
    for id_name in ("b", "a", "c"):
        lb.save_image_atomic(tmp_path, id_name, png_bytes(), "png")
    lb.write_annotation(tmp_path, "b", ["car"], LEGACY_LABELS)
    lb.write_annotation(tmp_path, "a", ["sea", "tree"], LEGACY_LABELS)
    lb.write_annotation(tmp_path, "orphan", ["bus"], LEGACY_LABELS)  # label file, no image
    assert lb.labelled_images(tmp_path) == [
        (tmp_path / "images" / "a.png", ["sea", "tree"]),
        (tmp_path / "images" / "b.png", ["car"]),
    ]
    assert lb.labelled_ids(tmp_path) == ["a", "b", "orphan"]


# ------------------------------------------------------------------------------------------ split

SPLIT_LABELS = ["common", "often", "sometimes", "rare", "pair", "single"]


def synthetic_items(n: int = 50, seed: int = 1) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        labels = [
            lab for lab, p in (("common", 0.7), ("often", 0.4), ("sometimes", 0.15)) if rng.random() < p
        ]
        items.append((f"img{i:02d}", labels))
    items[3][1].append("rare")
    items[17][1].append("rare")
    items[30][1].append("rare")
    items[8][1].append("pair")
    items[41][1].append("pair")
    items[12][1].append("single")
    return items


def labels_of(items):
    return {lab for _, labels in items for lab in labels}


def test_split_is_reproducible_and_complete():
    items = synthetic_items()
    train, val = lb.split_multilabel(items, SPLIT_LABELS, val_fraction=0.2, seed=7)
    assert (train, val) == lb.split_multilabel(items, SPLIT_LABELS, val_fraction=0.2, seed=7)
    assert sorted(train + val) == sorted(items)
    assert len(val) == 10
    assert train == [item for item in items if item in train]  # input order kept
    splits = {
        tuple(name for name, _ in lb.split_multilabel(items, SPLIT_LABELS, 0.2, seed=s)[1]) for s in range(5)
    }
    assert len(splits) > 1  # the seed matters


@pytest.mark.parametrize("seed", range(6))
def test_split_keeps_every_label_with_two_images_on_both_sides(seed):
    items = synthetic_items(seed=seed)
    train, val = lb.split_multilabel(items, SPLIT_LABELS, val_fraction=0.2, seed=seed)
    coverable = {"common", "often", "sometimes", "rare", "pair"}
    assert coverable <= labels_of(train)
    assert coverable <= labels_of(val)


def test_split_coverage_beats_the_fraction_for_rare_labels():
    items = [(f"{lab}{k}", [lab]) for lab in SPLIT_LABELS[:5] for k in range(2)]  # 5 labels x 2 images
    train, val = lb.split_multilabel(items, SPLIT_LABELS, val_fraction=0.2, seed=0)
    assert labels_of(train) == labels_of(val) == set(SPLIT_LABELS[:5])
    assert len(val) == 5


def test_split_covers_a_label_whose_items_were_all_placed_for_rarer_labels():
    # 'a', 'c', 'd' (2 images each) are visited before 'x' (3 images, each shared with one of them).
    items = [
        ("1", ["a", "x"]),
        ("2", ["a"]),
        ("4", ["c", "x"]),
        ("5", ["c"]),
        ("7", ["d", "x"]),
        ("8", ["d"]),
    ]
    for seed in range(10):
        train, val = lb.split_multilabel(items, ["a", "c", "d", "x"], val_fraction=0.3, seed=seed)
        assert labels_of(train) == labels_of(val) == {"a", "c", "d", "x"}


def full_cover_exists(items: list[tuple[str, list[str]]]) -> bool:
    """Brute force: can every label with >= 2 items be put on both sides, whatever the sizes?"""
    coverable = [lab for lab in labels_of(items) if sum(lab in labels for _, labels in items) > 1]
    for sides in itertools.product((0, 1), repeat=len(items)):
        if all(
            {side for side, (_, labels) in zip(sides, items, strict=True) if lab in labels} == {0, 1}
            for lab in coverable
        ):
            return True
    return False


def test_split_finds_a_full_cover_whenever_one_exists():
    checked = 0
    for trial in range(150):
        rng = random.Random(trial)
        names = ["l0", "l1", "l2", "l3", "l4"]
        density = rng.choice([0.2, 0.4, 0.6])
        items = [(str(i), [lab for lab in names if rng.random() < density]) for i in range(rng.randint(3, 9))]
        if not full_cover_exists(items):
            continue
        train, val = lb.split_multilabel(items, names, val_fraction=0.25, seed=trial)
        coverable = {lab for lab in names if sum(lab in labels for _, labels in items) > 1}
        assert coverable <= labels_of(train) and coverable <= labels_of(val), items
        checked += 1
    assert checked > 100


def test_split_impossible_cover_still_places_everything():
    items = [("1", ["a", "b"]), ("2", ["a", "c"]), ("3", ["b", "c"])]  # an odd cycle: no 2-colouring
    train, val = lb.split_multilabel(items, ["a", "b", "c"], val_fraction=0.34, seed=0)
    assert sorted(train + val) == sorted(items)
    assert train and val


@pytest.mark.parametrize(("n", "fraction", "n_val"), [(1, 0.5, 0), (10, 0.0, 0), (2, 0.01, 1), (10, 0.99, 9)])
def test_split_sizes_at_the_edges(n, fraction, n_val):
    items = [(str(i), []) for i in range(n)]
    train, val = lb.split_multilabel(items, SPLIT_LABELS, val_fraction=fraction)
    assert (len(train), len(val)) == (n - n_val, n_val)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2])
def test_split_refuses_bad_fraction(fraction):
    with pytest.raises(InvalidInput) as err:
        lb.split_multilabel([], SPLIT_LABELS, val_fraction=fraction)
    assert err.value.field == "val_fraction"


# ---------------------------------------------------------------------------------------- exports

EXPORT_LABELS = ["sea", "fire hydrant", "car"]


def test_export_csv_exact():
    items = [(Path("/x/1.jpg"), ["car"]), (Path("/x/a_1.png"), ["fire hydrant", "sea"]), ("b", [])]
    assert lb.export_csv(items, EXPORT_LABELS) == "Id,sea,fire hydrant,car\n1,0,0,1\na_1,1,1,0\nb,0,0,0\n"
    with pytest.raises(InvalidInput, match="'bus'"):
        lb.export_csv([("1", ["bus"])], EXPORT_LABELS)


def test_export_coco_exact(tmp_path):
    lb.save_image_atomic(tmp_path, "1", png_bytes((4, 3)), "png")
    lb.save_image_atomic(tmp_path, "a_1", png_bytes((5, 7)), "png")
    lb.write_annotation(tmp_path, "1", ["car", "sea"], EXPORT_LABELS)
    lb.write_annotation(tmp_path, "a_1", ["fire hydrant"], EXPORT_LABELS)
    coco = lb.export_coco(lb.labelled_images(tmp_path), EXPORT_LABELS)
    assert coco == {
        "info": {"description": "image-level multi-label annotations (no boxes)"},
        "images": [
            {"id": 1, "file_name": "1.png", "id_name": "1", "width": 4, "height": 3},
            {"id": 2, "file_name": "a_1.png", "id_name": "a_1", "width": 5, "height": 7},
        ],
        "categories": [{"id": 1, "name": "sea"}, {"id": 2, "name": "fire hydrant"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1},
            {"id": 2, "image_id": 1, "category_id": 3},
            {"id": 3, "image_id": 2, "category_id": 2},
        ],
    }
    assert json.loads(json.dumps(coco)) == coco
