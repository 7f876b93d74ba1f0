"""The UI server's guard: bounded request bodies and websocket messages, uploads only after sign-in, no framing.

Streamlit's own server takes an upload for any live session (the sign-in page has one) up to
``server.maxUploadSize`` and keeps it in memory, and a route of ours read whole bodies before refusing them.
:class:`UiGuard`, the ASGI middleware ``ui_app.py`` puts in front of every request of the UI, refuses:

* an upload (``/_stcore/upload_file/...``) without a live sign-in cookie (:data:`services.ui.sessions.COOKIE`):
  401, before any of the body is read;
* a body over its bound (:func:`upload_limit_bytes` for uploads, :data:`MAX_BODY_BYTES` for anything else):
  413 at once when its ``Content-Length`` says so, and as soon as the count passes the bound while it streams
  (a chunked body declares no length);

and adds :data:`FRAME_HEADERS` to every answer, so no other site can frame the UI's pages (clickjacking).
A refusal closes the connection, so the rest of a refused body is never read either.

Streamlit's websocket (``/_stcore/stream``, one per browser tab) is bounded twice. Its server refuses a
message over ``server.maxMessageSize`` (``.streamlit/config.toml``) from the frame's header, before reading
it. The guard then closes a connection (one log line, close code 1008 or 1009) that sends:

* more messages than its budget: :data:`MESSAGES_PER_SECOND`, with bursts of :data:`MESSAGE_BURST`;
* a message over :data:`SIGNED_OUT_MESSAGE_BYTES` while nobody is signed in on it: neither a live sign-in cookie
  nor a live session token in the Streamlit session behind it (a tab signs in over its websocket and gets its
  cookie only afterwards, so the connection it signed in on carries none);
* a text message, or one that is not a Streamlit ``BackMsg`` (Streamlit would log a traceback for each).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse

from services.app.rules import may
from services.platform.config import Config
from services.platform.throttle import TokenBucket
from services.storage.store import Store, open_store
from services.ui import sessions

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MB = 1024 * 1024
UPLOAD_PATH = "/_stcore/upload_file/"  # Streamlit's file_uploader sends each file here (PUT), under a base path
MAX_BODY_BYTES = 64 * 1024  # every other request of the UI: the cookie route's claim code, Streamlit's own
UPLOAD_FRAMING_BYTES = MB  # a multipart body's boundaries and part headers around the file (as Streamlit allows)
# Streamlit keeps an uploaded file in the UI process's memory: bigger datasets go through the API. The dataset
# uploader (services.ui.dataset_upload) offers this much; .streamlit/config.toml's server.maxUploadSize matches it.
UI_DATASET_UPLOAD_MB = 1024
FRAME_HEADERS = ((b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"))
# A tab's websocket carries a message per click, widget change, heartbeat or live-panel redraw: at most 4 in a
# second and 9 in five in the browser tests. Most ask for a rerun, and each rerun holds the server's event loop
# ~50 ms (every tab waits): the burst bounds that stall at about half a second, the rate at a quarter of the time.
MESSAGES_PER_SECOND = 5
MESSAGE_BURST = 10
# The sign-in page's messages are a few KB; bigger widget values (the Segment canvas's strokes, 7.6 KB at most
# in the browser tests) come after sign-in. services.ui.page keeps a tab's token in its session state under this key.
SIGNED_OUT_MESSAGE_BYTES = 64 * 1024
# RFC 6455's close codes: protocol error, data it cannot accept (text), policy violation, message too big
CLOSE_NOT_STREAMLIT, CLOSE_TEXT, CLOSE_TOO_MANY, CLOSE_TOO_BIG = 1002, 1003, 1008, 1009

log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    """A request body passed its bound while it streamed."""


@functools.cache
def _config() -> Config:
    return Config.from_env()


@functools.cache
def _store() -> Store:
    return open_store(_config().data_dir)


def upload_limit_bytes(config: Config, user: dict) -> int:
    """The largest upload body ``user`` may send: a dataset (the Datasets page's limit) for the roles that may
    import datasets, a photo (``MAX_UPLOAD_MB``) for everyone else; plus the multipart framing."""
    if may("datasets.import", user):
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


def new_session_id(payload: bytes | None) -> str | None:
    """The Streamlit session id a ``new_session`` ForwardMsg announces; None for any other message."""
    from google.protobuf.message import DecodeError
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    msg = ForwardMsg()
    try:
        msg.ParseFromString(payload or b"")
    except DecodeError:  # not ours to judge: the browser gets it as Streamlit sent it
        return None
    if not msg.HasField("new_session"):
        return None
    return msg.new_session.initialize.session_id or None


def is_back_msg(payload: bytes) -> bool:
    """Whether ``payload`` parses as the browser's protobuf ``BackMsg`` (microseconds for the pages' messages)."""
    from google.protobuf.message import DecodeError
    from streamlit.proto.BackMsg_pb2 import BackMsg

    try:
        BackMsg().ParseFromString(payload)
    except DecodeError:
        return False
    return True


def session_token(session_id: str | None) -> str | None:
    """The sign-in token ``services.ui.page`` keeps in the state of the Streamlit session ``session_id``, if any.

    On the event loop's thread, as the runtime asks of its sessions.
    """
    from streamlit.runtime import Runtime

    session = Runtime.instance().get_app_session(session_id) if session_id and Runtime.exists() else None
    if session is None:
        return None
    try:
        token = session.session_state[sessions.STATE_KEY]
    except KeyError:
        return None
    return token if isinstance(token, str) else None


def is_live(token: str | None) -> bool:
    """Whether ``token`` is a live sign-in session (blocking: SQLite; run in a worker thread)."""
    return bool(token) and sessions.resume(_store(), token) is not None


@dataclass
class Stream:
    """One websocket connection to the UI: its message budget, and who may be signed in on it."""

    client: str
    cookie_token: str | None
    budget: TokenBucket = field(default_factory=lambda: TokenBucket(MESSAGE_BURST, MESSAGES_PER_SECOND))
    session_id: str | None = None  # the Streamlit session, once the server announced it
    closed: bool = False

    async def refusal(self, message: Message) -> tuple[int, str] | None:
        """Why ``message`` (a ``websocket.receive``) closes the connection; None when it may pass."""
        if not self.budget.take():
            return CLOSE_TOO_MANY, f"over {MESSAGES_PER_SECOND} messages a second ({MESSAGE_BURST} at once)"
        payload = message.get("bytes")
        if payload is None:
            return CLOSE_TEXT, "a text message: the UI's websocket carries binary protobuf"
        if len(payload) > SIGNED_OUT_MESSAGE_BYTES and not await self.signed_in():
            return CLOSE_TOO_BIG, (f"a message of {len(payload)} bytes before sign-in "
                                   f"(at most {SIGNED_OUT_MESSAGE_BYTES})")
        if not is_back_msg(payload):
            return CLOSE_NOT_STREAMLIT, "a message that is not a Streamlit BackMsg"
        return None

    async def signed_in(self) -> bool:
        """Whether a live session is signed in on this connection: its cookie's, or its Streamlit session's."""
        for token in (self.cookie_token, session_token(self.session_id)):
            if token and await run_in_threadpool(is_live, token):
                return True
        return False

    def receiving(self, receive: Receive, send: Send) -> Receive:
        """``receive`` that closes the connection on a refused message and tells the app it ended."""

        async def received() -> Message:
            message = await receive()
            if message["type"] != "websocket.receive" or self.closed:
                return message
            refused = await self.refusal(message)
            if refused is None:
                return message
            code, reason = refused
            log.warning("UI websocket from %s closed: %s", self.client, reason)
            self.closed = True
            with contextlib.suppress(OSError):  # uvicorn's ClientDisconnected: the browser left first
                await send({"type": "websocket.close", "code": code, "reason": reason[:120]})
            return {"type": "websocket.disconnect", "code": code, "reason": reason}

        return received

    def sending(self, send: Send) -> Send:
        """``send`` that learns the connection's Streamlit session and drops what the app sends once closed."""

        async def sending(message: Message) -> None:
            if self.closed and message["type"] in ("websocket.send", "websocket.close"):
                return  # the app's sender may still be draining its queue: the connection is gone
            if self.session_id is None and message["type"] == "websocket.send":
                self.session_id = new_session_id(message.get("bytes"))
            await send(message)

        return sending


class UiGuard:
    """ASGI middleware in front of the UI server (``st.App(..., middleware=[Middleware(UiGuard)])``)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            connection = HTTPConnection(scope)
            host, port = scope.get("client") or ("?", 0)
            stream = Stream(f"{host}:{port}", connection.cookies.get(sessions.COOKIE))
            await self.app(scope, stream.receiving(receive, send), stream.sending(send))
            return
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
