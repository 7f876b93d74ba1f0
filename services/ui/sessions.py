"""UI sign-in sessions that survive a reload: an opaque random token in a cookie, its hash in the catalog.

Streamlit keeps ``st.session_state`` per websocket, so a reload or a typed address starts afresh; the
browser's cookie (read with ``st.context.cookies``) carries the token across. The UI server sets that cookie
HttpOnly (``services/ui/session_routes.py``), in exchange for a one-time claim code the page hands the browser.
A session ends when idle for :data:`IDLE_SECONDS`, :data:`ABSOLUTE_SECONDS` after sign-in, on sign-out, and
when its user is deleted or their role changes.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time

from services.storage.rows import Session
from services.storage.store import Store

COOKIE = "studio_session"
STATE_KEY = "session_token"  # where a Streamlit session keeps its token (st.session_state), beside the cookie
IDLE_SECONDS = 8 * 3600  # a working day without a click ends the session
ABSOLUTE_SECONDS = 7 * 24 * 3600  # a stolen cookie is worth a week at most
TOUCH_EVERY = 60  # seconds between last_seen writes: not one write per widget click


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create(store: Store, user: dict, now: float | None = None) -> str:
    """Open a session for ``user`` (a catalog row); returns the token for the browser (never stored)."""
    token = secrets.token_urlsafe(32)
    now = time.time() if now is None else now
    store.add_session(Session(token_hash=_hash(token), username=user["username"], role=user["role"],
                              created_at=now, last_seen=now))
    return token


def resume(store: Store, token: str | None, now: float | None = None) -> dict | None:
    """The user of a live session, read afresh from the catalog; None (and the session revoked) otherwise.

    A session is dead when unknown, revoked, idle or past its absolute lifetime, or when its user was
    deleted or given another role since sign-in, or when the account of that name was made after it.
    """
    if not isinstance(token, str) or not token or len(token) > 256:
        return None
    now = time.time() if now is None else now
    key = _hash(token)
    session = store.get_session(key)
    if session is None or session.revoked_at is not None:
        return None
    user = store.get_user(session.username)
    expired = now - session.last_seen > IDLE_SECONDS or now - session.created_at > ABSOLUTE_SECONDS
    # A session older than its account belongs to a deleted account of the same name (deletion also ends
    # its sessions; this holds even for a row removed some other way).
    if expired or user is None or user.role != session.role or session.created_at < user.created_at:
        revoke(store, token, now)
        return None
    if now - session.last_seen > TOUCH_EVERY:
        store.touch_session(key, now)
    return user.to_dict()


def revoke(store: Store, token: str | None, now: float | None = None) -> None:
    """End the session of ``token`` (sign-out); unknown tokens are ignored."""
    if token:
        store.revoke_session(_hash(token), time.time() if now is None else now)


CLAIM_SECONDS = 60  # a claim code is spent at once by the page that received it
COOKIE_ROUTE = "/_studio/session"  # served by the UI server itself (ui_app.py), never by a page script
_claims: dict[str, tuple[str, float]] = {}
_claims_lock = threading.Lock()


def claim_code(token: str, now: float | None = None) -> str:
    """A one-time code the browser trades at :data:`COOKIE_ROUTE` for the HttpOnly cookie holding ``token``.

    The token itself never reaches a page script: the code is spent once, within :data:`CLAIM_SECONDS`, and
    is kept (hashed) only in this UI process, the one that serves both the page and the route.
    """
    code = secrets.token_urlsafe(32)
    now = time.time() if now is None else now
    with _claims_lock:
        for key in [k for k, (_t, until) in _claims.items() if until < now]:
            del _claims[key]
        _claims[_hash(code)] = (token, now + CLAIM_SECONDS)
    return code


def redeem(code: str, now: float | None = None) -> str | None:
    """The token a claim code stands for, once (None when unknown, spent or expired)."""
    now = time.time() if now is None else now
    with _claims_lock:
        token, until = _claims.pop(_hash(code), (None, 0.0))
    return token if until >= now else None


def cookie_script(token: str | None) -> str:
    """JavaScript that has the UI server set the browser's session cookie for ``token`` (None: delete it).

    The server answers with ``Set-Cookie: ...; HttpOnly; SameSite=Strict`` (Secure over HTTPS), so no script
    on the page can read the token; the page only passes on a one-time :func:`claim_code`.
    """
    body = claim_code(token) if token else ""
    return ("<script>fetch(" + json.dumps(COOKIE_ROUTE) + ",{method:'POST',credentials:'same-origin',"
            "headers:{'Content-Type':'text/plain'},body:" + json.dumps(body) + "});</script>")
