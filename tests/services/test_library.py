"""Curating the object library: one save per cut, moving an object keeps row and file together."""

from __future__ import annotations

import pytest

from engine.exceptions import InvalidInput
from services.app import library, segment
from services.platform.config import Config
from services.storage.store import open_store
from tests.shapes import noise_png as png


@pytest.fixture
def ctx(tmp_path):
    config = Config(data_dir=tmp_path)
    config.ensure_dirs()
    return config, open_store(tmp_path)


def save(ctx, class_name: str, data: bytes, source: str = "photo.jpg"):
    return segment.save_once(*ctx, class_name, data, source=source, bbox=[0, 0, 12, 12], created_by="op",
                             size=(12, 12))


def test_the_same_cut_saved_twice_is_kept_once(ctx):
    first, created = save(ctx, "cup", png(1))
    again, created_again = save(ctx, "cup", png(1))
    assert created and not created_again and again["id"] == first["id"]
    assert save(ctx, "cup", png(2))[1]  # another cut of the same photo is a new object
    assert save(ctx, "cup", png(1), source="other.jpg")[1]
    assert segment.class_counts(ctx[1]) == {"cup": 3}


def test_moving_an_object_moves_its_file_and_row(ctx):
    config, store = ctx
    row, _ = save(ctx, "cup", png(3))
    old = segment.object_file(config, row)
    moved = library.move_object(config, store, row["id"], "mug")
    assert moved["class_name"] == "mug" and segment.object_file(config, moved).read_bytes() == png(3)
    assert not old.exists() and segment.class_counts(store) == {"mug": 1}
    with pytest.raises(InvalidInput, match="class_name"):
        library.move_object(config, store, row["id"], "../escape")
