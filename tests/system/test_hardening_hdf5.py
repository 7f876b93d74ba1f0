"""HDF5 files that make the server read other files, or declare far more than they hold, from outside over HTTP
(issue 21, break 1 and the HDF5 half of break 6).

An operator uploads an HDF5 file whose images are really the server's JWT signing key (external raw storage),
or another HDF5 file of the server (external link, virtual dataset), or one that hides such a reference under
a name no reader uses. The import must refuse it saying why, catalog nothing, export nothing, and the key's
bytes must land in no file the operator can download. A training request naming such a file (put in
DATA_DIR/datasets by hand) is a 400. A 100 KB file declaring 37 GB of never-written images is refused
before anything large is written, and an import that does not fit the disk is refused before it writes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import requests

from services.storage.store import open_store
from tests.harness import unique

WHY = "stores data in other files"


def upload(stack, path: Path, name: str) -> requests.Response:
    with open(path, "rb") as fh:
        return requests.post(stack.url + "/api/v1/datasets", files={"file": (path.name, fh)}, data={"name": name},
                             headers=stack.headers("operator"), timeout=120)


def refusal(stack, answer: requests.Response) -> str:
    """The import's refusal, whether the request gives it (400) or its job does (202, then failed)."""
    if answer.status_code == 400:
        assert answer.json()["field"] == "file", answer.text
        return answer.json()["message"]
    assert answer.status_code == 202, answer.text
    record = stack.wait_job(answer.json()["job_id"], timeout=120)
    assert record["status"] == "failed", record
    return record["error"]


def files_under(stack, *folders: str) -> list[Path]:
    return [p for folder in folders for p in (stack.data_dir / folder).rglob("*") if p.is_file()]


def _plain(f: h5py.File, train_images: bool = True) -> None:
    rng = np.random.default_rng(21)
    if train_images:
        f["X_train"] = rng.integers(0, 256, (2, 8, 8), dtype=np.uint8)
    f["y_train"] = np.array([0, 1])
    f["X_test"], f["y_test"] = rng.integers(0, 256, (4, 8, 8), dtype=np.uint8), np.array([0, 1, 0, 1])


@pytest.fixture(scope="module")
def key(stack) -> Iterator[bytes]:
    """The JWT signing key, and an HDF5 file of the server that holds it (as any file the server reads may)."""
    secret = (stack.data_dir / "jwt_secret.key").read_bytes()
    private = stack.data_dir / "private" / "keys.h5"
    private.parent.mkdir(exist_ok=True)
    with h5py.File(private, "w") as f:
        f["pixels"] = np.stack([np.frombuffer(secret, np.uint8)[:, None]] * 2)  # 2 images of len(key) x 1
    yield secret
    shutil.rmtree(private.parent)


def _external_storage(stack, f: h5py.File, name: str, size: int) -> None:
    segment = (str(stack.data_dir / "jwt_secret.key"), 0, size)
    f.create_dataset(name, shape=(2, size, 1), dtype="u1", external=[segment, segment])


def _external_link(stack, f: h5py.File, name: str, size: int) -> None:
    f[name] = h5py.ExternalLink(str(stack.data_dir / "private" / "keys.h5"), "/pixels")


def _virtual(stack, f: h5py.File, name: str, size: int) -> None:
    layout = h5py.VirtualLayout(shape=(2, size, 1), dtype="u1")
    layout[:] = h5py.VirtualSource(str(stack.data_dir / "private" / "keys.h5"), "pixels", shape=(2, size, 1))
    f.create_virtual_dataset(name, layout)


ATTACKS: dict[str, tuple[Callable, str, str]] = {  # writer, where it hides, the words of the refusal
    "external storage": (_external_storage, "X_train", "external storage of dataset 'X_train'"),
    "external link": (_external_link, "X_train", "external link 'X_train'"),
    "virtual dataset": (_virtual, "X_train", "virtual dataset 'X_train'"),
    "hidden external storage": (_external_storage, "meta/notes", "external storage of dataset 'meta/notes'"),
}


def attack_file(stack, folder: Path, kind: str, size: int) -> Path:
    write, where, _ = ATTACKS[kind]
    path = folder / "harmless.h5"
    with h5py.File(path, "w") as f:
        _plain(f, train_images=where != "X_train")
        write(stack, f, where, size)
    return path


