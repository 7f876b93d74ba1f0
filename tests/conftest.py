"""Shared fixtures. Integration fixtures start real processes; engine tests need none of them."""

from __future__ import annotations

import pytest

from tests.harness import Stack, chromium


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """One running studio (Redis, one worker, API under gunicorn) for the session's integration tests."""
    s = Stack.in_own_folder(tmp_path_factory, "studio").start()
    yield s
    s.close()


@pytest.fixture(scope="session")
def browser():
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
