"""The API under fuzzing: schemathesis over our own OpenAPI document against the running server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness import Stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory):
    """A studio of its own, so fuzzed writes never touch what other tests look at."""
    s = Stack.in_own_folder(tmp_path_factory, "fuzz").start()
    yield s
    s.close()


def test_fuzzed_requests_never_5xx_and_errors_match_the_spec(fuzz_stack, tmp_path):
    # Logout and user management are left out: they would revoke the fuzzer's own admin token.
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", fuzz_stack.url + "/api/v1/openapi.json",
           "-H", f"Authorization: Bearer {fuzz_stack.token('admin')}",
           "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                       "response_schema_conformance",
           "--max-examples", "15", "--seed", "1234", "--max-time", "75", "--request-timeout", "30",
           "--generation-deterministic", "--exclude-path-regex", "/cancel$|/auth/logout$|/api/v1/users",
           "--report", "junit", "--report-dir", str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=fuzz_stack.env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    health = __import__("requests").get(fuzz_stack.url + "/health", timeout=10)
    assert health.status_code == 200  # still serving afterwards
