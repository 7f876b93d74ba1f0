"""Users as the API and the CLI manage them: the password policy and which tokens still stand.

The admin's actions (list, create, change role or password, delete) are here, for the API's routes; the
command line's ``create-user`` acts as the studio itself and calls :func:`add_user` below the action.

A token carries its user's ``tv`` (token version) when it was issued. A role change, a password reset or a
deletion bumps the version (or removes the row), which revokes every token issued before; a logout revokes
one token by its ``jti``. Both are checked on every request and on every live socket. A new account starts
at a random version (``store.first_token_version``), so the tokens of a deleted account of the same name
never match it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from engine.exceptions import Conflict, InvalidInput, NotFound
from services.app.rules import Actor, action
from services.storage.store import Store

MIN_PASSWORD_LENGTH = 12
Role = Literal["admin", "operator", "annotator", "client"]


@functools.lru_cache(maxsize=1)
def common_passwords() -> frozenset[str]:
    """The 30,000 most common passwords of real leaks, as zxcvbn ships them (lower-case)."""
    from zxcvbn.frequency_lists import FREQUENCY_LISTS  # a large module: loaded only when a password is set

    return frozenset(FREQUENCY_LISTS["passwords"])


def password_problem(password: str, username: str = "") -> str | None:
    """What is wrong with a new password (None when it is acceptable).

    Args:
        password: the proposed password.
        username: the account's name; a password equal to it is refused.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"password must have at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > 1024:
        return "password must have at most 1024 characters"
    lowered = password.lower()
    if lowered in common_passwords():
        return "password is one of the 30,000 most common passwords; choose another"
    if username and lowered == username.lower():
        return "password must differ from the username"
    return None


def token_problem(store: Store, claims: dict) -> tuple[dict | None, str | None]:
    """The user a decoded token stands for, or why it no longer stands.

    Returns:
        ``(user, None)`` for a valid token, ``(None, reason)`` for a revoked one.
    """
    user = store.get_user(str(claims.get("sub", "")))
    if user is None:
        return None, "the token's user no longer exists"
    if claims.get("tv", 0) != user["token_version"]:
        return None, ("the token was revoked (the user's role or password changed, or the account was deleted "
                      "and made again): get a new one from POST /auth")
    if claims.get("jti") and store.is_token_revoked(claims["jti"]):
        return None, "the token was revoked by a logout: get a new one from POST /auth"
    return user, None


# --------------------------------------------------------------------------------------- the admin's actions


class WeakPassword(InvalidInput):
    """A new password the policy refuses (:func:`password_problem` says why)."""

    field = "password"

    def __init__(self, problem: str):
        super().__init__(f"password: {problem}", "password")
        self.problem = problem


class UnknownUser(NotFound):
    """No user has this name (the API answers 404)."""

    field = "username"


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


# Called with a user's name when their tokens stop standing (role change, password reset, deletion): the
# API registers the one that drops their live sockets at once (its Socket.IO handlers own the registry).
_revoked_listeners: list[Callable[[str], object]] = []


def on_tokens_revoked(listener: Callable[[str], object]) -> None:
    """Call ``listener(username)`` whenever an action revokes a user's tokens (registering it twice: once)."""
    if listener not in _revoked_listeners:
        _revoked_listeners.append(listener)


def _tokens_revoked(username: str) -> None:
    for listener in _revoked_listeners:
        listener(username)


@action("users.read")
def list_users(actor: Actor) -> list[dict]:
    """Every user with their role and creation time (no password hashes)."""
    return [{"username": u.username, "role": u.role, "created_at": u.created_at} for u in actor.store.list_users()]


@action("users.create")
def create_user(actor: Actor, new: NewUser) -> dict:
    """Create a user (see :func:`add_user`); returns its name and role."""
    add_user(actor.store, new.username, new.password, new.role)
    return {"username": new.username, "role": new.role}


def add_user(store: Store, username: str, password: str, role: str) -> None:
    """Create a user, as the studio itself (the command line; the action checks the admin first).

    Raises:
        WeakPassword: the password policy refuses the password.
        Conflict: the name is taken (field ``username``).
    """
    _check_password(password, username)
    if store.get_user(username):
        raise Conflict(f"user '{username}' exists", "username")
    store.create_user(username, password, role)


@action("users.change")
def change_user(actor: Actor, username: str, change: UserChange) -> dict:
    """Change a user's role and/or reset their password; their tokens (and live sockets) are revoked.

    Raises:
        UnknownUser: no such user.
        WeakPassword: the new password is refused (nothing is changed).
        Conflict: the change would demote the last admin.
    """
    user = _existing(actor.store, username)
    if change.password is not None:
        _check_password(change.password, username)
    if change.role is not None:
        _keep_an_admin(actor.store, user, change.role)
        actor.store.set_role(username, change.role)
    if change.password is not None:
        actor.store.set_password(username, change.password)
    _tokens_revoked(username)
    return {"username": username, "role": actor.store.get_user(username)["role"], "tokens_revoked": True}


@action("users.delete")
def delete_user(actor: Actor, username: str) -> dict:
    """Delete a user; their tokens stop working and their live sockets are dropped at once.

    Raises:
        UnknownUser: no such user.
        Conflict: an admin deleting their own account, or the last admin.
    """
    user = _existing(actor.store, username)
    if username == actor.username:
        raise Conflict("an admin cannot delete their own account", "username")
    _keep_an_admin(actor.store, user, None)
    actor.store.delete_user(username)
    _tokens_revoked(username)
    return {"deleted": username}


def _check_password(password: str, username: str) -> None:
    problem = password_problem(password, username)
    if problem:
        raise WeakPassword(problem)


def _existing(store: Store, username: str) -> dict:
    user = store.get_user(username)
    if user is None:
        raise UnknownUser(f"no user '{username}'")
    return user


def _keep_an_admin(store: Store, user: dict, new_role: str | None) -> None:
    """Refuse to remove the last admin (by demotion or deletion)."""
    admins = [u for u in store.list_users() if u.role == "admin"]
    if user["role"] == "admin" and new_role != "admin" and len(admins) <= 1:
        raise Conflict("the studio must keep at least one admin", "username")
