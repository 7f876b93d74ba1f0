"""Redis cannot be used without its password, nor reconfigured with it; the catalog and Redis files are owner-only."""

from __future__ import annotations

import os
import stat

import pytest

import redis
from services.platform.config import Config
from services.platform.launcher import _without_password


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_client_without_the_password_is_refused(stack):
    with pytest.raises(redis.exceptions.AuthenticationError, match="Authentication required"):  # NOAUTH
        redis.Redis(port=stack.redis_port, protocol=2).set("studio:x", 1)
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=stack.redis_port, password="guess", protocol=2).ping()


def test_config_debug_and_module_are_disabled_even_with_the_password(stack):
    client = redis.Redis.from_url(stack.redis_url)
    assert client.ping()
    with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
        client.config_set("dir", "/tmp")
    for command in (("DEBUG", "SLEEP", "0"), ("MODULE", "LIST")):
        with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
            client.execute_command(*command)


def test_the_embedded_url_carries_the_generated_password(tmp_path):
    config = Config(data_dir=tmp_path, redis_port=6400)
    url = config.effective_redis_url
    assert url == f"redis://:{config.redis_password()}@127.0.0.1:6400/0"
    assert len(config.redis_password()) >= 32 and mode(tmp_path / "redis_password.key") == 0o600
    assert _without_password(url) == "redis://:***@127.0.0.1:6400/0"


def test_a_given_redis_url_is_used_as_it_is(tmp_path):
    for url in ("redis://:s3cret@db.example:6379/2", "rediss://user:s3cret@db.example:6380/0"):
        assert Config(data_dir=tmp_path, redis_url=url).effective_redis_url == url
        assert redis.ConnectionPool.from_url(url).connection_kwargs["password"] == "s3cret"


def test_catalog_and_redis_files_are_owner_only(stack):
    data = stack.data_dir
    assert mode(data / "catalog.sqlite3") == 0o600
    for companion in ("catalog.sqlite3-wal", "catalog.sqlite3-shm"):
        if (data / companion).exists():
            assert mode(data / companion) == 0o600, companion
    assert mode(data / "redis") == 0o700
    files = list((data / "redis").rglob("*"))
    assert any(p.name.startswith("appendonly") for p in files)
    assert all(mode(p) == (0o700 if p.is_dir() else 0o600) for p in files), {p.name: oct(mode(p)) for p in files}
