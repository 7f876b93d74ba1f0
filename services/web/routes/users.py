"""Admin user management: list, create, change role, reset password, delete.

A role change, a password reset or a deletion revokes the user's tokens at once and drops their live
sockets; the last admin can be neither demoted nor deleted, so the studio always keeps one.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, g
from pydantic import BaseModel, Field, model_validator

from services.app.users import password_problem
from services.web.http import ApiError, endpoint, ok, studio

bp = Blueprint("users", __name__)
Role = Literal["admin", "operator", "annotator", "client"]


class NewUser(BaseModel):
    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    password: str = Field(min_length=1, max_length=1024)
    role: Role = "operator"


class UserChange(BaseModel):
    role: Role | None = None
    password: str | None = Field(None, min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _something(self):
        if self.role is None and self.password is None:
            raise ValueError("send 'role', 'password' or both")
        return self


def _check_password(password: str, username: str) -> None:
    problem = password_problem(password, username)
    if problem:
        raise ApiError(400, "invalid_field", f"password: {problem}", "password")


def _existing(username: str) -> dict:
    user = studio().store.get_user(username)
    if user is None:
        raise ApiError(404, "not_found", f"no user '{username}'", "username")
    return user


def _keep_an_admin(user: dict, new_role: str | None) -> None:
    """Refuse to remove the last admin (by demotion or deletion)."""
    admins = [u for u in studio().store.list_users() if u.role == "admin"]
    if user["role"] == "admin" and new_role != "admin" and len(admins) <= 1:
        raise ApiError(409, "conflict", "the studio must keep at least one admin", "username")


def _drop_sockets(username: str) -> None:
    from services.api import live_sockets  # the socket registry lives with the Socket.IO handlers

    live_sockets.drop(lambda entry: entry.username == username)


@endpoint(bp, "/api/v1/users", action="users.read")
def list_users():
    """Every user with their role (admin only)."""
    return ok({"users": [{"username": u.username, "role": u.role, "created_at": u.created_at}
                         for u in studio().store.list_users()]})


@endpoint(bp, "/api/v1/users", ("POST",), action="users.create", body=NewUser)
def create_user(body: NewUser):
    """Create a user (password: at least 12 characters, not a common one)."""
    _check_password(body.password, body.username)
    if studio().store.get_user(body.username):
        raise ApiError(409, "conflict", f"user '{body.username}' exists", "username")
    studio().store.create_user(body.username, body.password, body.role)
    return ok({"username": body.username, "role": body.role}, 201)


@endpoint(bp, "/api/v1/users/<username>", ("PATCH",), action="users.change", body=UserChange)
def change_user(username: str, body: UserChange):
    """Change a user's role and/or reset their password; their tokens and sockets are revoked."""
    user = _existing(username)
    store = studio().store
    if body.role is not None:
        _keep_an_admin(user, body.role)
        store.set_role(username, body.role)
    if body.password is not None:
        _check_password(body.password, username)
        store.set_password(username, body.password)
    _drop_sockets(username)
    return ok({"username": username, "role": store.get_user(username)["role"], "tokens_revoked": True})


@endpoint(bp, "/api/v1/users/<username>", ("DELETE",), action="users.delete")
def delete_user(username: str):
    """Delete a user; their tokens stop working and their sockets are dropped at once."""
    user = _existing(username)
    if username == g.user["username"]:
        raise ApiError(409, "conflict", "an admin cannot delete their own account", "username")
    _keep_an_admin(user, None)
    studio().store.delete_user(username)
    _drop_sockets(username)
    return ok({"deleted": username})
