"""Admin user management: list, create, change role, reset password, delete.

A role change, a password reset or a deletion revokes the user's tokens at once and drops their live
sockets; the last admin can be neither demoted nor deleted, so the studio always keeps one. The rules are
``services.app.users``'; these routes translate them into HTTP.
"""

from __future__ import annotations

from flask import Blueprint

from services.app import users
from services.web.http import ApiError, actor, endpoint, ok

bp = Blueprint("users", __name__)


def _weak(exc: users.WeakPassword) -> ApiError:
    """The policy's refusal as the API has always answered it (a 400 ``invalid_field`` naming ``password``)."""
    return ApiError(400, "invalid_field", str(exc), exc.field)


@endpoint(bp, "/api/v1/users", action="users.read")
def list_users():
    """Every user with their role (admin only)."""
    return ok({"users": users.list_users(actor())})


@endpoint(bp, "/api/v1/users", ("POST",), action="users.create", body=users.NewUser)
def create_user(body: users.NewUser):
    """Create a user (password: at least 12 characters, not a common one)."""
    try:
        return ok(users.create_user(actor(), body), 201)
    except users.WeakPassword as exc:
        raise _weak(exc) from None


@endpoint(bp, "/api/v1/users/<username>", ("PATCH",), action="users.change", body=users.UserChange)
def change_user(username: str, body: users.UserChange):
    """Change a user's role and/or reset their password; their tokens and sockets are revoked."""
    try:
        return ok(users.change_user(actor(), username, body))
    except users.WeakPassword as exc:
        raise _weak(exc) from None


@endpoint(bp, "/api/v1/users/<username>", ("DELETE",), action="users.delete")
def delete_user(username: str):
    """Delete a user; their tokens stop working and their sockets are dropped at once."""
    return ok(users.delete_user(actor(), username))
