"""UI sessions: the token works until it expires, is revoked, or its user changes; the catalog holds no token."""

from __future__ import annotations

import pytest

from services.storage.store import open_store
from services.ui import sessions


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path)
    s.create_user("ann", "password-1", "annotator")
    return s


def test_a_token_signs_in_until_revoked_and_only_its_hash_is_kept(store):
    t0 = store.get_user("ann").created_at  # sessions begin after their account
    token = sessions.create(store, store.get_user("ann"), now=t0 + 1000.0)
    assert sessions.resume(store, token, now=t0 + 1010.0)["username"] == "ann"
    assert token.encode() not in store.path.read_bytes() + store.path.with_name("catalog.sqlite3-wal").read_bytes()
    sessions.revoke(store, token)
    assert sessions.resume(store, token, now=t0 + 1020.0) is None
    assert sessions.resume(store, "not-a-token") is None and sessions.resume(store, None) is None


def test_idle_and_absolute_expiry(store):
    user = store.get_user("ann")
    t0 = user.created_at
    idle = sessions.create(store, user, now=t0)
    assert sessions.resume(store, idle, now=t0 + sessions.IDLE_SECONDS + 1) is None
    busy = sessions.create(store, user, now=t0)
    t = 0.0
    while t + sessions.IDLE_SECONDS / 2 < sessions.ABSOLUTE_SECONDS:  # a click every half idle period
        t += sessions.IDLE_SECONDS / 2
        assert sessions.resume(store, busy, now=t0 + t) is not None
    assert sessions.resume(store, busy, now=t0 + sessions.ABSOLUTE_SECONDS + 1) is None


def test_a_deleted_or_re_roled_user_is_signed_out(store):
    token = sessions.create(store, store.get_user("ann"))
    with store.connect() as conn:
        conn.execute("UPDATE users SET role = 'client' WHERE username = 'ann'")
    assert sessions.resume(store, token) is None
    token = sessions.create(store, store.get_user("ann"))
    with store.connect() as conn:
        conn.execute("DELETE FROM users WHERE username = 'ann'")
    assert sessions.resume(store, token) is None


def test_a_session_of_a_deleted_account_does_not_sign_in_a_new_account_of_that_name(store):
    token = sessions.create(store, store.get_user("ann"))
    with store.connect() as conn:  # a row removed without the store's delete_user (which also ends sessions)
        conn.execute("DELETE FROM users WHERE username = 'ann'")
    store.create_user("ann", "password-2", "annotator")  # the same name and role, made later
    assert sessions.resume(store, token) is None


def post_to_cookie_route(body: str, scheme: str = "http",
                         headers: tuple[tuple[bytes, bytes], ...] = ((b"sec-fetch-site", b"same-origin"),),
                         ) -> tuple[int, list[str]]:
    """POST ``body`` to the UI server's cookie route as the browser would from the UI's own page (its
    ``headers``); (status, Set-Cookie headers)."""
    import asyncio
    import concurrent.futures

    from starlette.requests import Request

    from services.ui.session_routes import session_cookie

    async def receive() -> dict:
        return {"type": "http.request", "body": body.encode(), "more_body": False}

    scope = {"type": "http", "method": "POST", "path": sessions.COOKIE_ROUTE, "scheme": scheme,
             "headers": list(headers), "query_string": b"", "server": ("127.0.0.1", 8501)}
    # On a thread of its own: asyncio.run() refuses a thread whose loop is running (Playwright's, in a full run).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        response = pool.submit(asyncio.run, session_cookie(Request(scope, receive))).result()
    return response.status_code, [v.decode() for k, v in response.raw_headers if k == b"set-cookie"]


def test_the_page_never_sees_the_token_and_the_server_sets_it_httponly_once():
    script = sessions.cookie_script("the-token")
    assert "the-token" not in script and sessions.COOKIE_ROUTE in script
    code = script.split('body:"')[1].split('"')[0]
    status, cookies = post_to_cookie_route(code)
    assert status == 204 and len(cookies) == 1
    parts = {p.strip().lower() for p in cookies[0].split(";")}
    assert {"studio_session=the-token", "httponly", "samesite=strict", "max-age=604800", "path=/"} <= parts
    assert "secure" not in parts
    _status, over_https = post_to_cookie_route(sessions.claim_code("t2"), scheme="https")
    assert "secure" in {p.strip().lower() for p in over_https[0].split(";")}
    assert post_to_cookie_route(code) == (403, [])  # spent
    assert post_to_cookie_route(sessions.claim_code("t3", now=0.0)) == (403, [])  # expired long ago


def test_signing_out_deletes_the_cookie():
    assert sessions.COOKIE_ROUTE in sessions.cookie_script(None) and 'body:""' in sessions.cookie_script(None)
    status, cookies = post_to_cookie_route("")
    assert status == 204 and "studio_session=" in cookies[0] and "max-age=0" in cookies[0].lower()


def test_another_site_cannot_set_or_delete_the_cookie():
    """A cross-site form posting here (to sign a victim out, or in as someone else) gets 403 and no cookie."""
    code = sessions.claim_code("victim-token")
    for headers in (((b"sec-fetch-site", b"cross-site"),), ((b"origin", b"https://evil.example"),
                                                             (b"host", b"127.0.0.1:8501")), ()):
        assert post_to_cookie_route("", headers=headers) == (403, [])
        assert post_to_cookie_route(code, headers=headers) == (403, [])
    # Without Sec-Fetch-Site, an Origin naming the UI's own address is the UI's page; https there means Secure.
    own = ((b"origin", b"https://studio.example"), (b"host", b"studio.example"))
    status, cookies = post_to_cookie_route(code, headers=own)
    assert status == 204 and "secure" in {p.strip().lower() for p in cookies[0].split(";")}


def test_an_admin_change_through_the_users_api_ends_the_ui_sessions_at_once(store):
    """Reset password, change role, delete: each ends the user's open UI sessions, like their API tokens."""
    for change in (lambda: store.set_password("ann", "another-long-password"),
                   lambda: store.set_role("ann", "annotator"),  # even a role set to the same one
                   lambda: store.delete_user("ann")):
        token = sessions.create(store, store.get_user("ann"))
        change()
        assert sessions.resume(store, token) is None
