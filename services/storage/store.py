"""The catalog: a SQLite database in DATA_DIR (WAL mode, schema version, forward-only migrations).

One connection per thread and process (sqlite3 connections must not cross threads or a fork); one
transaction per operation.
Rows that point at files are written after the file is in place, so a crash leaves no row without a file.
Each table's row is a dataclass of ``services.storage.rows``; the methods take and return those, and every listing
filters, orders and pages in SQL (``MIGRATIONS`` holds the indexes they use).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from werkzeug.security import check_password_hash, generate_password_hash

from services.platform.config import ROLES
from services.storage.rows import (
    CatalogObject,
    Dataset,
    Image,
    Job,
    Model,
    Row,
    Session,
    User,
    job_dataset,
    job_reserved_bytes,
)

R = TypeVar("R", bound=Row)
T = TypeVar("T")


def _backfill_job_facts(conn: sqlite3.Connection) -> None:
    """Fill the dataset and reserved-disk columns of the jobs recorded before they existed, from their params
    (by the same rules as :meth:`Store.create_job`)."""
    for job_id, raw in conn.execute("SELECT id, params FROM jobs").fetchall():
        params = json.loads(raw) if raw else {}
        params = params if isinstance(params, dict) else {}
        conn.execute("UPDATE jobs SET dataset = ?, reserved_bytes = ? WHERE id = ?",
                     (job_dataset(params), job_reserved_bytes(params), job_id))


# Forward-only: each step is SQL, or a function of the connection (a backfill that SQL alone cannot write).
MIGRATIONS: tuple[str | Callable[[sqlite3.Connection], None], ...] = (
    """
    CREATE TABLE users (
        username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL, created_at REAL NOT NULL);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, params TEXT NOT NULL, created_by TEXT,
        status TEXT NOT NULL, progress TEXT, history TEXT NOT NULL DEFAULT '[]', result TEXT, error TEXT,
        created_at REAL NOT NULL, started_at REAL, ended_at REAL);
    CREATE INDEX jobs_kind_status ON jobs(kind, status);
    CREATE TABLE objects (
        id TEXT PRIMARY KEY, class_name TEXT NOT NULL, path TEXT NOT NULL, source TEXT, bbox TEXT,
        width INTEGER, height INTEGER, created_by TEXT, created_at REAL NOT NULL);
    CREATE INDEX objects_class ON objects(class_name);
    CREATE TABLE datasets (
        id TEXT PRIMARY KEY, path TEXT NOT NULL, job_id TEXT, image_size INTEGER, class_names TEXT,
        counts TEXT, config TEXT, created_by TEXT, created_at REAL NOT NULL);
    CREATE TABLE models (
        id TEXT PRIMARY KEY, model_name TEXT NOT NULL, job_id TEXT, path TEXT NOT NULL, class_names TEXT,
        multi_label INTEGER NOT NULL DEFAULT 0, metrics TEXT, active INTEGER NOT NULL DEFAULT 0,
        created_by TEXT, created_at REAL NOT NULL);
    CREATE TABLE images (
        id_name TEXT PRIMARY KEY, path TEXT NOT NULL, width INTEGER, height INTEGER,
        uploaded_by TEXT, uploaded_at REAL NOT NULL, exif_date TEXT, gps TEXT,
        latitude REAL, longitude REAL, altitude REAL, predict_tags TEXT,
        labels TEXT, labelled_by TEXT, labelled_at REAL);
    """,
    """
    ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE revoked_tokens (jti TEXT PRIMARY KEY, expires_at REAL NOT NULL);
    """,
    # UI sign-in sessions: only a hash of the browser's token is kept, so a copy of the catalog signs nobody in.
    """
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY, username TEXT NOT NULL, role TEXT NOT NULL, created_at REAL NOT NULL,
        last_seen REAL NOT NULL, revoked_at REAL);
    CREATE INDEX sessions_user ON sessions(username);
    """,
    # Datasets users bring: what kind of data, where it came from, its size and a few sample picks.
    """
    ALTER TABLE datasets ADD COLUMN kind TEXT NOT NULL DEFAULT 'hdf5';
    ALTER TABLE datasets ADD COLUMN origin TEXT NOT NULL DEFAULT 'generated';
    ALTER TABLE datasets ADD COLUMN size_bytes INTEGER;
    ALTER TABLE datasets ADD COLUMN thumbnails TEXT;
    """,
    # The listings the pages and the API page through: newest or oldest first, by uploader, the unlabelled
    # queue, a user's jobs and one kind's jobs.
    """
    CREATE INDEX images_uploaded ON images(uploaded_at);
    CREATE INDEX images_uploader ON images(uploaded_by, uploaded_at);
    CREATE INDEX images_unlabelled ON images(uploaded_at) WHERE labels IS NULL;
    CREATE INDEX jobs_created ON jobs(created_at);
    CREATE INDEX jobs_owner ON jobs(created_by, created_at);
    CREATE INDEX jobs_kind_created ON jobs(kind, created_at);
    """,
    # The facts about a job that callers query, as columns: the dataset it reads or writes, the disk it reserved,
    # its shape (a chain's parent runs only once its members ended). Quotas, dataset deletion and the readers of
    # a job ask them in SQL instead of decoding every row's params.
    """
    ALTER TABLE jobs ADD COLUMN dataset TEXT;
    ALTER TABLE jobs ADD COLUMN reserved_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN shape TEXT NOT NULL DEFAULT 'single';
    UPDATE jobs SET shape = 'chain' WHERE kind = 'tune';
    CREATE INDEX jobs_owner_status ON jobs(created_by, status);
    CREATE INDEX jobs_status_reserved ON jobs(status, reserved_bytes);
    CREATE INDEX jobs_dataset_status ON jobs(dataset, status);
    """,
    _backfill_job_facts,
    # Whether a dataset's classes look the same mirrored: only then may its runs flip images (augment).
    """
    ALTER TABLE datasets ADD COLUMN mirror_symmetric INTEGER NOT NULL DEFAULT 0;
    """,
)

IMAGE_ORDERS = {"newest": "uploaded_at DESC, id_name", "oldest": "uploaded_at ASC, id_name", "id": "id_name"}


@dataclass(frozen=True)
class ImageQuery:
    """What callers ask of the images: filters (None means any), an order and a page.

    Attributes:
        uploaded_by: only this user's uploads.
        labelled: True only labelled images, False only the unlabelled queue.
        label: only images whose confirmed labels include this one.
        labelled_after: only images whose labels were saved after this time (seconds since the epoch).
        order: ``newest`` or ``oldest`` upload first, or ``id`` (plain string order).
        limit: at most this many rows (None: all).
        offset: skip this many rows first.
    """

    uploaded_by: str | None = None
    labelled: bool | None = None
    label: str | None = None
    labelled_after: float | None = None
    order: str = "newest"
    limit: int | None = 1000
    offset: int = 0

    def where(self) -> tuple[str, tuple]:
        """The SQL condition and its arguments."""
        terms, args = [], []
        if self.uploaded_by is not None:
            terms.append("uploaded_by = ?")
            args.append(self.uploaded_by)
        if self.labelled is not None:
            terms.append("labels IS NOT NULL" if self.labelled else "labels IS NULL")
        if self.label is not None:
            # instr() on the stored JSON text is a cheap first pass; json_each() then checks the element exactly.
            terms.append("instr(labels, ?) > 0 AND EXISTS (SELECT 1 FROM json_each(images.labels) WHERE value = ?)")
            args.extend([json.dumps(self.label), self.label])
        if self.labelled_after is not None:
            terms.append("labels IS NOT NULL AND labelled_at > ?")
            args.append(self.labelled_after)
        return " AND ".join(terms), tuple(args)

    def order_by(self) -> str:
        assert self.order in IMAGE_ORDERS, self.order
        return IMAGE_ORDERS[self.order]

class Store:
    """Typed access to the catalog tables."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = _os_thread_local()

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened once (and again in a forked child, which must not share it)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            local.conn.row_factory = sqlite3.Row
            local.conn.execute("PRAGMA busy_timeout = 30000")
            local.conn.execute("PRAGMA foreign_keys = ON")
            local.pid = os.getpid()
        return local.conn

    @contextmanager
    def connect(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """A connection in one transaction: committed on success, rolled back on error.

        Writers take the write lock up front (``BEGIN IMMEDIATE``) so two writers never deadlock on an
        upgrade; readers use a deferred transaction and, in WAL mode, never wait for a writer.
        """
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def migrate(self) -> int:
        """Bring the schema up to date; returns the schema version."""
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        finally:
            conn.close()
        with self.connect() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                _run_migration(conn, script)
                conn.execute(f"PRAGMA user_version = {number}")
            return len(MIGRATIONS)

    # --- generic helpers -------------------------------------------------------------------------
    def _insert(self, row: Row) -> None:
        names = row.columns()
        sql = f"INSERT INTO {row.TABLE} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
        with self.connect() as conn:
            conn.execute(sql, [row.encode(k, getattr(row, k)) for k in names])

    def _update(self, kind: type[Row], key_value: str, fields: dict) -> bool:
        """Change some columns of one row; False when there is no such row."""
        kind.check_fields(fields)
        if not fields:
            return self._get(kind, key_value) is not None
        sets = ", ".join(f"{k} = ?" for k in fields)
        values = [kind.encode(k, v) for k, v in fields.items()] + [key_value]
        with self.connect() as conn:
            return conn.execute(f"UPDATE {kind.TABLE} SET {sets} WHERE {kind.KEY} = ?", values).rowcount == 1

    def _get(self, kind: type[R], key_value: str) -> R | None:
        rows = self._select(kind, f"{kind.KEY} = ?", (key_value,), limit=1)
        return rows[0] if rows else None

    def _delete(self, kind: type[Row], key_value: str) -> bool:
        with self.connect() as conn:
            return conn.execute(f"DELETE FROM {kind.TABLE} WHERE {kind.KEY} = ?", (key_value,)).rowcount == 1

    def _select(self, kind: type[R], where: str = "", args: tuple = (), order: str = "",
                limit: int | None = None, offset: int = 0) -> list[R]:
        """Rows of one table; ``where``/``order`` are SQL written in this module, never user text."""
        sql = f"SELECT * FROM {kind.TABLE}" + (f" WHERE {where}" if where else "")
        sql += f" ORDER BY {order}" if order else ""
        if limit is not None:
            sql, args = sql + " LIMIT ? OFFSET ?", (*args, int(limit), int(offset))
        with self.connect(write=False) as conn:
            return [kind.from_db(r) for r in conn.execute(sql, args).fetchall()]

    def _count(self, table: str, where: str = "", args: tuple = ()) -> int:
        with self.connect(write=False) as conn:
            return conn.execute(f"SELECT COUNT(*) FROM {table}" + (f" WHERE {where}" if where else ""),
                                args).fetchone()[0]

    @staticmethod
    def _equal(filters: dict) -> tuple[str, tuple]:
        """An AND of ``column = ?`` over the filters that are set (None means "any")."""
        active = {k: v for k, v in filters.items() if v is not None}
        return " AND ".join(f"{k} = ?" for k in active), tuple(active.values())

    # --- users -----------------------------------------------------------------------------------
    def create_user(self, username: str, password: str, role: str) -> None:
        """Add a user with a scrypt-hashed password; raises ValueError on a bad role or a taken name."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; known: {', '.join(ROLES)}")
        if not username or len(username) > 64 or not username.replace("_", "").replace("-", "").isalnum():
            raise ValueError("username must be 1-64 letters, digits, '_' or '-'")
        if len(password) < 8:
            raise ValueError("password must have at least 8 characters")
        if self.get_user(username):
            raise ValueError(f"user {username!r} exists")
        with self.connect() as conn:  # the hash is no field of User: readers never see it
            conn.execute("INSERT INTO users (username, password_hash, role, created_at, token_version) "
                         "VALUES (?, ?, ?, ?, ?)",
                         (username, generate_password_hash(password), role, time.time(), first_token_version()))

    def get_user(self, username: str) -> User | None:
        """The user's name, role, creation time and token version (None if there is no such user)."""
        with self.connect(write=False) as conn:
            row = conn.execute("SELECT username, role, created_at, token_version FROM users WHERE username = ?",
                               (username,)).fetchone()
        return None if row is None else User.from_db(row)

    def check_password(self, username: str, password: str) -> User | None:
        """The user when the password matches, else None.

        An unknown user costs one scrypt verification too, against a dummy hash, so the answer's timing
        does not tell which usernames exist.
        """
        with self.connect(write=False) as conn:
            row = conn.execute("SELECT password_hash FROM users WHERE username = ?", (username,)).fetchone()
        if row is None:
            check_password_hash(_dummy_hash(), password)
            return None
        if not check_password_hash(row["password_hash"], password):
            return None
        return self.get_user(username)

    def list_users(self) -> list[User]:
        """Every user, by name."""
        with self.connect(write=False) as conn:
            rows = conn.execute("SELECT username, role, created_at, token_version FROM users ORDER BY username")
            return [User.from_db(r) for r in rows.fetchall()]

    def count_users(self) -> int:
        with self.connect(write=False) as conn:
            return conn.execute("SELECT COUNT(*) FROM users").fetchone()[0]

    def set_role(self, username: str, role: str) -> bool:
        """Change a user's role and revoke their tokens; False if there is no such user."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; known: {', '.join(ROLES)}")
        return self._change_user(username, "role = ?", (role,))

    def set_password(self, username: str, password: str) -> bool:
        """Replace a user's password and revoke their tokens; False if there is no such user."""
        return self._change_user(username, "password_hash = ?", (generate_password_hash(password),))

    def revoke_user_tokens(self, username: str) -> bool:
        """Invalidate every token issued to the user so far."""
        return self._change_user(username, "", ())

    def delete_user(self, username: str) -> bool:
        """Remove a user (their tokens die with the row, their UI sessions end); False if there was none.

        An account made later under the same name starts at another random token version
        (:func:`first_token_version`), so these tokens do not come back to life with it.
        """
        with self.connect() as conn:
            _end_sessions(conn, username)
            return conn.execute("DELETE FROM users WHERE username = ?", (username,)).rowcount == 1

    def _change_user(self, username: str, assignment: str, args: tuple) -> bool:
        """Apply a change to a user, revoking every token and UI session they hold, in one transaction."""
        sets = f"{assignment}, " if assignment else ""
        with self.connect() as conn:
            cur = conn.execute(f"UPDATE users SET {sets}token_version = token_version + 1 WHERE username = ?",
                               (*args, username))
            _end_sessions(conn, username)
            return cur.rowcount == 1

    def revoke_token(self, jti: str, expires_at: float) -> None:
        """Refuse one token (a logout) until it would have expired anyway; expired entries are pruned."""
        with self.connect() as conn:
            conn.execute("DELETE FROM revoked_tokens WHERE expires_at < ?", (time.time(),))
            conn.execute("INSERT OR REPLACE INTO revoked_tokens (jti, expires_at) VALUES (?, ?)", (jti, expires_at))

    def is_token_revoked(self, jti: str) -> bool:
        with self.connect(write=False) as conn:
            return conn.execute("SELECT 1 FROM revoked_tokens WHERE jti = ?", (jti,)).fetchone() is not None

    # --- sessions ------------------------------------------------------------------------------
    def add_session(self, session: Session) -> None:
        """Record a UI sign-in session."""
        self._insert(session)

    def get_session(self, token_hash: str) -> Session | None:
        return self._get(Session, token_hash)

    def touch_session(self, token_hash: str, now: float) -> None:
        """Note that a session was used at ``now`` (idle sessions expire)."""
        self._update(Session, token_hash, {"last_seen": now})

    def revoke_session(self, token_hash: str, now: float) -> None:
        """End one session (a sign-out); an already ended one keeps its first end time."""
        with self.connect() as conn:
            conn.execute("UPDATE sessions SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
                         (now, token_hash))

    # --- jobs ------------------------------------------------------------------------------------
    # The writers (create_job, update_job, append_history) belong to the job runtime (services.jobs.runtime):
    # nothing else writes a job's row (tests/services/test_job_runtime.py checks).
    def create_job(self, job_id: str, kind: str, params: dict, created_by: str | None, shape: str = "single") -> None:
        """Record a queued job; the facts its params state (dataset, reserved disk) fill their columns."""
        self._insert(Job(id=job_id, kind=kind, params=params, created_by=created_by, status="queued",
                         created_at=time.time(), dataset=job_dataset(params),
                         reserved_bytes=job_reserved_bytes(params), shape=shape))

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Change some columns of a job (``TypeError`` for a column jobs do not have)."""
        self._update(Job, job_id, fields)

    def append_history(self, job_id: str, metrics: dict) -> None:
        """Append one epoch's metrics to the job's history (atomically, in SQL)."""
        with self.connect() as conn:
            conn.execute("UPDATE jobs SET history = json_insert(history, '$[#]', json(?)) WHERE id = ?",
                         (json.dumps(metrics), job_id))

    def get_job(self, job_id: str) -> Job | None:
        return self._get(Job, job_id)

    def list_jobs(self, kind: str | None = None, status: Statuses = None, created_by: str | None = None,
                  limit: int = 100, offset: int = 0, *, dataset: str | None = None) -> list[Job]:
        """Jobs, newest first, filtered and paged in SQL.

        Args:
            status: one status, or any of several.
            dataset: only jobs that read or write this catalog dataset.
        """
        where, args = _job_filter(kind, status, created_by, dataset)
        return self._select(Job, where, args, "created_at DESC, id", limit, offset)

    def count_jobs(self, kind: str | None = None, status: Statuses = None, created_by: str | None = None) -> int:
        """How many jobs match (``status``: one, or any of several)."""
        where, args = _job_filter(kind, status, created_by, None)
        return self._count("jobs", where, args)

    def reserved_bytes(self, statuses: tuple[str, ...], but: str | None = None) -> int:
        """The disk that jobs in ``statuses`` have reserved, all but job ``but`` (summed in SQL)."""
        where, args = _job_filter(None, statuses, None, None)
        with self.connect(write=False) as conn:
            return conn.execute(f"SELECT COALESCE(SUM(reserved_bytes), 0) FROM jobs WHERE {where} AND id IS NOT ?",
                                (*args, but)).fetchone()[0]

    def job_kinds(self, created_by: str | None = None) -> list[str]:
        """The kinds of the jobs there are (of one user's jobs when ``created_by`` is set), sorted."""
        where, args = self._equal({"created_by": created_by})
        with self.connect(write=False) as conn:
            rows = conn.execute("SELECT DISTINCT kind FROM jobs" + (f" WHERE {where}" if where else "")
                                + " ORDER BY kind", args).fetchall()
        return [r[0] for r in rows]

    # --- objects ---------------------------------------------------------------------------------
    def add_object(self, obj: CatalogObject) -> None:
        self._insert(obj)

    def get_object(self, object_id: str) -> CatalogObject | None:
        return self._get(CatalogObject, object_id)

    def update_object(self, object_id: str, **fields: Any) -> None:
        self._update(CatalogObject, object_id, fields)

    def delete_object(self, object_id: str) -> None:
        self._delete(CatalogObject, object_id)

    def list_objects(self, class_name: str | None = None, source: str | None = None,
                     limit: int = 1000, offset: int = 0) -> list[CatalogObject]:
        """Objects, newest first; ``None`` filters mean any."""
        where, args = self._equal({"class_name": class_name, "source": source})
        return self._select(CatalogObject, where, args, "created_at DESC, id", limit, offset)

    def object_class_counts(self) -> dict[str, int]:
        """Number of objects per class, by class name."""
        with self.connect(write=False) as conn:
            rows = conn.execute("SELECT class_name, COUNT(*) FROM objects GROUP BY class_name ORDER BY class_name")
            return {name: count for name, count in rows.fetchall()}

    # --- datasets --------------------------------------------------------------------------------
    def add_dataset(self, dataset: Dataset) -> None:
        self._insert(dataset)

    def get_dataset(self, dataset_id: str) -> Dataset | None:
        return self._get(Dataset, dataset_id)

    def update_dataset(self, dataset_id: str, **fields: Any) -> bool:
        """Change some fields of a dataset's row; False when there is no such dataset."""
        return self._update(Dataset, dataset_id, fields)

    def delete_dataset(self, dataset_id: str) -> None:
        self._delete(Dataset, dataset_id)

    def list_datasets(self, limit: int = 1000, offset: int = 0) -> list[Dataset]:
        """Datasets, newest first."""
        return self._select(Dataset, "", (), "created_at DESC, id", limit, offset)

    # --- models ----------------------------------------------------------------------------------
    def add_model(self, model: Model) -> None:
        self._insert(model)

    def get_model(self, model_id: str) -> Model | None:
        return self._get(Model, model_id)

    def update_model(self, model_id: str, **fields: Any) -> None:
        self._update(Model, model_id, fields)

    def delete_model(self, model_id: str) -> None:
        self._delete(Model, model_id)

    def list_models(self, active: bool | None = None, multi_label: bool | None = None,
                    limit: int = 1000, offset: int = 0) -> list[Model]:
        """Models, newest first; ``None`` filters mean any."""
        where, args = self._equal({"active": None if active is None else int(active),
                                   "multi_label": None if multi_label is None else int(multi_label)})
        return self._select(Model, where, args, "created_at DESC, id", limit, offset)

    def list_models_made_from(self, dataset: str, limit: int = 1000) -> list[Model]:
        """Models whose training job read the catalog dataset ``dataset``, newest first (a subquery on jobs)."""
        return self._select(Model, "job_id IN (SELECT id FROM jobs WHERE dataset = ?)", (dataset,),
                            "created_at DESC, id", limit)

    def list_models_trained_by(self, job_kind: str, multi_label: bool | None = None,
                               limit: int = 1000) -> list[Model]:
        """Models whose training job was of ``job_kind``, newest first (the job filter is a subquery)."""
        where, args = self._equal({"multi_label": None if multi_label is None else int(multi_label)})
        owned = "job_id IN (SELECT id FROM jobs WHERE kind = ?)"
        return self._select(Model, f"{where} AND {owned}" if where else owned, (*args, job_kind),
                            "created_at DESC, id", limit)

    def set_active_model(self, model_id: str) -> None:
        """Mark one model active; the others of the same kind (single/multi-label) become inactive."""
        with self.connect() as conn:
            row = conn.execute("SELECT multi_label FROM models WHERE id = ?", (model_id,)).fetchone()
            if row is None:
                raise KeyError(model_id)
            conn.execute("UPDATE models SET active = 0 WHERE multi_label = ?", (row[0],))
            conn.execute("UPDATE models SET active = 1 WHERE id = ?", (model_id,))

    # --- images ----------------------------------------------------------------------------------
    def get_image(self, id_name: str) -> Image | None:
        return self._get(Image, id_name)

    def put_image(self, image: Image, then: Callable[[], None] = lambda: None) -> None:
        """Insert an image, or replace every field of the one stored under its id (an overwrite).

        ``then`` (which may remove a copy derived from the old row) runs inside the transaction, under the
        catalog's write lock, so no label save (:meth:`label_image`) lands between the two.
        """
        names = image.columns()
        sql = (f"INSERT OR REPLACE INTO images ({', '.join(names)}) "
               f"VALUES ({', '.join('?' for _ in names)})")
        with self.connect() as conn:
            conn.execute(sql, [image.encode(k, getattr(image, k)) for k in names])
            then()

    def update_image(self, id_name: str, **fields: Any) -> None:
        self._update(Image, id_name, fields)

    def list_images(self, query: ImageQuery = ImageQuery()) -> list[Image]:
        """Images matching ``query``, ordered and paged in SQL."""
        where, args = query.where()
        return self._select(Image, where, args, query.order_by(), query.limit, query.offset)

    def count_images(self, query: ImageQuery = ImageQuery()) -> int:
        where, args = query.where()
        return self._count("images", where, args)

    def label_image(self, id_name: str, choose: Callable[[], list[str]], labelled_by: str | None,
                    then: Callable[[Image], None] = lambda image: None) -> Image | None:
        """Confirm an image's labels under the catalog's write lock; None when there is no such image.

        ``choose`` (which validates against the label set) and ``then`` (which may write a derived copy)
        run inside the transaction, so a label-set edit (:meth:`edit_label_set`) never interleaves with
        them, and a failing ``then`` leaves the catalog unchanged.
        """
        with self.connect() as conn:
            labels = choose()
            cur = conn.execute("UPDATE images SET labels = ?, labelled_by = ?, labelled_at = ? WHERE id_name = ?",
                               (json.dumps(labels), labelled_by, time.time(), id_name))
            if cur.rowcount != 1:
                return None
            image = Image.from_db(conn.execute("SELECT * FROM images WHERE id_name = ?", (id_name,)).fetchone())
            then(image)
            return image

    def edit_label_set(self, write: Callable[[set[str]], T]) -> T:
        """Run ``write(labels in use)`` under the catalog's write lock, so no image gains a label meanwhile."""
        with self.connect() as conn:
            return write(_labels_in_use(conn))

    def labels_in_use(self) -> set[str]:
        """Every label that some image carries."""
        with self.connect(write=False) as conn:
            return _labels_in_use(conn)

    def count_rows(self, table: str) -> int:
        """Number of rows of a table (the home page's figures)."""
        assert table in {"objects", "datasets", "models", "images", "jobs"}, table
        return self._count(table)


TOKEN_VERSION_FLOOR = 2**32  # above any version an account that counted up from 0 (before random starts) reached
TOKEN_VERSION_SPAN = 2**52  # FLOOR + SPAN < 2**53: the claim stays an exact number in any JSON reader


def first_token_version() -> int:
    """A new account's first token version: random, so no token of an earlier account of the same name matches.

    A deleted account's tokens carry its versions: counted up from 0 by accounts made before versions
    started at random (all below :data:`TOKEN_VERSION_FLOOR`), or from another random start. Two random
    starts within a few thousand bumps of each other have odds of about one in 2**40.
    """
    return TOKEN_VERSION_FLOOR + secrets.randbelow(TOKEN_VERSION_SPAN)


def _os_thread_local() -> threading.local:
    """Storage per operating-system thread, also where gevent made ``threading.local`` per greenlet.

    The API runs under gevent, where a greenlet serves each request and each Socket.IO event: a connection
    per greenlet opened one for every request and event, and SQLite keeps a closed connection's files open
    while another connection of the process holds locks on them, so a burst of events ran the process out of
    file descriptors. The greenlets of one thread may share its connection: a call into SQLite never yields
    to another greenlet, and no transaction of this module does anything that yields inside ``connect()``.
    """
    try:
        from gevent import monkey
    except ImportError:
        return threading.local()
    if monkey.is_module_patched("threading"):
        return monkey.get_original("threading", "local")()
    return threading.local()


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return generate_password_hash(secrets.token_urlsafe(16))


def _end_sessions(conn: sqlite3.Connection, username: str) -> None:
    conn.execute("UPDATE sessions SET revoked_at = ? WHERE username = ? AND revoked_at IS NULL",
                 (time.time(), username))


Statuses = str | tuple[str, ...] | None


def _job_filter(kind: str | None, status: Statuses, created_by: str | None, dataset: str | None) -> tuple[str, tuple]:
    """The SQL condition of a job listing: equal columns, and ``status`` one of several when a tuple."""
    several = isinstance(status, tuple)
    active = {k: v for k, v in {"kind": kind, "status": None if several else status, "created_by": created_by,
                                "dataset": dataset}.items() if v is not None}
    terms, args = [f"{k} = ?" for k in active], list(active.values())
    if several:
        terms.append(f"status IN ({', '.join('?' for _ in status)})")
        args.extend(status)
    return " AND ".join(terms), tuple(args)


def _run_migration(conn: sqlite3.Connection, script: str | Callable[[sqlite3.Connection], None]) -> None:
    """One step of ``MIGRATIONS``: SQL statements, or a function for what SQL alone cannot say."""
    if callable(script):
        script(conn)
        return
    for statement in filter(str.strip, script.split(";")):
        conn.execute(statement)


def _labels_in_use(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT DISTINCT j.value FROM images, json_each(images.labels) AS j "
                        "WHERE images.labels IS NOT NULL").fetchall()
    return {r[0] for r in rows}


def open_store(data_dir: Path) -> Store:
    """The catalog of a data folder, migrated, readable by its owner only (it holds password hashes)."""
    path = Path(data_dir) / "catalog.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    store = Store(path)
    store.migrate()
    for suffix in ("", "-wal", "-shm"):  # SQLite gives its -wal/-shm the database's mode; older ones may differ
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            os.chmod(companion, 0o600)
    return store
