"""Admin user management through the API, token revocation, logout, and the password policy of create-user."""

from __future__ import annotations

import secrets

import pytest
import requests

STRONG = "tawny-owl-gravel-42"


def new_user(stack, role="annotator", password=STRONG) -> str:
    name = f"u_{secrets.token_hex(4)}"
    r = requests.post(stack.url + "/api/v1/users", json={"username": name, "password": password, "role": role},
                      headers=stack.headers("admin"), timeout=10)
    assert r.status_code == 201, r.text
    return name


def sign_in(stack, name, password=STRONG) -> requests.Response:
    return requests.post(stack.url + "/auth", json={"username": name, "password": password}, timeout=10)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def whoami(stack, token: str) -> requests.Response:
    """A route every signed-in role may call."""
    return requests.get(stack.url + "/api/v1/models", headers=bearer(token), timeout=10)


def test_only_admins_list_and_manage_users(stack):
    r = requests.get(stack.url + "/api/v1/users", headers=stack.headers("admin"), timeout=10)
    assert r.status_code == 200
    assert {"admin", "operator", "annotator", "client"} <= {u["username"] for u in r.json()["users"]}
    assert all("password_hash" not in u for u in r.json()["users"])
    for role in ("operator", "annotator", "client"):
        assert requests.get(stack.url + "/api/v1/users", headers=stack.headers(role), timeout=10).status_code == 403
        r = requests.post(stack.url + "/api/v1/users", json={"username": "x1", "password": STRONG},
                          headers=stack.headers(role), timeout=10)
        assert r.status_code == 403


@pytest.mark.parametrize("password,why", [("12345678", "at least 12"), ("password1234", "most common"),
                                          ("Password1234", "most common")])
def test_weak_passwords_are_refused_naming_the_field(stack, password, why):
    r = requests.post(stack.url + "/api/v1/users", json={"username": "weakling", "password": password},
                      headers=stack.headers("admin"), timeout=10)
    assert r.status_code == 400 and r.json()["field"] == "password" and why in r.json()["message"]
    assert sign_in(stack, "weakling", password).status_code == 401


def test_a_created_user_signs_in_with_the_role_given(stack):
    name = new_user(stack, "client")
    r = sign_in(stack, name)
    assert r.status_code == 200 and r.json()["role"] == "client"


def test_a_role_change_revokes_old_tokens_at_once(stack):
    name = new_user(stack, "operator")
    old = sign_in(stack, name).json()["access_token"]
    assert whoami(stack, old).status_code == 200
    r = requests.patch(f"{stack.url}/api/v1/users/{name}", json={"role": "client"}, headers=stack.headers("admin"),
                       timeout=10)
    assert r.status_code == 200 and r.json()["role"] == "client"
    r = whoami(stack, old)
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    fresh = sign_in(stack, name)
    assert fresh.json()["role"] == "client" and whoami(stack, fresh.json()["access_token"]).status_code == 200


def test_a_password_reset_revokes_tokens_and_the_old_password(stack):
    name = new_user(stack)
    old = sign_in(stack, name).json()["access_token"]
    r = requests.patch(f"{stack.url}/api/v1/users/{name}", json={"password": "another-long-phrase-7"},
                       headers=stack.headers("admin"), timeout=10)
    assert r.status_code == 200
    assert whoami(stack, old).status_code == 401
    assert sign_in(stack, name).status_code == 401
    assert sign_in(stack, name, "another-long-phrase-7").status_code == 200
    r = requests.patch(f"{stack.url}/api/v1/users/{name}", json={"password": "short"},
                       headers=stack.headers("admin"), timeout=10)
    assert r.status_code == 400 and r.json()["field"] == "password"


def test_a_deleted_user_loses_access_at_once(stack):
    name = new_user(stack)
    token = sign_in(stack, name).json()["access_token"]
    r = requests.delete(f"{stack.url}/api/v1/users/{name}", headers=stack.headers("admin"), timeout=10)
    assert r.status_code == 200
    assert whoami(stack, token).status_code == 401
    assert sign_in(stack, name).status_code == 401
    r = requests.delete(f"{stack.url}/api/v1/users/{name}", headers=stack.headers("admin"), timeout=10)
    assert r.status_code == 404 and r.json()["field"] == "username"


def test_the_last_admin_is_neither_deleted_nor_demoted(stack):
    admin = stack.headers("admin")
    assert requests.delete(f"{stack.url}/api/v1/users/admin", headers=admin, timeout=10).status_code == 409
    r = requests.patch(f"{stack.url}/api/v1/users/admin", json={"role": "client"}, headers=admin, timeout=10)
    assert r.status_code == 409 and "at least one admin" in r.json()["message"]


def test_logout_revokes_that_token_only(stack):
    name = new_user(stack)
    first, second = (sign_in(stack, name).json()["access_token"] for _ in range(2))
    assert requests.post(stack.url + "/auth/logout", headers=bearer(first), timeout=10).status_code == 200
    r = whoami(stack, first)
    assert r.status_code == 401 and "logout" in r.json()["message"]
    assert whoami(stack, second).status_code == 200


