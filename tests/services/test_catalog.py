"""The catalog: typed rows, listings filtered and paged by SQLite, in-place upgrades, and labels whose one
truth is the catalog (the ``newdata/labels`` files are an export of it)."""

from __future__ import annotations

import io
import json
import sqlite3

import pytest
from PIL import Image as PILImage

from engine.exceptions import InvalidInput
from services.app import annotation
from services.platform.config import Config
from services.storage.rows import Dataset, Image, Job
from services.storage.store import MIGRATIONS, ImageQuery, open_store


def png(shade: int) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (8, 6), (shade, 40, 90)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def ctx(tmp_path):
    config = Config(data_dir=tmp_path)
    config.ensure_dirs()
    return config, open_store(tmp_path)


def images(store, n: int, labelled_every: int = 0) -> None:
    for i in range(n):
        labels = ["sea"] if labelled_every and i % labelled_every == 0 else None
        store.put_image(Image(id_name=f"img{i:03d}", path=f"newdata/images/img{i:03d}.png", uploaded_at=1000.0 + i,
                              uploaded_by="ann" if i % 2 else "op", labels=labels))


# --- rows and queries -------------------------------------------------------------------------------
def test_a_row_with_a_field_its_table_lacks_is_refused(ctx):
    _, store = ctx
    with pytest.raises(TypeError):
        Dataset(id="d", path="datasets/d.hdf5", created_at=1.0, colour="red")
    store.create_job("j1", "train", {"lr": 0.1}, "op")
    with pytest.raises(TypeError, match="jobs has no column"):
        store.update_job("j1", statu="finished")
    assert store.get_job("j1").status == "queued"


def test_rows_read_as_dataclasses_and_as_mappings(ctx):
    _, store = ctx
    store.create_job("j1", "train", {"lr": 0.1}, "op")
    job = store.get_job("j1")
    assert isinstance(job, Job) and job.params == {"lr": 0.1} and job["params"] == {"lr": 0.1}
    assert job.history == [] and {**job}["created_by"] == "op" and job.get("nothing") is None


def test_image_listings_filter_order_and_page_in_sql(ctx):
    _, store = ctx
    images(store, 30, labelled_every=3)
    newest = store.list_images(ImageQuery(limit=5))
    assert [r.id_name for r in newest] == ["img029", "img028", "img027", "img026", "img025"]
    page2 = store.list_images(ImageQuery(limit=5, offset=5))
    assert page2[0].id_name == "img024"
    queue = store.list_images(ImageQuery(labelled=False, order="oldest", limit=3))
    assert [r.id_name for r in queue] == ["img001", "img002", "img004"]
    sea = store.list_images(ImageQuery(label="sea", uploaded_by="op", limit=None))
    assert [r.id_name for r in sea] == ["img024", "img018", "img012", "img006", "img000"]
    assert store.count_images(ImageQuery(labelled=False)) == 20
    assert store.count_images(ImageQuery(label="tree")) == 0


def test_the_unlabelled_queue_and_the_jobs_list_use_indexes(ctx):
    _, store = ctx
    with store.connect(write=False) as conn:
        queue = conn.execute("EXPLAIN QUERY PLAN SELECT * FROM images WHERE labels IS NULL "
                             "ORDER BY uploaded_at ASC, id_name LIMIT 10").fetchall()
        mine = conn.execute("EXPLAIN QUERY PLAN SELECT * FROM jobs WHERE created_by = ? "
                            "ORDER BY created_at DESC, id LIMIT 10", ("op",)).fetchall()
    assert "images_unlabelled" in " ".join(r[-1] for r in queue)
    assert "jobs_owner" in " ".join(r[-1] for r in mine)


def test_jobs_are_listed_newest_first_by_kind_and_owner(ctx):
    _, store = ctx
    for i, (kind, owner) in enumerate([("train", "a"), ("generate", "b"), ("train", "b"), ("tune", "a")]):
        store.create_job(f"j{i}", kind, {}, owner)
        store.update_job(f"j{i}", created_at=100.0 + i)
    assert store.job_kinds() == ["generate", "train", "tune"] and store.job_kinds(created_by="a") == ["train", "tune"]
    assert [j.id for j in store.list_jobs(kind="train")] == ["j2", "j0"]
    assert [j.id for j in store.list_jobs(created_by="b", limit=1, offset=1)] == ["j1"]
    assert store.count_jobs(kind="train") == 2


