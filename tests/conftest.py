"""Shared fixtures. Integration fixtures start real processes; engine tests need none of them."""

from __future__ import annotations

import pytest

from tests.harness import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """One running studio (Redis, one worker, API under gunicorn) for the session's integration tests."""
    s = Stack(tmp_path_factory.mktemp("studio")).start()
    yield s
    s.close()
