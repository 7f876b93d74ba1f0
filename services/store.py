"""The catalog: a SQLite database in DATA_DIR (WAL mode, schema version, forward-only migrations).

One connection per thread and process (sqlite3 connections must not cross threads or a fork); one
transaction per operation.
Rows that point at files are written after the file is in place, so a crash leaves no row without a file.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from werkzeug.security import check_password_hash, generate_password_hash

from services.config import ROLES

MIGRATIONS: tuple[str, ...] = (
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
)

JSON_COLUMNS = frozenset({"params", "progress", "history", "result", "bbox", "class_names", "counts",
                          "config", "metrics", "gps", "predict_tags", "labels", "thumbnails"})


def _decode(row: sqlite3.Row | None) -> dict | None:
    if row is None:
        return None
    out = dict(row)
    for key in JSON_COLUMNS & out.keys():
        if out[key] is not None:
            out[key] = json.loads(out[key])
    return out


def _encode(value: Any, key: str) -> Any:
    return json.dumps(value) if key in JSON_COLUMNS and value is not None else value


class Store:
    """Typed access to the catalog tables."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

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
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            return len(MIGRATIONS)

    # --- generic helpers -------------------------------------------------------------------------
    def _insert(self, table: str, row: dict) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.connect() as conn:
            conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", [_encode(v, k) for k, v in row.items()])

    def _update(self, table: str, key: str, key_value: str, fields: dict) -> None:
        if not fields:
            return
        sets = ", ".join(f"{k} = ?" for k in fields)
        values = [_encode(v, k) for k, v in fields.items()] + [key_value]
        with self.connect() as conn:
            conn.execute(f"UPDATE {table} SET {sets} WHERE {key} = ?", values)

    def _one(self, sql: str, args: tuple = ()) -> dict | None:
        with self.connect(write=False) as conn:
            return _decode(conn.execute(sql, args).fetchone())

    def _all(self, sql: str, args: tuple = ()) -> list[dict]:
        with self.connect(write=False) as conn:
            return [_decode(r) for r in conn.execute(sql, args).fetchall()]

    @staticmethod
    def _where(filters: dict) -> tuple[str, tuple]:
        active = {k: v for k, v in filters.items() if v is not None}
        if not active:
            return "", ()
        return " WHERE " + " AND ".join(f"{k} = ?" for k in active), tuple(active.values())

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
        self._insert("users", {"username": username, "password_hash": generate_password_hash(password),
                               "role": role, "created_at": time.time()})

    def get_user(self, username: str) -> dict | None:
        """The user's name, role, creation time and token version (None if there is no such user)."""
        return self._one("SELECT username, role, created_at, token_version FROM users WHERE username = ?",
                         (username,))

    def check_password(self, username: str, password: str) -> dict | None:
        """The user when the password matches, else None.

        An unknown user costs one scrypt verification too, against a dummy hash, so the answer's timing
        does not tell which usernames exist.
        """
        row = self._one("SELECT * FROM users WHERE username = ?", (username,))
        if row is None:
            check_password_hash(_dummy_hash(), password)
            return None
        if not check_password_hash(row["password_hash"], password):
            return None
        row.pop("password_hash")
        return row

    def list_users(self) -> list[dict]:
        return self._all("SELECT username, role, created_at FROM users ORDER BY username")

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
        """Remove a user (their tokens die with the row, their UI sessions end); False if there was none."""
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
        return self._one("SELECT jti FROM revoked_tokens WHERE jti = ?", (jti,)) is not None

    # --- jobs ------------------------------------------------------------------------------------
    def create_job(self, job_id: str, kind: str, params: dict, created_by: str | None) -> None:
        self._insert("jobs", {"id": job_id, "kind": kind, "params": params, "created_by": created_by,
                              "status": "queued", "created_at": time.time()})

    def update_job(self, job_id: str, **fields: Any) -> None:
        self._update("jobs", "id", job_id, fields)

    def append_history(self, job_id: str, metrics: dict) -> None:
        """Append one epoch's metrics to the job's history (atomically, in SQL)."""
        with self.connect() as conn:
            conn.execute("UPDATE jobs SET history = json_insert(history, '$[#]', json(?)) WHERE id = ?",
                         (json.dumps(metrics), job_id))

    def get_job(self, job_id: str) -> dict | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def list_jobs(self, kind: str | None = None, status: str | None = None, created_by: str | None = None,
                  limit: int = 100) -> list[dict]:
        where, args = self._where({"kind": kind, "status": status, "created_by": created_by})
        return self._all(f"SELECT * FROM jobs{where} ORDER BY created_at DESC LIMIT ?", args + (limit,))

    # --- objects, datasets, models, images -------------------------------------------------------
    def add_row(self, table: str, row: dict) -> None:
        """Insert a row into one of the feature tables (objects, datasets, models, images)."""
        assert table in {"objects", "datasets", "models", "images"}, table
        self._insert(table, {"created_at": time.time(), **row} if table != "images" else row)

    def update_row(self, table: str, key_value: str, **fields: Any) -> None:
        assert table in {"objects", "datasets", "models", "images"}, table
        self._update(table, "id_name" if table == "images" else "id", key_value, fields)

    def get_row(self, table: str, key_value: str) -> dict | None:
        assert table in {"objects", "datasets", "models", "images"}, table
        key = "id_name" if table == "images" else "id"
        return self._one(f"SELECT * FROM {table} WHERE {key} = ?", (key_value,))

    def list_rows(self, table: str, order: str = "created_at DESC", limit: int = 1000, **filters: Any) -> list[dict]:
        assert table in {"objects", "datasets", "models", "images"}, table
        assert order.replace(" DESC", "").replace(" ASC", "").isidentifier(), order
        where, args = self._where(filters)
        return self._all(f"SELECT * FROM {table}{where} ORDER BY {order} LIMIT ?", args + (limit,))

    def count_rows(self, table: str) -> int:
        assert table in {"objects", "datasets", "models", "images", "jobs"}, table
        with self.connect(write=False) as conn:
            return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    def delete_row(self, table: str, key_value: str) -> None:
        assert table in {"objects", "datasets", "models", "images"}, table
        key = "id_name" if table == "images" else "id"
        with self.connect() as conn:
            conn.execute(f"DELETE FROM {table} WHERE {key} = ?", (key_value,))

    def set_active_model(self, model_id: str) -> None:
        """Mark one model active; the others of the same kind (single/multi-label) become inactive."""
        with self.connect() as conn:
            row = conn.execute("SELECT multi_label FROM models WHERE id = ?", (model_id,)).fetchone()
            if row is None:
                raise KeyError(model_id)
            conn.execute("UPDATE models SET active = 0 WHERE multi_label = ?", (row[0],))
            conn.execute("UPDATE models SET active = 1 WHERE id = ?", (model_id,))


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return generate_password_hash(secrets.token_urlsafe(16))


def _end_sessions(conn: sqlite3.Connection, username: str) -> None:
    conn.execute("UPDATE sessions SET revoked_at = ? WHERE username = ? AND revoked_at IS NULL",
                 (time.time(), username))


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
