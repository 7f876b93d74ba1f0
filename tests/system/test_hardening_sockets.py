"""Socket.IO: no connection without a token on any namespace; revoked and expired sockets are dropped."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest
import requests
import socketio

from services.storage.store import open_store

PASSWORD = "socket-user-passphrase-3"


@pytest.mark.parametrize("namespace", ["/", "/test", "/jobs", "/elsewhere"])
def test_no_namespace_accepts_a_connection_without_a_token(stack, namespace):
    client = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(stack.url, namespaces=[namespace], wait_timeout=5, transports=["websocket"])
    client.disconnect()


def user_with_socket(stack, role="operator", token=None):
    name = f"s_{secrets.token_hex(4)}"
    open_store(stack.data_dir).create_user(name, PASSWORD, role)
    if token is None:
        token = requests.post(stack.url + "/auth", json={"username": name, "password": PASSWORD},
                              timeout=10).json()["access_token"]
    client = socketio.Client(reconnection=False)
    client.connect(stack.url, namespaces=["/jobs"], auth={"token": token(name) if callable(token) else token},
                   wait_timeout=10, transports=["websocket"])
    return name, client


def wait_disconnected(client, seconds=8.0) -> bool:
    deadline = time.monotonic() + seconds
    while client.connected and time.monotonic() < deadline:
        time.sleep(0.1)
    return not client.connected


@pytest.mark.parametrize("change", [{"role": "client"}, {"password": "reset-to-this-phrase-1"}, None])
def test_a_role_change_reset_or_deletion_drops_live_sockets(stack, change):
    name, client = user_with_socket(stack)
    assert client.connected
    admin = stack.headers("admin")
    url = f"{stack.url}/api/v1/users/{name}"
    r = requests.patch(url, json=change, headers=admin, timeout=10) if change else \
        requests.delete(url, headers=admin, timeout=10)
    assert r.status_code == 200
    assert wait_disconnected(client, 3)


def test_a_socket_whose_token_expires_is_dropped(stack):
    def short_token(name):
        now = datetime.now(UTC)
        tv = open_store(stack.data_dir).get_user(name).token_version  # a token carries its account's version
        claims = {"sub": name, "role": "operator", "tv": tv, "jti": secrets.token_hex(8), "type": "access",
                  "fresh": False, "iat": now, "nbf": now, "exp": now + timedelta(seconds=3)}
        return jwt.encode(claims, stack.config.secret_key(), algorithm="HS256")

    _, client = user_with_socket(stack, token=short_token)
    assert client.connected
    assert wait_disconnected(client, 10)


def test_a_logout_drops_the_sockets_of_that_token(stack):
    name = f"s_{secrets.token_hex(4)}"
    open_store(stack.data_dir).create_user(name, PASSWORD, "client")
    token = requests.post(stack.url + "/auth", json={"username": name, "password": PASSWORD},
                          timeout=10).json()["access_token"]
    client = socketio.Client(reconnection=False)
    client.connect(stack.url, namespaces=["/test"], auth={"token": token}, wait_timeout=10, transports=["websocket"])
    requests.post(stack.url + "/auth/logout", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert wait_disconnected(client, 3)
