"""The UI server's guard: bounded request bodies, uploads only after sign-in, and no framing.

Streamlit's own server takes an upload for any live session (the sign-in page has one) up to
``server.maxUploadSize`` and keeps it in memory, and a route of ours read whole bodies before refusing them.
:class:`UiGuard`, the ASGI middleware ``ui_app.py`` puts in front of every HTTP request of the UI, refuses:

* an upload (``/_stcore/upload_file/...``) without a live sign-in cookie (:data:`services.sessions.COOKIE`):
  401, before any of the body is read;
* a body over its bound (:func:`upload_limit_bytes` for uploads, :data:`MAX_BODY_BYTES` for anything else):
  413 at once when its ``Content-Length`` says so, and as soon as the count passes the bound while it streams
  (a chunked body declares no length);

and adds :data:`FRAME_HEADERS` to every answer, so no other site can frame the UI's pages (clickjacking).
A refusal closes the connection, so the rest of a refused body is never read either.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse

from services import sessions
from services.config import Config
from services.permissions import allows
from services.store import Store, open_store

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MB = 1024 * 1024
UPLOAD_PATH = "/_stcore/upload_file/"  # Streamlit's file_uploader sends each file here (PUT), under a base path
MAX_BODY_BYTES = 64 * 1024  # every other request of the UI: the cookie route's claim code, Streamlit's own
UPLOAD_FRAMING_BYTES = MB  # a multipart body's boundaries and part headers around the file (as Streamlit allows)
DATASET_PAGE = "pages/datasets.py"  # its roles import datasets through the UI, so they may upload big files
# Streamlit keeps an uploaded file in the UI process's memory: bigger datasets go through the API. The dataset
# uploader (services.datasets_ui) offers this much; .streamlit/config.toml's server.maxUploadSize matches it.
UI_DATASET_UPLOAD_MB = 1024
FRAME_HEADERS = ((b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"))


class BodyTooLarge(Exception):
    """A request body passed its bound while it streamed."""


@functools.cache
def _config() -> Config:
    return Config.from_env()


@functools.cache
def _store() -> Store:
    return open_store(_config().data_dir)


def upload_limit_bytes(config: Config, user: dict) -> int:
    """The largest upload body ``user`` may send: a dataset (the Datasets page's limit) for the roles of that
    page, a photo (``MAX_UPLOAD_MB``) for everyone else; plus the multipart framing.

    Blocking on its first call, which imports the pages' helpers: the guard calls it in a worker thread.
    """
    # Imported late: ui_app.py imports this module before Streamlit's runtime exists, and the page helpers'
    # caches must be made inside it (made earlier, st.cache_data falls back to a storage of its own).
    from services.ui import page_roles

    if allows(page_roles(DATASET_PAGE), user):
        megabytes = min(config.max_dataset_mb, UI_DATASET_UPLOAD_MB)
    else:
        megabytes = config.max_upload_mb
    return megabytes * MB + UPLOAD_FRAMING_BYTES


def is_upload(scope: Scope) -> bool:
    """Whether the request is Streamlit's upload door (any method but the CORS preflight)."""
    return UPLOAD_PATH in scope["path"] and scope["method"] != "OPTIONS"


def signed_in_upload_limit(token: str | None) -> int | None:
    """How many bytes the user of the sign-in cookie ``token`` may upload; None when no session is live.

    Blocking (SQLite, and imports on the first call): the guard runs it in a worker thread.
    """
    user = sessions.resume(_store(), token) if token else None
    return None if user is None else upload_limit_bytes(_config(), user)


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``; -1 when it is not a number (refused like an over-long body)."""
    value = HTTPConnection(scope).headers.get("content-length")
    if value is None:
        return None
    return int(value) if value.strip().isdigit() else -1


async def read_at_most(request: Request, limit: int) -> bytes | None:
    """The request's body, or None as soon as it is known to be over ``limit`` bytes (nothing more is read)."""
    declared = declared_length(request.scope)
    if declared is not None and not 0 <= declared <= limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def refusal(status: int, message: str) -> PlainTextResponse:
    """A short answer that also ends the connection, so the rest of a refused body is never read."""
    return PlainTextResponse(message, status_code=status, headers={"Connection": "close", "Cache-Control": "no-store"})


def _counting(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"the request body is over {limit} bytes")
        return message

    return counted


def _with_frame_headers(send: Send, started: list[bool]) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            started[0] = True
            named = {name.lower() for name, _value in message.get("headers", [])}
            message["headers"] = [*message.get("headers", []), *(h for h in FRAME_HEADERS if h[0] not in named)]
        await send(message)

    return sending


class UiGuard:
    """ASGI middleware in front of the UI server (``st.App(..., middleware=[Middleware(UiGuard)])``)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = [False]
        send = _with_frame_headers(send, started)
        limit = MAX_BODY_BYTES
        if is_upload(scope):
            token = HTTPConnection(scope).cookies.get(sessions.COOKIE)
            limit = await run_in_threadpool(signed_in_upload_limit, token)
            if limit is None:
                await refusal(401, "sign in first: uploads are for signed-in users")(scope, receive, send)
                return
        declared = declared_length(scope)
        if declared is not None and not 0 <= declared <= limit:
            await refusal(413, f"the request body is over {limit} bytes")(scope, receive, send)
            return
        try:
            await self.app(scope, _counting(receive, limit), send)
        except BodyTooLarge as exc:
            if not started[0]:
                await refusal(413, str(exc))(scope, receive, send)

MESSAGE_BURST = 10
CLOSE_TOO_MANY, CLOSE_TOO_BIG = 1008, 1009
