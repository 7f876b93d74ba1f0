"""The small holes an attacker found, each closed: deep JSON, paths, overwrites, formulas, headers, origins.

In-process; deep JSON and the security headers also over HTTP (gunicorn's gevent workers parse on a greenlet's
stack and answer the routes no view serves), and Socket.IO's origin check only there.
"""

from __future__ import annotations

import base64
import io
import secrets
import time

import numpy as np
import pytest
from PIL import Image

from engine.labels import export_csv
from services.storage.rows import Model
from services.storage.store import open_store


def jpeg_bytes(seed=0, size=(48, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def segment_body(**overrides) -> dict:
    image = base64.b64encode(jpeg_bytes(1, (64, 64))).decode()
    return {"x1": "4", "y1": "4", "x2": "60", "y2": "60", "ean": "thing", "image": image, **overrides}


@pytest.mark.parametrize("path,role", [("/auth", None), ("/api/v1/train", "operator"), ("/api/v1/segment", "operator")])
def test_json_nested_100000_deep_is_a_400(door, path, role):
    body = "[" * 100_000 + "]" * 100_000
    headers = {"Content-Type": "application/json", **(door.headers(role) if role else {})}
    r = door.http.post(path, data=body, headers=headers, timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "invalid_json", r.text


def test_clients_see_no_checkpoint_paths(studio):
    model_id = f"m{secrets.token_hex(4)}"
    open_store(studio.data_dir).add_model(Model(id=model_id, model_name="convnetj", created_at=time.time(),
                                               path=f"checkpoints/{model_id}/best.pt", class_names=["a", "b"]))
    for role, sees_path in (("client", False), ("operator", True)):
        rows = studio.http.get("/api/v1/models/trained", headers=studio.headers(role), timeout=10).json()
        row = next(r for r in rows["models"] if r["id"] == model_id)
        assert ("path" in row) is sees_path, (role, row)
    open_store(studio.data_dir).delete_model(model_id)


def test_an_annotator_cannot_overwrite_another_annotators_photo(studio):
    other = f"ann_{secrets.token_hex(3)}"
    open_store(studio.data_dir).create_user(other, "other-annotator-pass-1", "annotator")
    token = studio.http.post("/auth", json={"username": other, "password": "other-annotator-pass-1"},
                          timeout=10).json()["access_token"]
    id_name = f"mine_{secrets.token_hex(3)}"
    original = jpeg_bytes(2)

    def upload(headers, data):
        return studio.http.post("/imgup", files={"file": ("p.jpg", data)},
                             data={"id_name": id_name, "overwrite": "1"}, headers=headers, timeout=30)

    assert upload(studio.headers("annotator"), original).status_code == 200
    r = upload({"Authorization": f"JWT {token}"}, jpeg_bytes(3))
    assert r.status_code == 403 and r.json()["field"] == "id_name"
    assert (studio.data_dir / "newdata" / "images" / f"{id_name}.jpg").read_bytes() == original
    assert upload(studio.headers("annotator"), jpeg_bytes(4)).status_code == 200  # one's own: allowed
    assert upload(studio.headers("admin"), jpeg_bytes(5)).status_code == 200


def test_csv_export_neutralises_formulas():
    text = export_csv([("-2+3", ["=1+2"]), ("plain", ["@SUM(A1)"])], ["sea", "=1+2", "@SUM(A1)", "+x"])
    header, first, second = text.splitlines()
    assert header == "Id,sea,'=1+2,'@SUM(A1),'+x"
    assert first == "'-2+3,0,1,0,0" and second == "plain,0,0,1,0"


def test_every_api_response_carries_security_headers(door):
    for path in ("/health", "/api/v1/jobs", "/no/such/route", "/api/v1/docs"):  # 200, 401, 404, 200
        r = door.http.get(path, timeout=10)
        assert r.headers["X-Content-Type-Options"] == "nosniff", path
        assert r.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]


def test_socketio_does_not_accept_a_foreign_origin(stack):
    url = "/socket.io/?EIO=4&transport=polling"
    evil = stack.http.get(url, headers={"Origin": "http://evil.example"}, timeout=10)
    assert evil.status_code == 400 and "evil.example" not in evil.headers.get("Access-Control-Allow-Origin", "")
    own = stack.http.get(url, headers={"Origin": stack.url}, timeout=10)
    assert own.status_code == 200 and own.headers["Access-Control-Allow-Origin"] == stack.url


def test_error_messages_show_no_object_reprs(studio):
    junk = base64.b64encode(b"certainly not an image" * 20).decode()
    r = studio.http.post("/api/v1/segment", json=segment_body(image=junk), headers=studio.headers("operator"),
                      timeout=30)
    assert r.status_code == 400 and r.json()["field"] == "image"
    assert " at 0x" not in r.text and "BytesIO" not in r.text, r.text


def test_the_model_zoo_needs_a_token(studio):
    assert studio.http.get("/api/v1/models", timeout=10).status_code == 401
    assert studio.http.get("/api/v1/models", headers=studio.headers("client"), timeout=10).status_code == 200


def test_a_huge_batch_size_list_is_refused_naming_the_field(studio):
    body = {"dataset": "hdf5", "hdf5_path": "x.h5", "num_classes": 10, "num_epochs": 2,
            "space": {"batch_size": list(range(1, 60_001))}}
    r = studio.http.post("/api/v1/tune", json=body, headers=studio.headers("operator"), timeout=30)
    assert r.status_code == 400 and r.json()["field"] == "space.batch_size" and "at most 64" in r.json()["message"]


def test_stroke_work_is_bounded_naming_the_field(studio):
    line = [[i % 60 + 2, (i // 60) % 60 + 2] for i in range(10_000)]
    body = segment_body(fg_strokes=[line] * 10, stroke_width=500)
    r = studio.http.post("/api/v1/segment", json=body, headers=studio.headers("operator"), timeout=30)
    assert r.status_code == 400 and r.json()["field"] == "stroke_width" and "budget" in r.json()["message"], r.text
    small = segment_body(fg_strokes=[[[20, 20], [40, 40]]], stroke_width=8)
    assert studio.http.post("/api/v1/segment", json=small, headers=studio.headers("operator"),
                         timeout=60).status_code == 200
