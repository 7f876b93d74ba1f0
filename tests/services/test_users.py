"""Admin user management through the API, token revocation, logout, and the password policy of create-user."""

from __future__ import annotations

import secrets

import pytest

STRONG = "tawny-owl-gravel-42"


def new_user(studio, role="annotator", password=STRONG) -> str:
    name = f"u_{secrets.token_hex(4)}"
    r = studio.http.post("/api/v1/users", json={"username": name, "password": password, "role": role},
                      headers=studio.headers("admin"), timeout=10)
    assert r.status_code == 201, r.text
    return name


def sign_in(studio, name, password=STRONG):
    return studio.http.post("/auth", json={"username": name, "password": password}, timeout=10)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def whoami(studio, token: str):
    """A route every signed-in role may call."""
    return studio.http.get("/api/v1/models", headers=bearer(token), timeout=10)


def test_only_admins_list_and_manage_users(studio):
    r = studio.http.get("/api/v1/users", headers=studio.headers("admin"), timeout=10)
    assert r.status_code == 200
    assert {"admin", "operator", "annotator", "client"} <= {u["username"] for u in r.json()["users"]}
    assert all("password_hash" not in u for u in r.json()["users"])
    for role in ("operator", "annotator", "client"):
        assert studio.http.get("/api/v1/users", headers=studio.headers(role), timeout=10).status_code == 403
        r = studio.http.post("/api/v1/users", json={"username": "x1", "password": STRONG},
                          headers=studio.headers(role), timeout=10)
        assert r.status_code == 403


@pytest.mark.parametrize("password,why", [("12345678", "at least 12"), ("password1234", "most common"),
                                          ("Password1234", "most common")])
def test_weak_passwords_are_refused_naming_the_field(studio, password, why):
    r = studio.http.post("/api/v1/users", json={"username": "weakling", "password": password},
                      headers=studio.headers("admin"), timeout=10)
    assert r.status_code == 400 and r.json()["field"] == "password" and why in r.json()["message"]
    assert sign_in(studio, "weakling", password).status_code == 401


def test_a_created_user_signs_in_with_the_role_given(studio):
    name = new_user(studio, "client")
    r = sign_in(studio, name)
    assert r.status_code == 200 and r.json()["role"] == "client"


def test_a_role_change_revokes_old_tokens_at_once(studio):
    name = new_user(studio, "operator")
    old = sign_in(studio, name).json()["access_token"]
    assert whoami(studio, old).status_code == 200
    r = studio.http.patch(f"/api/v1/users/{name}", json={"role": "client"}, headers=studio.headers("admin"),
                       timeout=10)
    assert r.status_code == 200 and r.json()["role"] == "client"
    r = whoami(studio, old)
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    fresh = sign_in(studio, name)
    assert fresh.json()["role"] == "client" and whoami(studio, fresh.json()["access_token"]).status_code == 200


def test_a_password_reset_revokes_tokens_and_the_old_password(studio):
    name = new_user(studio)
    old = sign_in(studio, name).json()["access_token"]
    r = studio.http.patch(f"/api/v1/users/{name}", json={"password": "another-long-phrase-7"},
                       headers=studio.headers("admin"), timeout=10)
    assert r.status_code == 200
    assert whoami(studio, old).status_code == 401
    assert sign_in(studio, name).status_code == 401
    assert sign_in(studio, name, "another-long-phrase-7").status_code == 200
    r = studio.http.patch(f"/api/v1/users/{name}", json={"password": "short"},
                       headers=studio.headers("admin"), timeout=10)
    assert r.status_code == 400 and r.json()["field"] == "password"


def test_a_deleted_user_loses_access_at_once(studio):
    name = new_user(studio)
    token = sign_in(studio, name).json()["access_token"]
    r = studio.http.delete(f"/api/v1/users/{name}", headers=studio.headers("admin"), timeout=10)
    assert r.status_code == 200
    assert whoami(studio, token).status_code == 401
    assert sign_in(studio, name).status_code == 401
    r = studio.http.delete(f"/api/v1/users/{name}", headers=studio.headers("admin"), timeout=10)
    assert r.status_code == 404 and r.json()["field"] == "username"


def test_the_last_admin_is_neither_deleted_nor_demoted(studio):
    admin = studio.headers("admin")
    assert studio.http.delete("/api/v1/users/admin", headers=admin, timeout=10).status_code == 409
    r = studio.http.patch("/api/v1/users/admin", json={"role": "client"}, headers=admin, timeout=10)
    assert r.status_code == 409 and "at least one admin" in r.json()["message"]


def test_logout_revokes_that_token_only(studio):
    name = new_user(studio)
    first, second = (sign_in(studio, name).json()["access_token"] for _ in range(2))
    assert studio.http.post("/auth/logout", headers=bearer(first), timeout=10).status_code == 200
    r = whoami(studio, first)
    assert r.status_code == 401 and "logout" in r.json()["message"]
    assert whoami(studio, second).status_code == 200


