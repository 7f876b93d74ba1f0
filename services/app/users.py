"""Users as the API and the CLI manage them: the password policy and which tokens still stand.

A token carries its user's ``tv`` (token version) when it was issued. A role change, a password reset or a
deletion bumps the version (or removes the row), which revokes every token issued before; a logout revokes
one token by its ``jti``. Both are checked on every request and on every live socket. A new account starts
at a random version (``store.first_token_version``), so the tokens of a deleted account of the same name
never match it.
"""

from __future__ import annotations

import functools

from services.storage.store import Store

MIN_PASSWORD_LENGTH = 12


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