# --- upgrading a catalog in place -----------------------------------------------------------------
def test_a_catalog_of_the_previous_schema_upgrades_in_place(tmp_path):
    path = tmp_path / "catalog.sqlite3"
    conn = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:4], start=1):  # the schema before the listing indexes
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute("INSERT INTO images (id_name, path, uploaded_at, labels, predict_tags) VALUES (?, ?, ?, ?, ?)",
                 ("old", "newdata/images/old.jpg", 5.0, json.dumps(["tree"]), json.dumps(["car"])))
    conn.execute("INSERT INTO jobs (id, kind, params, created_by, status, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                 ("j", "train", json.dumps({"epochs": 2}), "op", "finished", 7.0))
    conn.commit()
    conn.close()

    store = open_store(tmp_path)
    with store.connect(write=False) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"images_unlabelled", "jobs_owner", "jobs_created"} <= indexes
    old = store.get_image("old")
    assert old.labels == ["tree"] and old.predict_tags == ["car"]
    assert store.list_images(ImageQuery(label="tree"))[0].id_name == "old"
    assert store.list_jobs(created_by="op")[0].params == {"epochs": 2}


# --- labels: the catalog is the truth, the files an export ------------------------------------------
def upload(ctx, id_name: str, shade: int = 10, **kwargs):
    config, store = ctx
    return annotation.store_upload(config, store, id_name, png(shade), "ann", **kwargs)


def test_labels_go_to_the_catalog_and_are_exported_to_a_file(ctx):
    config, store = ctx
    upload(ctx, "a")
    view = annotation.set_labels(config, store, "a", ["car", "sea"], "ann")
    assert view["labels"] == ["sea", "car"] and store.get_image("a").labels == ["sea", "car"]
    exported = json.loads((config.path("newdata", "labels", "a.json")).read_text())
    assert exported["labels"] == ["sea", "car"] and exported["labelled_by"] == "ann"


def test_a_label_file_is_never_read_back_as_truth(ctx):
    config, store = ctx
    upload(ctx, "a")
    upload(ctx, "b", shade=20)
    annotation.set_labels(config, store, "a", ["tree"], "ann")
    # Someone edits the export by hand and adds one for an unlabelled image: nothing the platform says changes.
    config.path("newdata", "labels", "a.json").write_text(json.dumps({"id_name": "a", "labels": ["bus"]}))
    config.path("newdata", "labels", "b.json").write_text(json.dumps({"id_name": "b", "labels": ["car"]}))
    assert annotation.imginfo(store, "a")["labels"] == ["tree"]
    assert [r.id_name for r in annotation.list_images(config, store, unlabelled=True)] == ["b"]
    assert annotation.label_set_view(config, store)["in_use"] == ["tree"]
    assert annotation.export_csv(config, store).splitlines()[1].startswith("a,")
    assert [i["id_name"] for i in annotation.export_coco(config, store)["images"]] == ["a"]


def test_a_label_in_use_in_the_catalog_cannot_be_dropped(ctx):
    config, store = ctx
    upload(ctx, "a")
    annotation.set_labels(config, store, "a", ["tree"], "ann")
    config.path("newdata", "labels", "a.json").unlink()  # the export is gone; the truth is not
    with pytest.raises(InvalidInput, match="'tree'"):
        annotation.set_label_set(config, store, ["sea", "car"])
    assert annotation.set_label_set(config, store, ["tree", "car"])["in_use"] == ["tree"]
    with pytest.raises(InvalidInput, match="'sea'"):
        annotation.set_labels(config, store, "a", ["sea"], "ann")
    assert store.get_image("a").labels == ["tree"]


def test_overwriting_an_image_clears_its_labels_and_their_export(ctx):
    config, store = ctx
    upload(ctx, "a")
    annotation.set_labels(config, store, "a", ["tree"], "ann")
    upload(ctx, "a", shade=99, overwrite=True)
    assert store.get_image("a").labels is None
    assert not config.path("newdata", "labels", "a.json").exists()
    assert annotation.count_images(store, unlabelled=True) == 1


def test_the_label_filter_matches_whole_labels_only(ctx):
    _, store = ctx
    for id_name, labels in (("a", ["sea lion"]), ("b", ['say "sea"']), ("c", ["tree", "sea"]), ("d", ["séa"])):
        store.put_image(Image(id_name=id_name, path=f"newdata/images/{id_name}.png", uploaded_at=1.0, labels=labels))
    assert [r.id_name for r in store.list_images(ImageQuery(label="sea", order="id"))] == ["c"]
    assert [r.id_name for r in store.list_images(ImageQuery(label="séa", order="id"))] == ["d"]
    assert [r.id_name for r in store.list_images(ImageQuery(label='say "sea"', order="id"))] == ["b"]
