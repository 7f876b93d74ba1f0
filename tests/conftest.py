"""Shared fixtures, and the tiers derived from them.

A test's tier follows from the fixtures it uses, never from a marker applied by hand: a test whose fixtures
(directly or through other fixtures) include ``processes`` starts real processes (Redis, workers, gunicorn,
a launcher, several training processes) and is a ``stack`` test; one that uses ``browser`` is a ``browser``
test; a test that takes the ``door`` fixture runs twice, in-process and over HTTP on the stack (a route
family's smoke test). Every other test is in-process, and a guard fails it if it starts a process anyway: so a
test cannot end up in the fast tier by forgetting a marker, nor slow it down unnoticed.

In-process tests get an in-memory Redis (fakeredis, one server per URL) wherever the code asks redis-py for a
client, and HDF5 files are read in the test's own process: the real Redis and the time-limited reading child
are proven by the stack tier. Their jobs run through RQ in the test's process when the test waits for them
(:meth:`tests.harness.LocalStudio.run_jobs`).
"""

from __future__ import annotations

import multiprocessing.util
import os
import subprocess
import sys
from contextlib import contextmanager

import fakeredis
import pytest
import torch  # noqa: F401  imported before any guard: its first import runs ldconfig (ctypes.util.find_library)

import redis
from engine import hdf5_layout
from services.jobs import runtime
from tests.harness import LocalStudio, Stack, chromium, free_port

PROCESS_FIXTURE, BROWSER_FIXTURE, DOOR_FIXTURE = "processes", "browser", "door"
IN_PROCESS, OVER_HTTP = "in-process", "over-http"


@pytest.fixture(scope="session")
def processes():
    """Asked for by every fixture or test that starts real processes: it puts the test in the stack tier."""
    return None


def pytest_itemcollected(item) -> None:
    """Derive each test's tier from its fixtures (as each test is collected)."""
    names = set(getattr(item, "fixturenames", ()))
    over_http = getattr(item, "callspec", None) is not None and item.callspec.params.get(DOOR_FIXTURE) == OVER_HTTP
    if BROWSER_FIXTURE in names:
        item.add_marker(pytest.mark.browser)
    if PROCESS_FIXTURE in names or BROWSER_FIXTURE in names or over_http:
        item.add_marker(pytest.mark.stack)


# Modules that share one xdist work unit, so they never run at once on two workers: the DDP runs (two ranks each).
SHARED_UNITS = {"tests/engine/test_distributed.py": "ddp", "tests/services/test_distributed_api.py": "ddp"}


def pytest_xdist_make_scheduler(config, log):
    """Under ``--dist loadscope`` (the stack tier), a module's tests stay on one xdist worker, so a studio the
    module starts for itself starts once, and the modules of :data:`SHARED_UNITS` share a worker. (The
    controller knows node ids only; pytest-xdist's ``xdist_group`` marks rewrite node ids, which pytest 9.2
    computes, so ``--dist loadgroup`` no longer groups.)"""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return SHARED_UNITS.get(module, module)

    return ModuleScheduling(config, log)


class StartsProcess(RuntimeError):
    """An in-process test started a process."""


def _refuse(*_args, **_kwargs):
    raise StartsProcess("this test starts a process but does not ask for the `processes` fixture (directly or "
                        "through a fixture such as `stack`): ask for it, so the test runs in the stack tier")


# Every way a test could start a process: subprocess, a fork, multiprocessing's spawn and forkserver.
_STARTERS = ((subprocess.Popen, "_execute_child"), (os, "fork"), (os, "posix_spawn"),
             (multiprocessing.util, "spawnv_passfds"))


_FAKE_SERVERS: dict[str, fakeredis.FakeServer] = {}


def _fake_redis(url: str, **options) -> fakeredis.FakeRedis:
    """An in-memory Redis client for ``url``: every client of one URL shares one server, as real clients would."""
    return fakeredis.FakeRedis(server=_FAKE_SERVERS.setdefault(url, fakeredis.FakeServer()),
                               decode_responses=options.get("decode_responses", False))


@contextmanager
def _keep_main():
    """Streamlit's AppTest runs a page as ``__main__`` and leaves it there; a process started later with ``spawn``
    (the DDP ranks) would run that page again and die before its first epoch."""
    main = sys.modules["__main__"]
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@contextmanager
def _guard(item):
    """While an in-process test is set up, run and torn down (its module fixtures too), starting a process fails,
    Redis is in memory and HDF5 files are read in this process."""
    if item.get_closest_marker("stack") is not None:
        with _keep_main():
            yield
        return
    saved = [(owner, name, getattr(owner, name)) for owner, name in _STARTERS]
    for owner, name, _ in saved:
        setattr(owner, name, _refuse)
    from_url, in_a_child = redis.Redis.__dict__["from_url"], hdf5_layout.READ_IN_A_CHILD
    redis.Redis.from_url = staticmethod(_fake_redis)
    hdf5_layout.READ_IN_A_CHILD = False
    runtime._redis_client.cache_clear()
    try:
        with _keep_main():
            yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
        redis.Redis.from_url, hdf5_layout.READ_IN_A_CHILD = from_url, in_a_child
        runtime._redis_client.cache_clear()


@pytest.fixture
def unreachable_redis_url() -> str:
    """A Redis address where nothing answers: a free port for the stack tier, a disconnected in-memory server for
    the in-process tier."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    _FAKE_SERVERS.setdefault(url, fakeredis.FakeServer()).connected = False
    return url


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    with _guard(item):
        return (yield)


@pytest.fixture(scope="session")
def stack(tmp_path_factory, processes):
    """One running studio (Redis, one worker, API under gunicorn) for the session's integration tests."""
    s = Stack.in_own_folder(tmp_path_factory, "studio").start()
    yield s
    s.close()


@pytest.fixture(scope="session")
def studio(tmp_path_factory):
    """One in-process studio (the API's app, its catalog, Redis in memory; jobs run when a test waits for them)
    for the session's in-process tests: the same routes, answered without a server."""
    return LocalStudio.in_own_folder(tmp_path_factory, "local")


@pytest.fixture(params=[IN_PROCESS, OVER_HTTP])
def door(request):
    """A route family's smoke test runs twice: against :func:`studio` in-process (the fast tier) and against the
    real :func:`stack` over HTTP (the stack tier: gunicorn, gevent, the worker processes)."""
    return request.getfixturevalue("stack" if request.param == OVER_HTTP else "studio")


@pytest.fixture(scope="session")
def browser(processes):
    """One Chromium for the whole run (Playwright's sync API allows one at a time in a thread)."""
    if chromium() is None:
        pytest.skip("Chromium is not installed (CI installs it with apt: see .ci/run)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync", "--disable-quic"])
        yield b
        b.close()


def pytest_report_header(config) -> str:
    found = chromium()
    if found:
        return f"browser tests: Chromium found at {found}"
    return ("browser tests: Chromium NOT found, so they will be SKIPPED "
            "(install it with `apt-get install chromium`, as .ci/run does)")


def pytest_terminal_summary(terminalreporter) -> None:
    """Say it last, in words: a newcomer must not mistake a skipped browser suite for a passing one."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "tests/browser/" in r.nodeid]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} browser tests were SKIPPED because Chromium was not found; "
            "install it with `apt-get install chromium` (as root, as .ci/run does) and run `make test` again.",
            yellow=True, bold=True)
