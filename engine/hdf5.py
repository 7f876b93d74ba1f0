"""The one way this project opens an HDF5 file for reading: read-only, and only when it is self-contained.

An HDF5 file can make its reader open *other* files (h5py documents all three): a dataset's raw data may
live in external files (``create_dataset(..., external=[(path, offset, size)])``), a link may name an
object in another file (``h5py.ExternalLink``, or a user-defined link type), and a virtual dataset maps
its elements onto datasets of other files (``h5py.VirtualLayout``). A reader that follows them reads
whatever the file names: the server's signing keys, its catalog, system files. :func:`open_hdf5` walks
every link of the file before anything is read and refuses a file that holds any of them, wherever it
sits (not only under the names a dataset uses). Soft links stay allowed: they name a path inside the
same file, and with no external or user-defined link left anywhere, every path resolves inside it.

The walk is bounded by :data:`MAX_LINKS`, so a file of millions of links cannot keep a reader busy.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
from h5py import h5l

from engine.exceptions import InvalidInput

# A dataset file holds a handful of arrays; ten thousand links is far beyond any honest one.
MAX_LINKS = 10_000
# Findings named in a refusal (the rest are counted).
SHOWN_FINDINGS = 5
_SELF_CONTAINED = (
    "The studio reads only data stored inside the file itself: write the arrays into it (e.g. "
    "f['X_train'] = X, with numpy arrays) instead of external links, external storage or virtual datasets"
)


def open_hdf5(path: str | os.PathLike, field: str | None = "hdf5_path") -> h5py.File:
    """Open an HDF5 file read-only, after checking that reading it opens no other file.

    Args:
        path: the file.
        field: the request field that named it, for the refusal.

    Returns:
        The open file (the caller closes it, e.g. ``with open_hdf5(p) as f``).

    Raises:
        InvalidInput: (on ``field``) the file has external links or other non-HDF5 link types, datasets
            with external storage, virtual datasets, or more than :data:`MAX_LINKS` links; the message
            says which and why.
        OSError: the file is missing or not HDF5 (as ``h5py.File`` raises it).
    """
    handle = h5py.File(path, "r")
    try:
        check_self_contained(handle, Path(path).name, field)
    except BaseException:
        handle.close()
        raise
    return handle


def check_self_contained(f: h5py.File, name: str, field: str | None = "hdf5_path") -> None:
    """Refuse a file of which some object would be read from another file (see :func:`open_hdf5`).

    Args:
        f: an open file.
        name: the file's name as the user knows it (never the server's path).
        field: the request field for the refusal.

    Raises:
        InvalidInput: naming what points outside the file.
    """
    findings: list[str] = []
    count = 0

    def visit(raw: bytes, info) -> bool | None:
        nonlocal count
        count += 1
        if count > MAX_LINKS:
            return True  # stops the walk
        found = _outside_reference(f, raw, info.type)
        if found:
            findings.append(found)
        return True if len(findings) > SHOWN_FINDINGS else None

    # H5Lvisit walks every link of every group reachable by hard links; it reports soft and external
    # links without following them, and each group is entered once (no cycles).
    f.id.links.visit(visit, info=True)
    if count > MAX_LINKS:
        raise InvalidInput(f"HDF5 file {name!r}: holds more than {MAX_LINKS:,} links (objects and links between "
                           "them); a dataset file holds a few arrays. Write only the arrays into it", field)
    if findings:
        shown = ", ".join(findings[:SHOWN_FINDINGS]) + (", ..." if len(findings) > SHOWN_FINDINGS else "")
        raise InvalidInput(f"HDF5 file {name!r}: it stores data in other files ({shown}), which would make "
                           f"the server read files it names. {_SELF_CONTAINED}", field)


def _outside_reference(f: h5py.File, raw: bytes, link_type: int) -> str | None:
    """What makes one link read another file (``"external link 'a/b'"``), or None."""
    name = _shown(raw)
    if link_type == h5l.TYPE_SOFT:
        return None  # a path inside this file; the walk checks what it may reach
    if link_type == h5l.TYPE_EXTERNAL:
        return f"external link {name}"
    if link_type != h5l.TYPE_HARD:
        return f"user-defined link {name}"
    target = f[raw]
    if not isinstance(target, h5py.Dataset):
        return None
    # Both come from the dataset's creation properties: nothing is read from the files they name.
    if target.is_virtual:
        return f"virtual dataset {name}"
    if target.external:
        return f"external storage of dataset {name}"
    return None


def _shown(raw: bytes, limit: int = 60) -> str:
    text = raw.decode("utf-8", errors="replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def declared_values(dataset: h5py.Dataset) -> int:
    """Elements a dataset declares (its shape's product, exact for any size), read or not."""
    return math.prod(int(side) for side in dataset.shape) if dataset.shape is not None else 0


def chunk_bytes(dataset: h5py.Dataset) -> int:
    """Bytes of one decoded chunk (0 when not chunked): reading any element decodes a whole chunk."""
    return math.prod(dataset.chunks) * dataset.dtype.itemsize if dataset.chunks else 0
