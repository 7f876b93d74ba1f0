"""Quotas: active jobs per user, disk reserved by generations, temporary files nobody is writing."""

from __future__ import annotations

import os
import secrets
import shutil
import time

import pytest
import requests

from services.app.quotas import InsufficientStorage, check_disk_reservation, remove_stale_tmp
from services.platform.config import Config
from services.storage.store import open_store
from services.web.http import from_invalid_input

LEGACY_TRAIN = {"model_name": "convnetj", "dataset": "hdf5", "hdf5_path": "no-such-file.h5", "num_classes": 2,
              "num_epochs": 1}


def test_a_user_with_too_many_active_jobs_gets_429_naming_the_limit(stack):
    name, password = f"busy_{secrets.token_hex(3)}", "busy-operator-pass-1"
    store = open_store(stack.data_dir)
    store.create_user(name, password, "operator")
    ids = [f"quota-{secrets.token_hex(6)}" for _ in range(stack.config.max_active_jobs_per_user)]
    for job_id in ids:
        store.create_job(job_id, "train", {}, name)
    token = requests.post(stack.url + "/auth", json={"username": name, "password": password},
                          timeout=10).json()["access_token"]
    headers = {"Authorization": f"JWT {token}"}
    r = requests.post(stack.url + "/api/v1/train", json=LEGACY_TRAIN, headers=headers, timeout=30)
    assert r.status_code == 429 and r.json()["error"] == "too_many_jobs"
    assert "limit is 20" in r.json()["message"] and "MAX_ACTIVE_JOBS_PER_USER" in r.json()["message"]
    for job_id in ids:
        store.update_job(job_id, status="finished")
    r = requests.post(stack.url + "/api/v1/train", json=LEGACY_TRAIN, headers=headers, timeout=30)
    assert r.status_code != 429 and r.json()["field"] == "hdf5_path"  # past the quota, on to the dataset check
    r = requests.post(stack.url + "/api/v1/train", json=LEGACY_TRAIN, headers=stack.headers("admin"), timeout=30)
    assert r.status_code != 429


def test_generations_reserve_disk_and_the_next_gets_507(tmp_path):
    config = Config(data_dir=tmp_path)
    store = open_store(tmp_path)
    free = shutil.disk_usage(tmp_path).free
    check_disk_reservation(config, store, 10_000, "image_size")  # nothing reserved: fits
    # Twice the free space: the disk is shared with the other tests (and xdist's other worker), whose files come
    # and go between the measure above and the check below.
    store.create_job("gen-1", "generate", {"reserved_bytes": 2 * free}, "operator")
    with pytest.raises(InsufficientStorage, match="reserved by queued or running generations") as refused:
        check_disk_reservation(config, store, 10_000, "image_size")
    answer = from_invalid_input(refused.value)
    assert answer.status == 507 and answer.field == "image_size"
    store.update_job("gen-1", status="finished")  # an ended job holds no reservation
    check_disk_reservation(config, store, 10_000, "image_size")


def test_stale_temporary_files_are_removed_and_live_ones_kept(tmp_path):
    config = Config(data_dir=tmp_path)
    config.ensure_dirs()
    store = open_store(tmp_path)
    kept = tmp_path / "datasets" / "done.h5"
    kept.write_bytes(b"dataset")
    orphan = tmp_path / "datasets" / ".half.h5.0a1b.tmp"
    orphan.write_bytes(b"half")
    staging = tmp_path / "exports" / ".set.0a1b"
    staging.mkdir()
    (staging / "x.png").write_bytes(b"png")
    five_minutes_ago = time.time() - 300
    for path in (orphan, staging):
        os.utime(path, (five_minutes_ago, five_minutes_ago))
    uploading = tmp_path / "objects" / ".cut.png.99.tmp"  # an upload being written as the worker starts
    uploading.write_bytes(b"partial")
    assert sorted(p.name for p in remove_stale_tmp(config, store)) == [".half.h5.0a1b.tmp", ".set.0a1b"]
    assert kept.exists() and uploading.exists() and not orphan.exists() and not staging.exists()
    uploading.unlink()

    store.create_job("running", "generate", {}, "operator")
    store.update_job("running", status="started")
    live = tmp_path / "datasets" / ".live.h5.1234.tmp"
    live.write_bytes(b"being written")
    old = tmp_path / "datasets" / ".old.h5.5678.tmp"
    old.write_bytes(b"left behind")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    assert [p.name for p in remove_stale_tmp(config, store)] == [".old.h5.5678.tmp"]
    assert live.exists()


def test_a_run_of_too_many_image_passes_is_refused_for_non_admins_naming_num_epochs(stack):
    """300 jobs of a million epochs each were accepted; now epochs x training images is capped per run."""
    from tests.digits import digits_body, ensure_digits_hdf5

    ensure_digits_hdf5(stack.data_dir)
    huge = digits_body(num_epochs="1000000")  # 1,400 training digits: 1.4 billion image passes
    r = requests.post(stack.url + "/api/v1/train", json=huge, headers=stack.headers("operator"), timeout=30)
    assert r.status_code == 400 and r.json()["field"] == "num_epochs", r.text
    assert "MAX_SAMPLE_EPOCHS" in r.json()["message"] and "1,400,000,000" in r.json()["message"]
    r = requests.post(stack.url + "/api/v1/train", json=huge, headers=stack.headers("admin"), timeout=30)
    assert r.status_code == 202, r.text  # an admin may
    requests.post(f"{stack.url}/api/v1/jobs/{r.json()['job_id']}/cancel", headers=stack.headers("admin"), timeout=60)
