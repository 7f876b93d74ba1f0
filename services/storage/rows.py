"""The catalog's row types: one frozen dataclass per table, the only shapes :class:`services.storage.store.Store`
writes and returns.

A row also reads as a read-only mapping (``row["status"]``, ``{**row}``), so views built from rows and the
API's JSON answers keep their shape; what a row may hold is fixed by its fields, and building one with a
field its table lacks raises ``TypeError``.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Row")


class Row(Mapping):
    """Base of the row dataclasses: the table it lives in, its key, and which columns hold JSON."""

    TABLE: ClassVar[str]
    KEY: ClassVar[str]
    JSON: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The table's column names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_db(cls: type[R], row: sqlite3.Row) -> R:
        """Build a row from what SQLite returned (JSON columns decoded; unknown columns refused)."""
        values = {key: row[key] for key in row.keys()}
        for key in cls.JSON & values.keys():
            if values[key] is not None:
                values[key] = json.loads(values[key])
        return cls(**values)

    @classmethod
    def check_fields(cls, fields: Mapping[str, Any]) -> None:
        """Refuse column names the table does not have (an update naming a column by mistake)."""
        unknown = sorted(set(fields) - set(cls.columns()))
        if unknown:
            raise TypeError(f"{cls.TABLE} has no column(s) {', '.join(unknown)}")

    @classmethod
    def encode(cls, key: str, value: Any) -> Any:
        """The value as stored: JSON columns are serialised."""
        return json.dumps(value) if key in cls.JSON and value is not None else value

    def to_dict(self) -> dict[str, Any]:
        """A plain dict copy (for a page's table or a JSON answer)."""
        return {name: getattr(self, name) for name in self.columns()}

    def replace(self: R, **changes: Any) -> R:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def __getitem__(self, key: str) -> Any:
        if key not in self.columns():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns())

    def __len__(self) -> int:
        return len(self.columns())


@dataclass(frozen=True, eq=False)
class User(Row):
    """A user as readers see it (the password hash never leaves the store)."""

    TABLE: ClassVar[str] = "users"
    KEY: ClassVar[str] = "username"

    username: str
    role: str
    created_at: float
    token_version: int = 0


@dataclass(frozen=True, eq=False)
class Session(Row):
    """A UI sign-in session; only a hash of the browser's token is kept."""

    TABLE: ClassVar[str] = "sessions"
    KEY: ClassVar[str] = "token_hash"

    token_hash: str
    username: str
    role: str
    created_at: float
    last_seen: float
    revoked_at: float | None = None


@dataclass(frozen=True, eq=False)
class Job(Row):
    """A background job: the truth about its state (see ``services.jobs.runtime``)."""

    TABLE: ClassVar[str] = "jobs"
    KEY: ClassVar[str] = "id"
    JSON: ClassVar[frozenset[str]] = frozenset({"params", "progress", "history", "result"})

    id: str
    kind: str
    params: dict
    created_by: str | None
    status: str
    created_at: float
    progress: dict | None = None
    history: list = field(default_factory=list)
    result: Any = None
    error: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    dataset: str | None = None
    reserved_bytes: int = 0
    shape: str = "single"


def job_dataset(params: dict) -> str | None:
    """The catalog dataset a job reads or writes, as its params name it (the ``jobs.dataset`` column).

    A run names an HDF5 file of ``DATA_DIR/datasets`` (``hdf5_path``, when its ``dataset`` kind is hdf5, the
    default of rows written before the kind was recorded); an import or a generation names the dataset it
    writes (``name``). Catalog datasets lie directly in that folder (``<name>.hdf5``), so the path is read as
    written: a file in a subfolder is no catalog dataset, and ``..`` never reaches a job (requests refuse it).
    """
    raw = params.get("hdf5_path")
    if isinstance(raw, str) and params.get("dataset", "hdf5") == "hdf5":
        path = PurePosixPath(raw)
        return path.stem if len(path.parts) == 1 and path.suffix == ".hdf5" else None
    name = params.get("name")
    return name if isinstance(name, str) else None


def job_reserved_bytes(params: dict) -> int:
    """The disk a job's params reserve at submission (a generation's estimate; the ``jobs.reserved_bytes`` column)."""
    value = params.get("reserved_bytes", 0)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


@dataclass(frozen=True, eq=False)
class CatalogObject(Row):
    """A cut-out object (a PNG under ``objects/<class_name>/``)."""

    TABLE: ClassVar[str] = "objects"
    KEY: ClassVar[str] = "id"
    JSON: ClassVar[frozenset[str]] = frozenset({"bbox"})

    id: str
    class_name: str
    path: str
    created_at: float
    source: str | None = None
    bbox: list | None = None
    width: int | None = None
    height: int | None = None
    created_by: str | None = None


@dataclass(frozen=True, eq=False)
class Dataset(Row):
    """A dataset file under ``datasets/`` (generated, imported or uploaded)."""

    TABLE: ClassVar[str] = "datasets"
    KEY: ClassVar[str] = "id"
    JSON: ClassVar[frozenset[str]] = frozenset({"class_names", "counts", "config", "thumbnails"})

    id: str
    path: str
    created_at: float
    job_id: str | None = None
    image_size: int | None = None
    class_names: list | None = None
    counts: dict | None = None
    config: dict | None = None
    created_by: str | None = None
    kind: str = "hdf5"
    origin: str = "generated"
    size_bytes: int | None = None
    thumbnails: list | None = None
    mirror_symmetric: int = 0


@dataclass(frozen=True, eq=False)
class Model(Row):
    """A trained model's checkpoint."""

    TABLE: ClassVar[str] = "models"
    KEY: ClassVar[str] = "id"
    JSON: ClassVar[frozenset[str]] = frozenset({"class_names", "metrics"})

    id: str
    model_name: str
    path: str
    created_at: float
    job_id: str | None = None
    class_names: list | None = None
    multi_label: int = 0
    metrics: dict | None = None
    active: int = 0
    created_by: str | None = None


@dataclass(frozen=True, eq=False)
class Image(Row):
    """An annotated image under ``newdata/images/``; ``labels`` is the truth about its confirmed labels."""

    TABLE: ClassVar[str] = "images"
    KEY: ClassVar[str] = "id_name"
    JSON: ClassVar[frozenset[str]] = frozenset({"gps", "predict_tags", "labels"})

    id_name: str
    path: str
    uploaded_at: float
    width: int | None = None
    height: int | None = None
    uploaded_by: str | None = None
    exif_date: str | None = None
    gps: Any = None
    latitude: float | None = None
    longitude: float | None = None
    altitude: float | None = None
    predict_tags: list | None = None
    labels: list | None = None
    labelled_by: str | None = None
    labelled_at: float | None = None


ROW_TYPES: tuple[type[Row], ...] = (User, Session, Job, CatalogObject, Dataset, Model, Image)
