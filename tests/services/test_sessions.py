"""UI sessions: the token works until it expires, is revoked, or its user changes; the catalog holds no token."""

from __future__ import annotations

import pytest

from services import sessions
from services.store import open_store


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path)
    s.create_user("ann", "password-1", "annotator")
    return s


def test_a_token_signs_in_until_revoked_and_only_its_hash_is_kept(store):
    token = sessions.create(store, store.get_user("ann"), now=1000.0)
    assert sessions.resume(store, token, now=1010.0)["username"] == "ann"
    assert token.encode() not in store.path.read_bytes() + store.path.with_name("catalog.sqlite3-wal").read_bytes()
    sessions.revoke(store, token)
    assert sessions.resume(store, token, now=1020.0) is None
    assert sessions.resume(store, "not-a-token") is None and sessions.resume(store, None) is None


def test_idle_and_absolute_expiry(store):
    user = store.get_user("ann")
    idle = sessions.create(store, user, now=0.0)
    assert sessions.resume(store, idle, now=sessions.IDLE_SECONDS + 1) is None
    busy = sessions.create(store, user, now=0.0)
    t = 0.0
    while t + sessions.IDLE_SECONDS / 2 < sessions.ABSOLUTE_SECONDS:  # a click every half idle period
        t += sessions.IDLE_SECONDS / 2
        assert sessions.resume(store, busy, now=t) is not None
    assert sessions.resume(store, busy, now=sessions.ABSOLUTE_SECONDS + 1) is None


def test_a_deleted_or_re_roled_user_is_signed_out(store):
    token = sessions.create(store, store.get_user("ann"))
    with store.connect() as conn:
        conn.execute("UPDATE users SET role = 'client' WHERE username = 'ann'")
    assert sessions.resume(store, token) is None
    token = sessions.create(store, store.get_user("ann"))
    with store.connect() as conn:
        conn.execute("DELETE FROM users WHERE username = 'ann'")
    assert sessions.resume(store, token) is None


def test_the_cookie_script_sets_and_clears_only_the_session_cookie():
    assert "studio_session=abc; Max-Age=604800; Path=/; SameSite=Strict" in sessions.cookie_script("abc")
    assert "studio_session=; Max-Age=0" in sessions.cookie_script(None)


def test_an_admin_change_through_the_users_api_ends_the_ui_sessions_at_once(store):
    """Reset password, change role, delete: each ends the user's open UI sessions, like their API tokens."""
    for change in (lambda: store.set_password("ann", "another-long-password"),
                   lambda: store.set_role("ann", "annotator"),  # even a role set to the same one
                   lambda: store.delete_user("ann")):
        token = sessions.create(store, store.get_user("ann"))
        change()
        assert sessions.resume(store, token) is None
