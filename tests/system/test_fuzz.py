"""Fuzzing: the API (schemathesis over our own OpenAPI document against the running server) and the HDF5
dataset reader (hypothesis over damaged versions of the files users write)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from engine.datasets import DatasetSpec, build_datasets, inspect_hdf5, make_preprocessing
from engine.exceptions import InvalidInput
from tests.harness import Stack
from tests.hdf5_variants import ACCEPTED, REFUSED


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory, processes):
    """A studio of its own, so fuzzed writes never touch what other tests look at."""
    s = Stack.in_own_folder(tmp_path_factory, "fuzz").start()
    yield s
    s.close()


def test_fuzzed_requests_never_5xx_and_errors_match_the_spec(fuzz_stack, tmp_path):
    # Logout and user management are left out: they would revoke the fuzzer's own admin token. One deterministic
    # pass over every other operation (coverage, fuzzing, stateful) takes ~20 s; a --max-time budget would only
    # repeat the same generated cases until it is spent.
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", fuzz_stack.url + "/api/v1/openapi.json",
           "-H", f"Authorization: Bearer {fuzz_stack.token('admin')}",
           "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                       "response_schema_conformance",
           "--max-examples", "15", "--seed", "1234", "--request-timeout", "30",
           "--generation-deterministic", "--exclude-path-regex", "/cancel$|/auth/logout$|/api/v1/users",
           "--report", "junit", "--report-dir", str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=fuzz_stack.env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    health = __import__("requests").get(fuzz_stack.url + "/health", timeout=10)
    assert health.status_code == 200  # still serving afterwards


# ------------------------------------------------------------------------------------ dataset reader
# The HDF5 files of tests/engine/test_hdf5_variants.py (written with plain h5py, as users write them),
# then damaged: attributes and arrays replaced by arbitrary values, keys deleted, bytes flipped, the file
# cut short. Whatever comes out, the reader gives a consistent dataset whose every item is a finite
# tensor with a label in range, or refuses the file naming hdf5_path; nothing else.
WRITERS = [write for write, _ in ACCEPTED.values()] + [param.values[0] for param in REFUSED]
KEYS = ("X_train", "y_train", "X_test", "y_test", "X_val", "y_val", "classes", "class_names")
ATTRIBUTE_VALUES = st.one_of(
    st.text(max_size=12), st.binary(max_size=12), st.integers(-3, 300), st.floats(),
    st.lists(st.text(max_size=6), max_size=5), st.lists(st.integers(-2, 9), max_size=5),
    st.lists(st.text(max_size=6), max_size=5).map(json.dumps),
    st.dictionaries(st.text("0123ab", max_size=2), st.text(max_size=4), max_size=4).map(json.dumps),
)
ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.int64, np.float32, np.float64, np.bool_, np.dtype("S3")]),
    shape=hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=6),
)
_EDITS = st.one_of(
    st.tuples(st.just("attribute"), st.sampled_from(("class_names", "classes")), ATTRIBUTE_VALUES),
    st.tuples(st.just("array"), st.sampled_from(KEYS), ARRAYS),
    st.tuples(st.just("delete"), st.sampled_from(KEYS), st.none()),
)
_DAMAGE = st.one_of(  # past the superblock: a broken signature only ever says "not an HDF5 file"
    st.tuples(st.just("byte"), st.floats(0.05, 1), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.floats(0.05, 1), st.none()),
)
MUTATIONS = st.one_of(_EDITS, _EDITS, _EDITS, _DAMAGE)


def _mutate(path: Path, kind: str, where, value) -> None:
    if kind in ("byte", "cut"):
        raw = bytearray(path.read_bytes())
        offset = min(int(where * len(raw)), len(raw) - 1)
        if kind == "byte":
            raw[offset] = value
        path.write_bytes(bytes(raw if kind == "byte" else raw[:offset]))
        return
    try:
        with h5py.File(path, "a") as f:
            if kind == "attribute":
                f.attrs[where] = value
            else:
                if where in f:
                    del f[where]
                if kind == "array":
                    f[where] = value
    except (OSError, TypeError, ValueError, UnicodeError):
        pass  # h5py cannot write that value, or an earlier mutation broke the file: nothing changed here


def _check_accepted(path: Path) -> None:
    summary = inspect_hdf5(path)
    names = summary.class_names
    assert len(names) >= 2 and len(set(names)) == len(names) and all(isinstance(n, str) for n in names)
    bundle = build_datasets(DatasetSpec("hdf5", hdf5_path=str(path)), make_preprocessing(4))
    assert bundle.class_names == names and bundle.multi_label == summary.multi_label
    for split, data in (("train", bundle.train), ("test", bundle.test)):
        assert len(data) == summary.split_sizes[split] > 0
        if not summary.multi_label:
            assert sum(summary.class_counts[split].values()) == len(data)
        for index in range(min(len(data), 6)):
            image, label = data[index]
            assert image.shape == (3, 4, 4) and image.dtype == torch.float32 and torch.isfinite(image).all()
            if summary.multi_label:
                assert label.shape == (len(names),) and set(label.tolist()) <= {0.0, 1.0}
            else:
                assert isinstance(label, int) and 0 <= label < len(names)


@pytest.fixture(scope="module")
def quick_reader(processes):
    """A damaged file may make libhdf5 spin; give up on it after 3 s instead of 60."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("engine.hdf5_layout.HDF5_READ_SECONDS", 3.0)
        yield


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(writer=st.sampled_from(WRITERS), mutations=st.lists(MUTATIONS, max_size=3))
def test_fuzzed_hdf5_files_are_read_consistently_or_refused_naming_hdf5_path(quick_reader, writer, mutations):
    with tempfile.TemporaryDirectory(prefix="fuzz-hdf5-") as folder:
        path = Path(folder) / "fuzzed.h5"
        writer(path)
        for mutation in mutations:
            _mutate(path, *mutation)
        try:
            _check_accepted(path)
        except InvalidInput as exc:
            assert exc.field == "hdf5_path" and "'fuzzed.h5'" in str(exc) and folder not in str(exc), str(exc)
