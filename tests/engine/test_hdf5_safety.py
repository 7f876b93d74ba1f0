"""HDF5 files that point at other files, or declare more than they hold: every reader refuses them.

The files are written with plain h5py, the way an attacker would: a dataset whose raw bytes live in another
file (external storage), a link to an object of another file (external link), and a virtual dataset mapped
onto another file's dataset. Each of these would otherwise hand the other file's bytes to the reader as
pixels. A "secret" of random bytes stands for the server's signing key: it must appear nowhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine import archives
from engine.augment.generate import export_image_folders
from engine.datasets import (
    MAX_IMAGE_READ_BYTES,
    MAX_LABEL_VALUES,
    DatasetSpec,
    build_datasets,
    inspect_hdf5,
    make_preprocessing,
    write_canonical_hdf5,
)
from engine.exceptions import InvalidInput
from engine.hdf5 import MAX_LINKS, open_hdf5
from tests.hdf5_variants import DIGITS, IMAGES, N_TRAIN, NAMES, SPLITS, write_h5

SHAPE = (N_TRAIN, 8, 8)  # the training images the secret poses as
SIZE = int(np.prod(SHAPE))


@pytest.fixture()
def secret(tmp_path) -> bytes:
    """A key file outside the dataset folder, and an HDF5 file elsewhere holding the same bytes as an array."""
    data = np.random.default_rng(21).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "jwt_secret.key").write_bytes(data)
    with h5py.File(tmp_path / "elsewhere" / "other.h5", "w") as f:
        f["pixels"] = np.frombuffer(data, np.uint8).reshape(SHAPE)
    return data


def _plain_splits(f: h5py.File, train_images: bool = True) -> None:
    if train_images:
        f["X_train"] = IMAGES[SPLITS["train"]]
    f["y_train"] = DIGITS[SPLITS["train"]]
    f["X_test"], f["y_test"] = IMAGES[SPLITS["test"]], DIGITS[SPLITS["test"]]
    f.attrs["class_names"] = NAMES


def _external_storage(f: h5py.File, where: Path, name: str) -> None:
    f.create_dataset(name, shape=SHAPE, dtype="u1", external=[(str(where / "jwt_secret.key"), 0, SIZE)])


def _external_link(f: h5py.File, where: Path, name: str) -> None:
    f[name] = h5py.ExternalLink(str(where / "other.h5"), "/pixels")


def _virtual_dataset(f: h5py.File, where: Path, name: str) -> None:
    layout = h5py.VirtualLayout(shape=SHAPE, dtype="u1")
    layout[:] = h5py.VirtualSource(str(where / "other.h5"), "pixels", shape=SHAPE)
    f.create_virtual_dataset(name, layout)


KINDS: dict[str, tuple[Callable[[h5py.File, Path, str], None], str]] = {
    "external storage": (_external_storage, "external storage of dataset"),
    "external link": (_external_link, "external link"),
    "virtual dataset": (_virtual_dataset, "virtual dataset"),
}


def _attack(tmp_path: Path, kind: str, name: str = "X_train") -> Path:
    """A dataset file whose ``name`` reads the secret; X_train is the secret unless ``name`` hides elsewhere."""
    path = tmp_path / "uploads" / "attack.h5"
    path.parent.mkdir(exist_ok=True)
    with h5py.File(path, "w") as f:
        _plain_splits(f, train_images=name != "X_train")
        KINDS[kind][0](f, tmp_path / "elsewhere", name)
    return path


def _assert_refused_and_silent(exc: InvalidInput, words: str, secret: bytes, name: str, field="hdf5_path"):
    message = str(exc)
    assert exc.field == field and "'attack.h5'" in message, message
    assert "stores data in other files" in message and f"{words} '{name}'" in message, message
    assert "elsewhere" not in message and "jwt_secret" not in message  # no path the file named is echoed
    assert secret.hex()[:16] not in message.encode().hex() and secret[:16] not in message.encode("latin-1", "replace")


def _readers(target: Path) -> dict[str, Callable[[Path], object]]:
    """Every engine door that reads an HDF5 file a user brought or named."""
    return {
        "inspect": inspect_hdf5,
        "train": lambda p: build_datasets(DatasetSpec("hdf5", hdf5_path=str(p)), make_preprocessing(8)),
        "import": lambda p: write_canonical_hdf5(p, target),
        "counts": lambda p: archives.split_counts(p, NAMES),
        "zip export": lambda p: archives.write_hdf5_as_zip(p, target, NAMES, "d"),
        "folder export": lambda p: export_image_folders(p, target.with_suffix(".folders")),
        "open": open_hdf5,
    }


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_secret_itself_reads_when_the_check_is_bypassed(kind, tmp_path, secret):
    """Proof that each attack file is real: plain h5py hands the other file's bytes back as pixels."""
    with h5py.File(_attack(tmp_path, kind), "r") as f:
        assert f["X_train"][()].tobytes() == secret


@pytest.mark.parametrize("reader", list(_readers(Path("x"))))
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_reader_refuses_a_file_that_reads_another_file(kind, reader, tmp_path, secret):
    path, target = _attack(tmp_path, kind), tmp_path / "out" / "written.h5"
    target.parent.mkdir()
    with pytest.raises(InvalidInput) as err:
        _readers(target)[reader](path)
    _assert_refused_and_silent(err.value, KINDS[kind][1], secret, "X_train")
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert not any(secret[:32] in p.read_bytes() for p in written), written


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_reference_hidden_outside_the_dataset_names_is_refused_too(kind, tmp_path, secret):
    """No reader looks at ``notes/readme``; the file is refused all the same (a later reader might)."""
    path = _attack(tmp_path, kind, name="notes/readme")
    for read in (inspect_hdf5, open_hdf5):
        with pytest.raises(InvalidInput) as err:
            read(path)
        _assert_refused_and_silent(err.value, KINDS[kind][1], secret, "notes/readme")


