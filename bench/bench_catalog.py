"""Catalog benchmark: the Annotate page's listings and the Jobs page's list at 100,000 images and 10,000 jobs,
the catalog's query methods (filter, order and page in SQL, indexed) against the old way (load every row,
decode it, filter in Python).

Work, on a catalog filled in a temporary DATA_DIR (seeded: about half the images labelled with 1-3 of the
legacy pipeline's 34 labels; jobs of four kinds by five users, train jobs with a 10-epoch history):

* ``queue`` — the Annotate page's unlabelled queue: the 10 oldest unlabelled images and how many wait.
* ``label filter`` — the Annotate page's Browse tab filtered by one label (up to 1,000 newest).
* ``jobs list`` — the Jobs page as a client sees it: the kinds of their jobs and the 200 newest of one kind.

Each figure is the median of ``--repeats`` runs, old and new measured in the same process on the same file.

    .venv/bin/python bench/bench_catalog.py [--images 100000] [--jobs 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.labels import DEFAULT_LABELS  # noqa: E402
from services.app import annotation  # noqa: E402
from services.platform.config import Config  # noqa: E402
from services.storage.rows import Image, Job  # noqa: E402
from services.storage.store import Store, open_store  # noqa: E402

KINDS = ("train", "generate", "tune", "import_dataset")
USERS = ("op", "ann", "client1", "client2", "admin")
QUEUE_SHOWN, BROWSE_LIMIT, JOBS_SHOWN = 10, 1000, 200


def fill(store: Store, n_images: int, n_jobs: int, seed: int = 0) -> None:
    """Write the images and jobs in one transaction each (seeded)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_images):
        labels = rng.sample(DEFAULT_LABELS, rng.randint(1, 3)) if rng.random() < 0.5 else None
        gps = rng.random() < 0.2
        rows.append(Image(id_name=f"img{i:06d}", path=f"newdata/images/img{i:06d}.jpg", uploaded_at=1e9 + i,
                          width=640, height=480, uploaded_by=rng.choice(USERS), exif_date="2019:08:03 14:41:10",
                          latitude=28.8 if gps else None, longitude=-81.3 if gps else None,
                          predict_tags=rng.sample(DEFAULT_LABELS, 3), labels=labels,
                          labelled_by="ann" if labels is not None else None,
                          labelled_at=2e9 + i if labels is not None else None))
    _insert_all(store, rows)
    jobs = []
    for i in range(n_jobs):
        kind = rng.choice(KINDS)
        history = [{"epoch": e, "epochs": 10, "train_loss": rng.random(), "train_accuracy": rng.random(),
                    "test_loss": rng.random(), "test_accuracy": rng.random(), "best_accuracy": rng.random()}
                   for e in range(1, 11)] if kind == "train" else []
        jobs.append(Job(id=f"job{i:05d}", kind=kind, params={"model_name": "convnetj", "epochs": 10, "lr": 0.01},
                        created_by=rng.choice(USERS), status="finished", created_at=1e9 + i,
                        progress={"done": 10, "total": 10, "fraction": 1.0}, history=history,
                        result={"best_accuracy": rng.random()}, started_at=1e9 + i, ended_at=1e9 + i + 60))
    _insert_all(store, jobs)


def _insert_all(store: Store, rows: list) -> None:
    names = rows[0].columns()
    sql = f"INSERT INTO {rows[0].TABLE} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
    with store.connect() as conn:
        conn.executemany(sql, ([row.encode(k, getattr(row, k)) for k in names] for row in rows))


# --- the old way: every row read and decoded, filters in Python (what list_rows/list_jobs callers did) -----
OLD_JSON = frozenset({"params", "progress", "history", "result", "gps", "predict_tags", "labels"})


def old_all(store: Store, table: str, order: str) -> list[dict]:
    with store.connect(write=False) as conn:
        rows = conn.execute(f"SELECT * FROM {table} ORDER BY {order} LIMIT 1000000").fetchall()
    out = []
    for row in rows:
        item = dict(row)
        for key in OLD_JSON & item.keys():
            if item[key] is not None:
                item[key] = json.loads(item[key])
        out.append(item)
    return out


def old_queue(store: Store) -> tuple[list[dict], int]:
    waiting = [r for r in old_all(store, "images", "uploaded_at ASC") if r["labels"] is None]
    return waiting[:QUEUE_SHOWN], len(waiting)


def old_label_filter(store: Store, label: str) -> list[dict]:
    return [r for r in old_all(store, "images", "uploaded_at DESC") if label in (r["labels"] or ())][:BROWSE_LIMIT]


def old_jobs_list(store: Store, owner: str, kind: str) -> tuple[list[str], list[dict]]:
    mine = [r for r in old_all(store, "jobs", "created_at DESC") if r["created_by"] == owner]
    return sorted({r["kind"] for r in mine}), [r for r in mine if r["kind"] == kind][:JOBS_SHOWN]


# --- the new way: the query methods the pages call ---------------------------------------------------------
def new_queue(config: Config, store: Store) -> tuple[list, int]:
    rows = annotation.list_images(config, store, unlabelled=True, oldest_first=True, limit=QUEUE_SHOWN)
    return rows, annotation.count_images(store, unlabelled=True)


def new_label_filter(config: Config, store: Store, label: str) -> list:
    return annotation.list_images(config, store, label=label, limit=BROWSE_LIMIT)


def new_jobs_list(store: Store, owner: str, kind: str) -> tuple[list[str], list]:
    return store.job_kinds(created_by=owner), store.list_jobs(kind=kind, created_by=owner, limit=JOBS_SHOWN)


def median_ms(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        config = Config(data_dir=Path(tmp))
        config.ensure_dirs()
        store = open_store(config.data_dir)
        start = time.perf_counter()
        fill(store, args.images, args.jobs)
        print(f"filled {args.images:,} images and {args.jobs:,} jobs in {time.perf_counter() - start:.1f} s "
              f"(SQLite {sqlite3.sqlite_version})")
        cases = [
            ("queue (10 oldest unlabelled + count)", lambda: old_queue(store), lambda: new_queue(config, store),
             lambda r: ([x["id_name"] for x in r[0]], r[1])),
            ("label filter 'tree' (<= 1000 newest)", lambda: old_label_filter(store, "tree"),
             lambda: new_label_filter(config, store, "tree"), lambda r: [x["id_name"] for x in r]),
            ("jobs list (client1's kinds, 200 newest train)", lambda: old_jobs_list(store, "client1", "train"),
             lambda: new_jobs_list(store, "client1", "train"), lambda r: (r[0], [x["id"] for x in r[1]])),
        ]
        print(f"\n{'query':48} {'old: load all + filter (ms)':>28} {'new: SQL query (ms)':>20} {'speed-up':>9}")
        for name, old, new, key in cases:
            old_ms, old_result = median_ms(old, args.repeats)
            new_ms, new_result = median_ms(new, args.repeats)
            assert key(old_result) == key(new_result), f"{name}: the two ways disagree"
            print(f"{name:48} {old_ms:28.1f} {new_ms:20.2f} {old_ms / new_ms:8.0f}x")
        print(f"\nmedians of {args.repeats} runs; both ways return the same rows (checked)")


if __name__ == "__main__":
    main()
