"""Dataset imports under attack, from outside over HTTP (issue 21, breaks 5, 6 and 9).

A zip of very many tiny entries must not be walked by the request (the API serves everyone on one event
loop); a tiny zip whose images would be blown up to a huge dataset is refused before a byte is written,
naming ``image_size``; an import cancelled while queued leaves no upload behind; a greyscale dataset
exports as a zip of PNGs.

The stack here is this module's own, with small budgets (``MAX_ZIP_ENTRIES``, ``MAX_DATASET_MB``) so that a
zip just over them is quick to build, and one worker that a test can keep busy.
"""

from __future__ import annotations

import io
import multiprocessing
import shutil
import statistics
import struct
import threading
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import requests
from PIL import Image

from engine import archives
from engine.exceptions import InvalidInput
from services.app.quotas import InsufficientStorage
from services.jobs import runtime as jobs
from services.platform.config import Config
from services.storage.store import open_store
from tests import fake_jobs  # noqa: F401  (registers the test job kind in this process)
from tests.harness import Stack, unique

ENTRY_BUDGET = 60_000  # MAX_ZIP_ENTRIES of this stack
DATASET_MB = 256  # MAX_DATASET_MB of this stack
UPLOAD_ANSWER_S = 2.0
# Unfixed, /health waited 5.4 s (p99). A few dozen probes on a busy 2-core CI machine see an occasional
# 0.2 s scheduling hiccup, so the bound here is 1 s; the 200 ms p99 is the soak's (bench/soak_attacks.py).
HEALTH_P99_S = 1.0


@pytest.fixture(scope="module")
def studio(tmp_path_factory, processes):
    s = Stack.in_own_folder(tmp_path_factory, "imports", MAX_ZIP_ENTRIES=str(ENTRY_BUDGET),
                            MAX_DATASET_MB=str(DATASET_MB)).start()
    yield s
    s.close()


def upload(stack: Stack, path: Path, name: str, **form) -> requests.Response:
    with open(path, "rb") as fh:
        return requests.post(stack.url + "/api/v1/datasets", files={"file": (path.name, fh)},
                             data={"name": name, **form}, headers=stack.headers("operator"), timeout=120)


def export(stack: Stack, name: str) -> requests.Response:
    return requests.get(f"{stack.url}/api/v1/datasets/{name}/export?format=zip", headers=stack.headers("operator"),
                        timeout=120)


def uploads_left(stack: Stack) -> list[str]:
    return sorted(p.name for p in (stack.data_dir / "uploads").iterdir())


def bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def tiny_entries_zip(path: Path, entries: int) -> Path:
    """One-byte files in one folder, zipped as a file manager zips them (deflated)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(entries):
            zf.writestr(f"tiny/{i:06d}.txt", b"x")
    return path


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def class_folder_zip(path: Path, classes: dict[str, list[np.ndarray]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, images in classes.items():
            for i, pixels in enumerate(images):
                zf.writestr(f"photos/{name}/{i:04d}.png", png(pixels))
    return path


class HealthProbe:
    """Times ``GET /health`` back to back on a thread while the ``with`` block runs."""

    def __init__(self, url: str):
        self.url, self.times, self._stop = url + "/health", [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                start = time.monotonic()
                session.get(self.url, timeout=30)
                self.times.append(time.monotonic() - start)
                time.sleep(0.01)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        time.sleep(0.3)  # a few answers before the upload starts
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def p99(self) -> float:
        return statistics.quantiles(self.times, n=100, method="inclusive")[98]


# ------------------------------------------------------------------------------- break 5: many entries
def test_a_zip_of_many_tiny_entries_is_answered_at_once_and_health_stays_fast(studio, tmp_path):
    path = tiny_entries_zip(tmp_path / "tiny.zip", ENTRY_BUDGET - 1000)
    with HealthProbe(studio.url) as probe:
        start = time.monotonic()
        r = upload(studio, path, unique("tiny"))
        took = time.monotonic() - start
    print(f"\n{ENTRY_BUDGET - 1000:,} entries: answered in {took:.2f} s; /health p99 {probe.p99 * 1000:.0f} ms "
          f"over {len(probe.times)} probes")
    assert took < UPLOAD_ANSWER_S, f"the upload took {took:.2f} s to answer"
    assert probe.p99 < HEALTH_P99_S, f"/health p99 was {probe.p99 * 1000:.0f} ms while the upload was handled"
    assert r.status_code == 202, r.text
    assert r.json()["format"] == "zip" and r.json()["entries"] == ENTRY_BUDGET - 1000
    record = studio.wait_job(r.json()["job_id"], timeout=120)  # the job walks the entries, and refuses them
    assert record["status"] == "failed" and "'file'" in record["error"] and "no images" in record["error"], record
    assert uploads_left(studio) == []


def test_a_zip_over_the_entry_budget_is_refused_at_once_naming_file(studio, tmp_path):
    path = tiny_entries_zip(tmp_path / "many.zip", 100_000)
    before = {j["id"] for j in requests.get(studio.url + "/api/v1/jobs", headers=studio.headers("admin"),
                                            timeout=30).json()["jobs"]}
    start = time.monotonic()
    r = upload(studio, path, unique("many"))
    took = time.monotonic() - start
    assert r.status_code == 400 and r.json()["field"] == "file", r.text
    message = r.json()["message"]
    assert "100,000 entries" in message and f"{ENTRY_BUDGET:,}" in message and "MAX_ZIP_ENTRIES" in message
    assert took < UPLOAD_ANSWER_S, f"the refusal took {took:.2f} s"
    after = {j["id"] for j in requests.get(studio.url + "/api/v1/jobs", headers=studio.headers("admin"),
                                           timeout=30).json()["jobs"]}
    assert after == before, "a refused upload queued a job"
    assert uploads_left(studio) == []


def test_a_directory_larger_than_its_declared_count_needs_is_refused(tmp_path):
    """The end record's count can lie (zipfile reads the directory by its size): the size is bounded too."""
    path = tiny_entries_zip(tmp_path / "lying.zip", 200)
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 2, 2)  # "2 entries on this disk, 2 in all"
    path.write_bytes(bytes(data))
    assert archives.declared_directory(path)[0] == 2
    with pytest.raises(InvalidInput, match="directory takes") as refused:
        archives.check_directory(path, archives.ZipLimits(max_entries=10))
    assert refused.value.field == "file"