def test_a_soft_link_through_an_external_link_is_refused_and_one_inside_the_file_reads(tmp_path, secret):
    path = tmp_path / "uploads" / "attack.h5"
    path.parent.mkdir()
    with h5py.File(path, "w") as f:
        _plain_splits(f, train_images=False)
        _external_link(f, tmp_path / "elsewhere", "hidden")
        f["X_train"] = h5py.SoftLink("/hidden")
    with pytest.raises(InvalidInput) as err:
        inspect_hdf5(path)
    _assert_refused_and_silent(err.value, "external link", secret, "hidden")
    plain = tmp_path / "soft.h5"
    with h5py.File(plain, "w") as f:  # a soft link that stays inside the file is ordinary HDF5
        _plain_splits(f, train_images=False)
        f["data/train_images"] = IMAGES[SPLITS["train"]]
        f["X_train"] = h5py.SoftLink("/data/train_images")
    assert inspect_hdf5(plain).class_names == NAMES


def test_a_plain_file_written_the_ordinary_way_still_reads_everywhere(tmp_path):
    path = tmp_path / "plain.h5"
    write_h5(path)
    summary = inspect_hdf5(path)
    assert summary.class_names == NAMES and summary.canonical_bytes == len(IMAGES) * (8 * 8 + 8)
    bundle = build_datasets(DatasetSpec("hdf5", hdf5_path=str(path)), make_preprocessing(8))
    assert len(bundle.train) == N_TRAIN and bundle.train[0][0].shape == (3, 8, 8)
    write_canonical_hdf5(path, tmp_path / "canonical.h5")
    counts = archives.split_counts(tmp_path / "canonical.h5", NAMES)
    assert counts["train"]["zero"] == int((DIGITS[:N_TRAIN] == 0).sum())
    with open_hdf5(tmp_path / "canonical.h5") as f:
        assert np.array_equal(f["X_train"][:, :, :, 0], IMAGES[SPLITS["train"]])


def test_a_file_of_too_many_links_is_refused_without_walking_them_all(tmp_path):
    path = tmp_path / "links.h5"
    write_h5(path, extra=lambda f: [f.__setitem__(f"many/l{i}", h5py.SoftLink("/X_train"))
                                    for i in range(MAX_LINKS + 1)])
    with pytest.raises(InvalidInput) as err:
        inspect_hdf5(path)
    assert err.value.field == "hdf5_path" and f"more than {MAX_LINKS:,} links" in str(err.value)


# ------------------------------------------------------------------------------------ declared sizes


def _sparse(path: Path, images: int = 200_000, side: int = 256, labels: int | None = None, chunk: int = 1) -> Path:
    """A file of ~100 KB that declares ``images`` colour images never written (they read as zeros)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("X_train", shape=(images, side, side, 3), dtype="u1", chunks=(chunk, side, side, 3))
        if labels is None:
            f.create_dataset("y_train", data=np.arange(images) % 2, compression="gzip")
        else:  # labels declared, never written either
            f.create_dataset("y_train", shape=(labels,), dtype="i8", chunks=(1 << 16,))
        f["X_test"], f["y_test"] = np.zeros((4, side, side, 3), np.uint8), np.arange(4) % 2
    return path


def test_declared_huge_images_are_refused_against_the_budget_before_anything_is_written(tmp_path):
    path = _sparse(tmp_path / "sparse.h5")
    assert path.stat().st_size < 1 << 20
    target = tmp_path / "out.h5"
    started = time.monotonic()
    with pytest.raises(InvalidInput) as err:
        write_canonical_hdf5(path, target, max_bytes=4096 << 20)
    message = str(err.value)
    assert err.value.field == "hdf5_path" and "X_train as 200,000 x 256 x 256 x 3" in message, message
    assert "37,502 MB once decoded" in message and "limit of 4,096 MB" in message, message
    assert not target.exists() and time.monotonic() - started < 20
    with pytest.raises(InvalidInput):
        inspect_hdf5(path, max_bytes=4096 << 20)
    assert inspect_hdf5(path).canonical_bytes == 200_004 * (256 * 256 * 3 + 8)  # no budget: training reads lazily


@pytest.mark.parametrize(("write", "words"), [
    (lambda p: _sparse(p, images=4, side=8, labels=MAX_LABEL_VALUES + 1), f"{MAX_LABEL_VALUES + 1:,} label values"),
    (lambda p: _sparse(p, images=2000, side=256, chunk=2000), "one chunk of X_train"),
    (lambda p: _sparse(p, images=2, side=10_000), "one image of X_train"),
], ids=["labels", "chunk", "image"])
def test_declared_shapes_that_would_fill_memory_are_refused_before_reading(write, words, tmp_path):
    path = write(tmp_path / "declared.h5")
    started = time.monotonic()
    with pytest.raises(InvalidInput) as err:
        inspect_hdf5(path)
    assert err.value.field == "hdf5_path" and words in str(err.value), str(err.value)
    assert time.monotonic() - started < 10
    assert MAX_IMAGE_READ_BYTES >> 20 == 256
