"""The annotation platform against the running API, plus the Annotate page under AppTest.

Every image is made here, with EXIF the test writes itself, so the expected values are known exactly.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from fractions import Fraction

import pytest
from PIL import Image

from engine.labels import DEFAULT_LABELS
from services.app import annotation
from services.platform.config import Config
from services.storage.store import open_store
from tests.exif_images import GPS, LEGACY_GPS, dms, legacy_gps, make_exif, rational
from tests.harness import app_page


# --- images with known EXIF -----------------------------------------------------------------------
def jpeg(gps: dict | None = None, size=(16, 12), fmt="JPEG", **dates: str) -> bytes:
    """An image whose EXIF holds ``gps`` and dates (DateTime in IFD0, the others in the Exif IFD)."""
    exif = make_exif(gps, **dates)
    buf = io.BytesIO()
    extra = {"exif": exif.tobytes()} if gps or dates else {}
    Image.new("RGB", size, (30, 120, 200)).save(buf, fmt, **extra)
    return buf.getvalue()


def new_id() -> str:
    return "t_" + uuid.uuid4().hex[:10]


def upload(studio, id_name: str, data: bytes, role: str = "annotator", filename: str = "photo.jpg", **form):
    return studio.http.post("/imgup", files={"file": (filename, data)}, data={"id_name": id_name, **form},
                         headers=studio.headers(role), timeout=30)


def info(studio, id_name: str, role: str = "annotator") :
    return studio.http.get("/imginfo", params={"id_name": id_name}, headers=studio.headers(role), timeout=10)


def put_labels(studio, id_name: str, labels, role: str = "annotator") :
    return studio.http.put(f"/api/v1/annotations/{id_name}", json={"labels": labels},
                        headers=studio.headers(role), timeout=10)


def images_dir(studio):
    return studio.data_dir / "newdata" / "images"


# --- the legacy API's client, unchanged -----------------------------------------------------------------
def test_legacy_client_uploads_and_reads_imginfo(door, tmp_path):
    path = tmp_path / "IMG_0001.jpg"
    path.write_bytes(jpeg(legacy_gps(), DateTimeOriginal="2019:08:03 14:41:10", DateTime="2020:01:01 00:00:00"))
    headers = {"Authorization": f"JWT {door.token('annotator')}"}
    with open(path, "rb") as f:
        r = door.http.post("/imgup", files={"file": f}, data={"id_name": "1"}, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"image_id": "1", "predict_tags": [], "status_code": "200"}

    r = door.http.get("/imginfo", params={"id_name": "1"}, headers=headers, timeout=10)
    assert r.json() == {"image_id": "1", "predict_tags": [], "data_information": "2019:08:03 14:41:10",
                        "GPS_information": LEGACY_GPS, "labels": None, "latitude": 28.835149765,
                        "longitude": 106.93543243388889, "status_code": "200"}
    assert door.http.get("/imginfo/1", headers=headers, timeout=10).json() == r.json()
    # The bytes are kept exactly as uploaded (EXIF included), under the detected format's extension.
    assert (images_dir(door) / "1.jpg").read_bytes() == path.read_bytes()


def test_south_west_below_sea_level_round_trip(studio):
    gps = {GPS.GPSLatitudeRef: "S", GPS.GPSLatitude: dms(33, "51.5", "0"), GPS.GPSLongitudeRef: "W",
           GPS.GPSLongitude: dms(70, 39, "12.25"), GPS.GPSAltitudeRef: 1, GPS.GPSAltitude: rational("12.5")}
    id_name = new_id()
    assert upload(studio, id_name, jpeg(gps, DateTimeDigitized="2021:02:03 04:05:06")).status_code == 200
    body = info(studio, id_name).json()
    lat = float(Fraction(33) + Fraction("51.5") / 60)
    lon = float(Fraction(70) + Fraction(39, 60) + Fraction("12.25") / 3600)
    assert (body["latitude"], body["longitude"]) == (-lat, -lon)
    assert body["data_information"] == "2021:02:03 04:05:06"  # DateTimeOriginal absent: the digitised date
    assert body["GPS_information"] == {"GPSAltitude": "12.5", "GPSAltitudeRef": "1", "GPSLatitude": lat,
                                       "GPSLatitudeRef": "S", "GPSLongitude": lon, "GPSLongitudeRef": "W"}
    record = studio.http.get(f"/api/v1/annotations/{id_name}", headers=studio.headers("operator"),
                          timeout=10).json()
    assert record["altitude"] == -12.5 and record["width"] == 16 and record["uploaded_by"] == "annotator"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_image_without_exif_gives_nulls(studio, fmt):
    id_name = new_id()
    r = upload(studio, id_name, jpeg(fmt=fmt), filename="plain.bin")
    assert r.status_code == 200, r.text
    body = info(studio, id_name, role="operator").json()
    assert [body[k] for k in ("data_information", "GPS_information", "latitude", "longitude")] == [None] * 4
    assert (images_dir(studio) / f"{id_name}.{'jpg' if fmt == 'JPEG' else 'png'}").is_file()


def test_unknown_image_is_404(studio):
    for r in (info(studio, "never_uploaded"),
              studio.http.get("/imginfo/never_uploaded", headers=studio.headers("annotator"), timeout=10)):
        assert r.status_code == 404 and r.json()["field"] == "id_name" and "never_uploaded" in r.json()["message"]


# --- refusals -------------------------------------------------------------------------------------
def test_missing_file_empty_file_and_text_named_jpg_are_400(studio):
    headers = studio.headers("annotator")
    r = studio.http.post("/imgup", data={"id_name": new_id()}, headers=headers, timeout=10)
    assert r.status_code == 400 and r.json()["field"] == "file" and "'file'" in r.json()["message"]
    r = upload(studio, new_id(), b"")
    assert r.status_code == 400 and r.json()["field"] == "file" and "empty" in r.json()["message"]
    id_name = new_id()
    r = upload(studio, id_name, b"this is a text file, whatever its name says\n", filename="notes.jpg")
    assert r.status_code == 400 and r.json()["field"] == "file" and "not a readable image" in r.json()["message"]
    assert not list(images_dir(studio).glob(f"{id_name}.*"))
    r = studio.http.post("/imgup", files={"file": ("a.jpg", jpeg())}, headers=headers, timeout=10)
    assert r.status_code == 400 and r.json()["field"] == "id_name"


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a\x00b", "a" * 200, "..", ".hidden", "a/b", ""])
def test_path_like_id_names_are_refused_and_nothing_is_written(studio, bad):
    before = sorted(p.name for p in images_dir(studio).iterdir())
    passwd = open("/etc/passwd", "rb").read()
    r = upload(studio, bad, jpeg())
    assert r.status_code == 400 and r.json()["field"] == "id_name", r.text
    assert sorted(p.name for p in images_dir(studio).iterdir()) == before
    assert not list(studio.data_dir.parent.rglob("x.jpg")) and not (studio.data_dir / "newdata" / "x.jpg").exists()
    assert open("/etc/passwd", "rb").read() == passwd


def test_existing_id_is_409_unless_overwrite(studio):
    id_name = new_id()
    assert upload(studio, id_name, jpeg()).status_code == 200
    assert put_labels(studio, id_name, ["tree"]).status_code == 200
    r = upload(studio, id_name, jpeg(size=(20, 10)))
    assert r.status_code == 409 and r.json()["field"] == "id_name" and "overwrite=1" in r.json()["message"]
    # Overwriting with a PNG replaces the JPEG (one file per id) and sends the image back to the queue.
    r = upload(studio, id_name, jpeg(size=(20, 10), fmt="PNG"), overwrite="1")
    assert r.status_code == 200
    assert sorted(p.name for p in images_dir(studio).glob(f"{id_name}.*")) == [f"{id_name}.png"]
    record = studio.http.get(f"/api/v1/annotations/{id_name}", headers=studio.headers("annotator"),
                          timeout=10).json()
    assert (record["width"], record["labels"]) == (20, None)
    assert not (studio.data_dir / "newdata" / "labels" / f"{id_name}.json").exists()


def test_more_pixels_than_the_limit_is_413(studio):
    buf = io.BytesIO()
    Image.new("1", (8000, 7000)).save(buf, "PNG")  # 56 M pixels in a few KB: a decompression bomb
    id_name = new_id()
    r = upload(studio, id_name, buf.getvalue(), filename="bomb.png")
    assert r.status_code == 413 and r.json()["field"] == "file" and "50000000" in r.json()["message"]
    assert not list(images_dir(studio).glob(f"{id_name}.*"))


def test_body_over_the_size_limit_is_413(studio):
    too_big = b"\0" * ((studio.config.max_upload_mb + 1) * 1024 * 1024)
    r = upload(studio, new_id(), too_big)
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert f"{studio.config.max_upload_mb} MB" in r.json()["message"]


def test_roles(studio):
    r = upload(studio, new_id(), jpeg(), role="client")
    assert r.status_code == 403 and "annotator" in r.json()["message"]
    r = studio.http.post("/imgup", files={"file": ("a.jpg", jpeg())}, data={"id_name": new_id()},
                      timeout=10)
    assert r.status_code == 401
    assert upload(studio, new_id(), jpeg(), role="operator").status_code == 403
    assert upload(studio, new_id(), jpeg(), role="admin").status_code == 200
    assert info(studio, "1", role="client").status_code == 403
    assert put_labels(studio, "1", ["tree"], role="operator").status_code == 403
    r = studio.http.put("/api/v1/labels", json={"labels": list(DEFAULT_LABELS)},
                     headers=studio.headers("annotator"), timeout=10)
    assert r.status_code == 403


# --- labelling ------------------------------------------------------------------------------------
def test_label_put_validation_and_storage(studio):
    id_name = new_id()
    assert upload(studio, id_name, jpeg()).status_code == 200
    r = put_labels(studio, id_name, ["tree", "unicorn", "dragon"])
    assert r.status_code == 400 and r.json()["field"] == "labels"
    assert "'unicorn'" in r.json()["message"] and "'dragon'" in r.json()["message"]
    assert put_labels(studio, id_name, "tree").json()["field"] == "labels"
    assert put_labels(studio, "nobody_here", ["tree"]).status_code == 404

    r = put_labels(studio, id_name, ["car", "sea", "car"])
    assert r.status_code == 200 and r.json()["labels"] == ["sea", "car"]  # label-set order, no duplicates
    assert r.json()["labelled_by"] == "annotator"
    stored = json.loads((studio.data_dir / "newdata" / "labels" / f"{id_name}.json").read_text())
    assert stored["labels"] == ["sea", "car"] and stored["labelled_by"] == "annotator"
    assert info(studio, id_name).json()["labels"] == ["sea", "car"]


def test_listing_filters(studio):
    labelled, waiting, by_admin = new_id(), new_id(), new_id()
    for id_name in (labelled, waiting):
        assert upload(studio, id_name, jpeg()).status_code == 200
    assert upload(studio, by_admin, jpeg(), role="admin").status_code == 200
    assert put_labels(studio, labelled, ["bridge"]).status_code == 200
    headers = studio.headers("operator")

    def ids(**params):
        r = studio.http.get("/api/v1/annotations", params=params, headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        return {image["id_name"] for image in r.json()["images"]}

    assert {labelled, waiting, by_admin} <= ids()
    assert waiting in ids(unlabelled="1") and labelled not in ids(unlabelled="true")
    assert labelled in ids(label="bridge") and waiting not in ids(label="bridge")
    assert by_admin in ids(uploaded_by="admin") and waiting not in ids(uploaded_by="admin")
    r = studio.http.get("/api/v1/annotations", params={"label": "zeppelin"}, headers=headers, timeout=10)
    assert r.status_code == 400 and r.json()["field"] == "label" and "'zeppelin'" in r.json()["message"]


def test_label_set_edit_refuses_dropping_a_used_label(studio):
    admin = studio.headers("admin")
    url = "/api/v1/labels"
    original = studio.http.get(url, headers=studio.headers("annotator"), timeout=10).json()["labels"]
    assert original[:3] == ["sea", "ground-other", "platform"] and len(original) == 34
    id_name = new_id()
    assert upload(studio, id_name, jpeg()).status_code == 200
    try:
        r = studio.http.put(url, json={"labels": original + ["kayak"]}, headers=admin, timeout=10)
        assert r.status_code == 200 and r.json()["labels"][-1] == "kayak"
        assert put_labels(studio, id_name, ["kayak"]).status_code == 200
        r = studio.http.put(url, json={"labels": original}, headers=admin, timeout=10)
        assert r.status_code == 400 and r.json()["field"] == "labels" and "'kayak'" in r.json()["message"]
        r = studio.http.put(url, json={"labels": ["a", "a"]}, headers=admin, timeout=10)
        assert r.status_code == 400 and "duplicate" in r.json()["message"]
    finally:
        put_labels(studio, id_name, [])
        restored = studio.http.put(url, json={"labels": original}, headers=admin, timeout=10)
    assert restored.status_code == 200 and restored.json()["labels"] == original


def test_export_csv_and_coco(studio):
    first, second = "exp_" + uuid.uuid4().hex[:6], "exp_" + uuid.uuid4().hex[:6]
    for id_name, labels in ((first, ["sea", "car"]), (second, [])):
        assert upload(studio, id_name, jpeg()).status_code == 200
        assert put_labels(studio, id_name, labels).status_code == 200
    headers = studio.headers("operator")
    r = studio.http.get("/api/v1/annotations/export", params={"format": "csv"}, headers=headers, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in r.headers["Content-Disposition"]
    lines = r.text.split("\n")
    assert lines[0] == "Id," + ",".join(DEFAULT_LABELS) and lines[-1] == ""
    assert f"{first},1," + ",".join(["0"] * 32) + ",1" in lines
    assert f"{second}," + ",".join(["0"] * 34) in lines
    # Exactly the labelled images, one row each, sorted by id (the same order the dataset uses).
    listed = studio.http.get("/api/v1/annotations", headers=headers, timeout=10).json()["images"]
    rows = list(csv.reader(io.StringIO(r.text)))[1:]
    assert [row[0] for row in rows] == sorted(i["id_name"] for i in listed if i["labels"] is not None)

    coco = studio.http.get("/api/v1/annotations/export", params={"format": "coco"}, headers=headers,
                        timeout=10).json()
    image = next(i for i in coco["images"] if i["id_name"] == first)
    assert (image["file_name"], image["width"], image["height"]) == (f"{first}.jpg", 16, 12)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    mine = [names[a["category_id"]] for a in coco["annotations"] if a["image_id"] == image["id"]]
    assert sorted(mine) == ["car", "sea"]
    r = studio.http.get("/api/v1/annotations/export", params={"format": "xml"}, headers=headers, timeout=10)
    assert r.status_code == 400 and r.json()["field"] == "format"


def test_storage_is_atomic_no_temporary_files_left(studio):
    for folder in ("images", "labels"):
        names = [p.name for p in (studio.data_dir / "newdata" / folder).iterdir()]
        assert names and not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names


# --- service helpers and the Annotate page --------------------------------------------------------
@pytest.mark.parametrize(("filename", "expected"), [
    ("IMG_0001.JPG", "IMG_0001"), ("my photo (1).jpeg", "my_photo_1_"), ("../../etc/passwd", "passwd"),
    ("C:\\pics\\été.png", "_t_"), (".hidden.png", "hidden"), ("...", "image"), ("a" * 300 + ".jpg", "a" * 128),
])
def test_default_id_name_is_always_valid(filename, expected):
    assert annotation.default_id_name(filename) == expected


@pytest.fixture
def page(tmp_path, monkeypatch):
    """The Annotate page on an empty DATA_DIR, signed in as an annotator."""
    with app_page("annotate.py", {"username": "ann", "role": "annotator"}, tmp_path, monkeypatch) as at:
        yield at


def test_page_refuses_other_roles(page):
    page.session_state["user"] = {"username": "c", "role": "client"}
    page.run()
    assert not page.exception and "may not use this page" in page.error[0].value


def test_page_upload_queue_and_map(page, tmp_path):
    page.run()
    assert not page.exception and page.title[0].value == "Annotate"
    assert "Every image is labelled." in [i.value for i in page.info]
    seed = jpeg(legacy_gps(), DateTimeOriginal="2019:08:03 14:41:10")
    page.file_uploader(key="annotate_files").set_value([
        ("my photo (1).jpg", seed, "image/jpeg"), ("plain.png", jpeg(fmt="PNG"), "image/png"),
        ("notes.jpg", b"not an image", "image/jpeg")]).run()
    assert not page.exception
    assert [t.value for t in page.text_input] == ["my_photo_1_", "plain"]
    assert any("2019:08:03 14:41:10" in c.value for c in page.caption)
    assert any("notes.jpg" in e.value and "not a readable image" in e.value for e in page.error)

    page.button(key="annotate_save_all").click().run()
    assert not page.exception and any("Saved 2 of 2" in s.value for s in page.success)
    config = Config.from_env()
    assert sorted(p.name for p in (tmp_path / "newdata" / "images").iterdir()) == ["my_photo_1_.jpg", "plain.png"]
    assert open_store(config.data_dir).get_image("my_photo_1_").latitude == 28.835149765

    page.multiselect(key="annotate_queue_labels_plain").set_value(["tree", "house"])
    page.button(key="annotate_queue_save_plain").click().run()
    assert not page.exception
    stored = json.loads((tmp_path / "newdata" / "labels" / "plain.json").read_text())
    assert stored["labels"] == ["tree", "house"] and stored["labelled_by"] == "ann"
    assert [m.key for m in page.multiselect if m.key.startswith("annotate_queue")] == [
        "annotate_queue_labels_my_photo_1_"]
    assert page.get("deck_gl_json_chart"), "the GPS image should be on the map"

    page.selectbox(key="annotate_filter").set_value("tree").run()
    assert not page.exception and list(page.dataframe[0].value["id_name"]) == ["plain"]


def test_page_saves_one_file_and_reports_a_taken_id(page, tmp_path):
    page.run()
    page.file_uploader(key="annotate_files").set_value(("a.jpg", jpeg(), "image/jpeg")).run()
    key = page.text_input[0].key.removeprefix("annotate_id_")
    page.multiselect(key=f"annotate_labels_{key}").set_value(["snow"])
    page.button(key=f"annotate_save_{key}").click().run()
    assert not page.exception and any("Saved as 'a'" in s.value for s in page.success)
    assert json.loads((tmp_path / "newdata" / "labels" / "a.json").read_text())["labels"] == ["snow"]

    page.file_uploader(key="annotate_files").set_value(("a.png", jpeg(fmt="PNG"), "image/png")).run()
    key = page.text_input[0].key.removeprefix("annotate_id_")
    page.button(key=f"annotate_save_{key}").click().run()
    assert not page.exception and any("'a' exists" in e.value for e in page.error)
    assert sorted(p.name for p in (tmp_path / "newdata" / "images").iterdir()) == ["a.jpg"]