# ----------------------------------------------------------------------- break 6: amplification
def test_tiny_images_blown_up_by_image_size_are_refused_before_writing(studio, tmp_path):
    """150 one-pixel PNGs (a zip of ~25 KB) at image_size=1024 would make ~450 MB: over MAX_DATASET_MB."""
    rng = np.random.default_rng(0)
    classes = {name: [rng.integers(0, 256, (1, 1, 3), dtype=np.uint8) for _ in range(75)] for name in ("a", "b")}
    path = class_folder_zip(tmp_path / "dots.zip", classes)
    assert path.stat().st_size < 64 * 1024
    before = bytes_under(studio.data_dir / "datasets")
    name = unique("dots")
    r = upload(studio, path, name, image_size="1024")
    assert r.status_code == 202, r.text
    record = studio.wait_job(r.json()["job_id"], timeout=120)
    assert record["status"] == "failed", record
    error = record["error"]
    assert "'image_size'" in error and "150 images at 1024x1024" in error and "MAX_DATASET_MB" in error, error
    assert f"({DATASET_MB:,} MB)" in error
    assert record["progress"] is None, "images were written before the refusal"
    assert bytes_under(studio.data_dir / "datasets") - before < 1024 * 1024
    assert not (studio.data_dir / "datasets" / f"{name}.hdf5").exists() and uploads_left(studio) == []
    r = upload(studio, path, name, image_size="32")  # the same zip at a size that fits imports
    assert studio.wait_job(r.json()["job_id"], timeout=120)["status"] == "finished"


def test_an_import_that_does_not_fit_beside_reserved_disk_is_refused_naming_image_size(studio, tmp_path):
    store = open_store(studio.data_dir)
    free = shutil.disk_usage(studio.data_dir / "datasets").free
    holder = f"holder-{unique('gen')}"
    # A queued generation holds all the free disk (and a margin, as other processes write on this disk too).
    store.create_job(holder, "generate", {"reserved_bytes": free + 2**30}, "admin")
    try:
        rng = np.random.default_rng(1)
        classes = {n: [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(10)] for n in "ab"}
        r = upload(studio, class_folder_zip(tmp_path / "small.zip", classes), unique("small"), image_size="64")
        record = studio.wait_job(r.json()["job_id"], timeout=120)
    finally:
        store.update_job(holder, status="finished")
    assert record["status"] == "failed" and "InsufficientStorage" in record["error"], record
    assert "'image_size'" in record["error"] and "reserved by queued or running jobs" in record["error"]
    assert uploads_left(studio) == []