@pytest.mark.parametrize("kind", list(ATTACKS))
def test_an_hdf5_upload_that_reads_other_files_is_refused_and_leaks_nothing(stack, key, kind, tmp_path):
    path, name = attack_file(stack, tmp_path, kind, len(key)), unique("harmless")
    if ATTACKS[kind][1] == "X_train":  # the file is real: plain h5py reads the key through it
        with h5py.File(path, "r") as f:
            assert f["X_train"][0, :, 0].tobytes() == key
    message = refusal(stack, upload(stack, path, name))
    assert WHY in message and ATTACKS[kind][2] in message, message
    assert key.decode() not in message and "jwt_secret" not in message and "keys.h5" not in message
    assert requests.get(f"{stack.url}/api/v1/datasets/{name}", headers=stack.headers("operator"),
                        timeout=30).status_code == 404
    for fmt in ("hdf5", "zip"):
        r = requests.get(f"{stack.url}/api/v1/datasets/{name}/export?format={fmt}", headers=stack.headers("operator"),
                         timeout=60)
        assert r.status_code == 404 and key not in r.content
    leaked = [p for p in files_under(stack, "datasets", "exports", "uploads") if key in p.read_bytes()]
    assert leaked == [], leaked


@pytest.mark.parametrize("kind", ["external storage", "external link", "virtual dataset"])
def test_training_on_such_a_file_put_in_datasets_by_hand_is_a_400(stack, key, kind, tmp_path):
    name = unique("byhand")
    path = attack_file(stack, tmp_path, kind, len(key))
    shutil.copy(path, stack.data_dir / "datasets" / f"{name}.hdf5")
    body = {"model_name": "convnetj", "dataset": "hdf5", "hdf5_path": f"{name}.hdf5", "num_epochs": 1,
            "batch_size": 2}
    try:
        r = requests.post(stack.url + "/api/v1/train", json=body, headers=stack.headers("operator"), timeout=60)
    finally:
        (stack.data_dir / "datasets" / f"{name}.hdf5").unlink()
    assert r.status_code == 400 and r.json()["field"] == "hdf5_path", r.text
    assert WHY in r.json()["message"] and ATTACKS[kind][2] in r.json()["message"], r.text
    assert key.decode() not in r.text


def sparse_file(path: Path) -> Path:
    """About 100 KB declaring 200,000 colour images of 256 x 256 that were never written (they read as zeros)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("X_train", shape=(200_000, 256, 256, 3), dtype="u1", chunks=(1, 256, 256, 3))
        f.create_dataset("y_train", data=np.arange(200_000) % 2, compression="gzip")
        f["X_test"], f["y_test"] = np.zeros((4, 256, 256, 3), np.uint8), np.arange(4) % 2
    return path


def test_a_sparse_file_declaring_37_gb_is_refused_before_anything_large_is_written(stack, tmp_path):
    path = sparse_file(tmp_path / "sparse.h5")
    assert path.stat().st_size < 1 << 20
    before = sum(p.stat().st_size for p in files_under(stack, "."))
    started = time.monotonic()
    message = refusal(stack, upload(stack, path, unique("sparse")))
    assert time.monotonic() - started < 60
    assert "X_train as 200,000 x 256 x 256 x 3" in message and "37,502 MB once decoded" in message, message
    assert f"limit of {stack.config.max_dataset_mb:,} MB" in message, message
    grown = sum(p.stat().st_size for p in files_under(stack, ".")) - before
    assert grown < 10 << 20, f"DATA_DIR grew by {grown / 2**20:.0f} MB"


def test_an_hdf5_import_that_does_not_fit_the_disk_is_refused_before_writing(stack, tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        _plain(f)
    store = open_store(stack.data_dir)
    holder = unique("holder")
    # A queued generation holds all the free disk (and a margin: other processes write on this disk too).
    store.create_job(holder, "generate", {"reserved_bytes": shutil.disk_usage(stack.data_dir).free + 2**30}, "admin")
    name = unique("nospace")
    try:
        message = refusal(stack, upload(stack, path, name))
    finally:
        store.update_job(holder, status="finished")
    assert "InsufficientStorage" in message and "'file'" in message and "make a dataset of about" in message, message
    assert not (stack.data_dir / "datasets" / f"{name}.hdf5").exists()
    assert not [p for p in (stack.data_dir / "datasets").iterdir() if p.name.startswith(f".{name}")]