def _reserve(data_dir: str, job_id: str, needed: int, start, results) -> None:
    config = Config(data_dir=Path(data_dir))
    start.wait()
    try:
        jobs.JobContext(job_id, config, open_store(config.data_dir)).reserve_disk(needed, "image_size", "a test")
        results.put((job_id, "reserved"))
    except InsufficientStorage:
        results.put((job_id, "refused"))


def test_two_imports_cannot_both_reserve_the_same_free_bytes(tmp_path, processes):
    """Each asks for 60 % of the free disk at the same moment: one gets it, the other is refused."""
    Config(data_dir=tmp_path).ensure_dirs()
    store = open_store(tmp_path)
    needed = int(shutil.disk_usage(tmp_path).free * 0.6)
    for job_id in ("import-1", "import-2"):
        store.create_job(job_id, "import_dataset", {}, "operator")
        store.update_job(job_id, status="started")
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(2), context.Queue()
    procs = [context.Process(target=_reserve, args=(str(tmp_path), j, needed, start, results))
             for j in ("import-1", "import-2")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    outcomes = sorted(results.get(timeout=5)[1] for _ in procs)
    assert outcomes == ["refused", "reserved"]
    assert sum(store.get_job(j)["reserved_bytes"] for j in ("import-1", "import-2")) == needed


# ------------------------------------------------------------------------ break 9: cancel, grey export
def test_an_import_cancelled_while_queued_leaves_no_upload(studio, tmp_path):
    store = open_store(studio.data_dir)
    busy = jobs.submit(studio.config, store, "test-count", {"n": 600, "delay": 0.05}, "operator")
    studio.wait_job(busy, statuses=("started",))  # the stack's one worker is taken: the import waits
    try:
        classes = {n: [np.full((8, 8, 3), 60 * k, np.uint8)] * 3 for k, n in enumerate("ab")}
        r = upload(studio, class_folder_zip(tmp_path / "queued.zip", classes), unique("queued"))
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        assert uploads_left(studio) != [], "the queued import keeps its upload"
        assert studio.wait_job(job_id, statuses=("queued",))["status"] == "queued"
        cancel = requests.post(f"{studio.url}/api/v1/jobs/{job_id}/cancel", headers=studio.headers("operator"),
                               timeout=60)
        assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled", cancel.text
        assert uploads_left(studio) == []
    finally:
        requests.post(f"{studio.url}/api/v1/jobs/{busy}/cancel", headers=studio.headers("admin"), timeout=60)
    assert studio.wait_job(busy)["status"] == "cancelled"


def test_a_greyscale_dataset_exports_as_a_zip_of_grey_pngs_that_imports_again(studio, tmp_path):
    """An h5py file of N x H x W uint8 is kept with one channel; its zip export (then the import of that zip of
    'L' PNGs, and its export again) answers 200 with PNGs of the images' size."""
    rng = np.random.default_rng(2)
    path = tmp_path / "grey.h5"
    with h5py.File(path, "w") as h5:  # N x H x W uint8, as plain h5py users write greyscale images
        h5["X_train"] = rng.integers(0, 256, (6, 12, 10), dtype=np.uint8)
        h5["y_train"] = np.arange(6) % 2
        h5["X_test"] = rng.integers(0, 256, (4, 12, 10), dtype=np.uint8)
        h5["y_test"] = np.arange(4) % 2
    name = unique("grey")
    r = upload(studio, path, name)
    assert r.status_code == 202, r.text
    assert studio.wait_job(r.json()["job_id"], timeout=120)["status"] == "finished"
    answer = export(studio, name)
    assert answer.status_code == 200, answer.text[:300]
    with zipfile.ZipFile(io.BytesIO(answer.content)) as zf, h5py.File(path) as h5:
        members = sorted(m for m in zf.namelist() if m.endswith(".png"))
        assert len(members) == 10
        first = Image.open(io.BytesIO(zf.read(f"{name}/train/0/000000.png")))
        assert first.size == (10, 12) and first.mode == "L"
        assert np.array_equal(np.asarray(first), h5["X_train"][0])
    (tmp_path / "grey.zip").write_bytes(answer.content)
    again = unique("grey_again")
    r = upload(studio, tmp_path / "grey.zip", again)
    assert studio.wait_job(r.json()["job_id"], timeout=120)["status"] == "finished"
    answer = export(studio, again)
    assert answer.status_code == 200, answer.text[:300]
    with zipfile.ZipFile(io.BytesIO(answer.content)) as zf:
        sizes = {Image.open(io.BytesIO(zf.read(m))).size for m in zf.namelist() if m.endswith(".png")}
    assert sizes == {(10, 12)}
