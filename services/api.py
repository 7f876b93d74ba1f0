"""The Flask API: ``create_app(config=None)`` builds it; JWT auth, roles, jobs, health, OpenAPI, Socket.IO.

Run it under gunicorn (``services.web.wsgi:app``); users are made with
``flask --app services.api create-user USERNAME --role ROLE``.
"""

from __future__ import annotations

import getpass
import logging
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from html import escape

import click
from flask import Blueprint, Flask, current_app, request
from flask.cli import with_appcontext
from flask_jwt_extended import JWTManager, create_access_token, decode_token, get_jwt
from flask_socketio import SocketIO, disconnect, join_room, leave_room, rooms
from pydantic import BaseModel, Field
from socketio.exceptions import ConnectionRefusedError as ConnectionRefused
from werkzeug.exceptions import HTTPException

import redis
import services
from engine.exceptions import Conflict, InvalidInput, NotFound
from services.app import jobs as job_actions
from services.app import sign_in
from services.app.jobs import JobsQuery
from services.app.rules import Forbidden
from services.app.users import WeakPassword, add_user, on_tokens_revoked, token_problem
from services.jobs import runtime as jobs
from services.jobs.kinds import load_job_kinds
from services.platform.config import ROLES, Config
from services.platform.throttle import TokenBucket
from services.storage.store import open_store
from services.web.http import (
    ApiError,
    Studio,
    actor,
    endpoint,
    from_invalid_input,
    ok,
    openapi_spec,
    run_blocking,
    studio,
)
from services.web.routes import BLUEPRINTS
from services.web.routes.users import bp as users_bp

log = logging.getLogger(__name__)
jwt = JWTManager()
# The largest Socket.IO message (or long-polling body) a client may send; the clients send tiny JSON events.
SOCKET_MAX_MESSAGE_BYTES = 16 * 1024
socketio = SocketIO(max_http_buffer_size=SOCKET_MAX_MESSAGE_BYTES)


class LegacyJwtHeader:
    """WSGI middleware: accept the legacy API's ``Authorization: JWT <token>`` as well as ``Bearer <token>``."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if auth[:4].lower() == "jwt ":
            environ["HTTP_AUTHORIZATION"] = "Bearer " + auth[4:].strip()
        return self.wsgi_app(environ, start_response)


def socket_async_mode() -> str:
    """``gevent`` inside gunicorn's gevent worker (which patched the standard library), else ``threading``."""
    try:
        from gevent import monkey
    except ImportError:
        return "threading"
    return "gevent" if monkey.is_module_patched("socket") else "threading"


def create_app(config: Config | None = None) -> Flask:
    """Build the API application for ``config`` (default: read from the environment)."""
    config = config or Config.from_env()
    config.ensure_dirs()
    app = Flask(__name__)
    app.config.update(
        JWT_SECRET_KEY=config.secret_key(), JWT_ACCESS_TOKEN_EXPIRES=timedelta(minutes=config.token_minutes),
        JWT_TOKEN_LOCATION=["headers"], MAX_CONTENT_LENGTH=config.max_upload_mb * 1024 * 1024,
        JSON_SORT_KEYS=False)
    app.extensions["studio"] = Studio(config, open_store(config.data_dir))
    load_job_kinds(config)
    app.wsgi_app = LegacyJwtHeader(app.wsgi_app)
    jwt.init_app(app)
    socketio.init_app(app, async_mode=socket_async_mode(), message_queue=config.effective_redis_url,
                      cors_allowed_origins=config.allowed_origins, logger=False, engineio_logger=False)
    SocketBudget.install(socketio.server)
    app.register_blueprint(core)
    app.register_blueprint(users_bp)
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    _register_error_handlers(app)
    app.after_request(_security_headers)
    app.cli.add_command(create_user_command)
    return app


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",  # an uploaded file is never run as a script or a page
    "X-Frame-Options": "DENY",  # no page of the API inside someone else's frame (clickjacking)
    "Content-Security-Policy": "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
}


def _security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _register_error_handlers(app: Flask) -> None:
    """One mapping from the project's exceptions to HTTP answers, all in the error shape."""
    app.register_error_handler(ApiError, lambda e: e.response())
    app.register_error_handler(InvalidInput, lambda e: from_invalid_input(e).response())
    app.register_error_handler(NotFound, lambda e: ApiError(404, "not_found", str(e), e.field).response())
    app.register_error_handler(Conflict, lambda e: ApiError(409, "conflict", str(e), e.field).response())
    # An action's own rule (services.app.rules) refused: the route already asked it, so this is ownership.
    app.register_error_handler(Forbidden, lambda e: ApiError(403, "forbidden", str(e), e.field).response())

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = {413: "too_large", 404: "not_found", 405: "method_not_allowed",
                429: "too_many_requests"}.get(exc.code, "http_error")
        message = f"the request body exceeds {studio().config.max_upload_mb} MB" if exc.code == 413 else exc.description
        if exc.code == 429:
            message = "too many failed sign-ins; wait before trying again (see Retry-After)"
        return ApiError(exc.code or 500, code, message).response()

    @app.errorhandler(redis.exceptions.RedisError)
    def redis_down(exc):
        log.warning("Redis unavailable: %s", exc)
        return ApiError(503, "queue_unavailable", "the job queue (Redis) is unreachable; try again shortly").response()

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return ApiError(500, "internal", "internal error; the server log has the details").response()


# --- routes --------------------------------------------------------------------------------------
core = Blueprint("core", __name__)


def issue_token(user) -> str:
    """An access token for ``user`` (a user row): its name, role and token version (inside an app context)."""
    return create_access_token(identity=user["username"],
                               additional_claims={"role": user["role"], "tv": user["token_version"]})


class AuthBody(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


@endpoint(core, "/auth", ("POST",), action="sign_in", body=AuthBody)
def auth(body: AuthBody):
    """Exchange a username and password for an access token (repeated failures wait longer and longer: 429)."""
    # One throttle for this door and the UI's form; scrypt holds the CPU, so the check runs off the event loop.
    outcome = sign_in.attempt(studio().config, body.username, request.remote_addr,
                              lambda: run_blocking(studio().store.check_password, body.username, body.password))
    if outcome.wait:
        raise ApiError(429, "too_many_requests", f"too many failed sign-ins; try again in {outcome.wait} s",
                       headers={"Retry-After": str(outcome.wait)})
    user = outcome.user
    if user is None:
        raise ApiError(401, "bad_credentials", "wrong username or password")
    token = issue_token(user)
    return ok({"access_token": token, "role": user["role"],
               "expires_in": studio().config.token_minutes * 60})


@endpoint(core, "/auth/logout", ("POST",), action="sign_out")
def logout():
    """Revoke the token this request carries (other sessions of the user stay signed in)."""
    claims = get_jwt()
    studio().store.revoke_token(claims["jti"], float(claims["exp"]))
    live_sockets.drop(lambda entry: entry.jti == claims["jti"])
    return ok({"revoked": True})


@endpoint(core, "/health")
def health():
    """Whether Redis is reachable and how many workers are alive."""
    try:
        jobs.redis_connection(studio().config.effective_redis_url).ping()
        workers, redis_ok = jobs.live_workers(studio().config), True
    except redis.exceptions.RedisError:
        workers, redis_ok = 0, False
    body = {"redis": redis_ok, "workers": workers, "version": services.__version__}
    return ok(body, 200 if redis_ok else 503)


@endpoint(core, "/api/v1/openapi.json")
def openapi():
    """This API described as OpenAPI 3.1."""
    return ok(openapi_spec(current_app))


@endpoint(core, "/api/v1/docs")
def docs():
    """A readable page of every route, its roles and its body."""
    spec = openapi_spec(current_app)
    rows = "".join(
        f"<tr><td>{m.upper()}</td><td><code>{escape(p)}</code></td><td>{escape(op['summary'])}</td>"
        f"<td>{', '.join(op.get('x-roles', ['public']))}</td></tr>"
        for p, ops in sorted(spec["paths"].items()) for m, op in ops.items())
    return (f"<!doctype html><title>API docs</title><h1>PyTorch Automation Studio API</h1>"
            f"<p>Machine-readable: <a href='/api/v1/openapi.json'>openapi.json</a></p>"
            f"<table border=1 cellpadding=4><tr><th>method</th><th>path</th><th>what</th><th>roles</th></tr>"
            f"{rows}</table>")


@endpoint(core, "/api/v1/jobs", action="jobs.read", query=JobsQuery)
def list_jobs(query: JobsQuery):
    """Jobs, newest first, filterable by kind and status."""
    return ok({"jobs": job_actions.read_jobs(actor(), query)})


@endpoint(core, "/api/v1/jobs/<job_id>", action="jobs.read")
def get_job(job_id: str):
    """One job: status, progress, metrics history, result, error."""
    return ok(job_actions.read_job(actor(), job_id))


@endpoint(core, "/api/v1/jobs/<job_id>", ("POST",), action="jobs.read", summary="Legacy job metrics",
          name="seed_job_metrics")  # the operationId published before the view was renamed
def legacy_job_metrics(job_id: str):
    """The legacy API's view of a training job: loss and accuracy lists per epoch."""
    record = job_actions.read_job(actor(), job_id)
    history = record["history"] or []
    return ok({"job_id": job_id, "job_status": record["status"],
               "training_loss": [h.get("train_loss") for h in history],
               "testing_loss": [h.get("test_loss") for h in history],
               "training_accuracy": [h.get("train_accuracy") for h in history],
               "testing_accuracy": [h.get("test_accuracy") for h in history]})


@endpoint(core, "/api/v1/jobs/<job_id>/cancel", ("POST",), action="jobs.cancel")
def cancel_job(job_id: str):
    """Cancel a queued or running job."""
    return ok(job_actions.cancel_job(actor(), job_id))


# --- Socket.IO -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LiveSocket:
    """What a connected socket was authenticated with, to drop it when that stops being true."""

    sid: str
    namespace: str
    username: str
    jti: str
    expires_at: float
    claims: dict


class LiveSockets:
    """The connected sockets of this process; a sweeper thread drops the expired and the revoked."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], LiveSocket] = {}
        self._sweeper_started = False

    def add(self, entry: LiveSocket, app: Flask) -> None:
        with self._lock:
            self._entries[(entry.sid, entry.namespace)] = entry
            start, self._sweeper_started = not self._sweeper_started, True
        if start:
            socketio.start_background_task(self._sweep_forever, app)

    def remove(self, sid: str, namespace: str) -> None:
        with self._lock:
            self._entries.pop((sid, namespace), None)

    def get(self, sid: str, namespace: str) -> LiveSocket | None:
        with self._lock:
            return self._entries.get((sid, namespace))

    def drop(self, predicate) -> int:
        """Disconnect every socket whose entry satisfies ``predicate``; returns how many."""
        with self._lock:
            doomed = [e for e in self._entries.values() if predicate(e)]
        for entry in doomed:
            self.remove(entry.sid, entry.namespace)
            socketio.server.disconnect(entry.sid, namespace=entry.namespace)
        return len(doomed)

    def sweep(self, store) -> int:
        """Drop the sockets whose token has expired or was revoked since they connected."""
        now = time.time()
        return self.drop(lambda e: e.expires_at <= now or token_problem(store, e.claims)[0] is None)

    def _sweep_forever(self, app: Flask) -> None:
        while True:
            socketio.sleep(SOCKET_SWEEP_SECONDS)
            try:
                self.sweep(app.extensions["studio"].store)
            except Exception:  # a sweep that fails (catalog busy) is retried at the next tick
                log.exception("socket sweep failed")


SOCKET_SWEEP_SECONDS = 2.0
live_sockets = LiveSockets()
# The users actions (services.app.users) say whose tokens they revoke; their sockets go at once, not at the sweep.
on_tokens_revoked(lambda username: live_sockets.drop(lambda entry: entry.username == username))

# What one Socket.IO connection (an Engine.IO session, with every namespace it opens) may send: each packet
# (an event, a namespace connect, an acknowledgement, a ping) spends a token, refilled at a steady rate.
SOCKET_EVENTS_PER_SECOND = 10.0  # sustained rate
SOCKET_EVENT_BURST = 30  # at once, e.g. a page subscribing to each job it lists
SOCKET_MAX_JOB_ROOMS = 30  # jobs one connection follows at a time (``subscribe``; ``unsubscribe`` frees one)
JOB_ID_MAX_CHARS = 64  # job ids are 32 hex digits


class SocketBudget:
    """Holds every Socket.IO connection to its budget before any packet is parsed or run.

    A websocket pays for each frame as it is read, whatever its Engine.IO type; a long-polling client for
    each message of its POSTs. Either way a packet over budget reaches neither Socket.IO's parser nor a
    greenlet of its own (Socket.IO starts one per event). A connection over budget, or one that sends
    what Engine.IO or Socket.IO cannot decode, is told once (a ``refused`` event on each namespace it
    joined), closed and logged in one line; what it still had in flight is dropped unread. A bucket lives
    and dies with its connection (``limits``' memory storage would scan every key on a timer).
    """

    def __init__(self, server):
        self._server = server
        self._buckets: dict[str, TokenBucket] = {}
        self._dispatch = server.eio.handlers["message"]
        self._forget = server.eio.handlers["disconnect"]

    @classmethod
    def install(cls, server) -> SocketBudget:
        """Put a budget in front of ``server`` (a ``socketio.Server``) for every connection."""
        budget, eio = cls(server), server.eio
        eio.on("message", budget.on_message)
        eio.on("disconnect", budget.on_disconnect)
        eio.disconnect = budget.close
        eio.logger.addFilter(_one_line_for_client_faults)
        _guard_websocket_transport(eio, budget)
        return budget

    def spend(self, connection) -> bool:
        """Take one of the connection's tokens; one over budget is refused and closed (False)."""
        if connection.closing or connection.closed:
            return False  # in flight when it was closed
        bucket = self._buckets.get(connection.sid)
        if bucket is None:
            bucket = self._buckets[connection.sid] = TokenBucket(SOCKET_EVENT_BURST, SOCKET_EVENTS_PER_SECOND)
        if bucket.take():
            return True
        self.refuse(connection, f"too many events: a connection may send {SOCKET_EVENTS_PER_SECOND:g} a second, "
                                f"{SOCKET_EVENT_BURST} at once")
        return False

    def on_message(self, eio_sid: str, data) -> None:
        """Pass one message to Socket.IO if its connection is open and within its budget."""
        connection = self._server.eio.sockets.get(eio_sid)
        if connection is None or connection.closing or connection.closed:
            return
        if not connection.upgraded and not self.spend(connection):  # a websocket paid as the frame arrived
            return
        try:
            self._dispatch(eio_sid, data)
        except Exception as exc:  # noqa: BLE001 - a malformed packet: one log line, never a traceback per packet
            self.refuse(connection, f"a packet the server cannot decode ({type(exc).__name__})")

    def on_disconnect(self, eio_sid: str, *reason) -> None:
        """Forget the connection's budget, then let Socket.IO end its namespaces."""
        self._buckets.pop(eio_sid, None)
        self._forget(eio_sid, *reason)

    def refuse(self, connection, reason: str) -> None:
        """Tell the connection why on each namespace it joined, then close it."""
        if connection.closing or connection.closed:
            return
        log.warning("Socket.IO connection %s from %s closed: %s", connection.sid,
                    self._server.environ.get(connection.sid, {}).get("REMOTE_ADDR", "?"), reason)
        manager, told = self._server.manager, {"error": f"{reason}; the connection is closed"}
        for namespace in list(manager.get_namespaces()):
            sid = manager.sid_from_eio_sid(connection.sid, namespace)
            if sid is not None:
                self._server.emit("refused", told, to=sid, namespace=namespace, ignore_queue=True)
        self.close(connection.sid)

    def close(self, sid: str | None = None) -> None:
        """Engine.IO's ``disconnect``, without waiting until the client has read the close packet.

        Engine.IO waits (it calls it for an oversized or undecodable long-polling POST), and a client that
        never polls again held that request's greenlet and socket for good, before any sign-in. A
        websocket's writer still sends the close packet; a polling client's next poll finds no session.
        """
        eio = self._server.eio
        for connection in [eio.sockets.get(sid)] if sid is not None else list(eio.sockets.values()):
            if connection is not None:
                connection.close(wait=False, reason=eio.reason.SERVER_DISCONNECT)
                eio.sockets.pop(connection.sid, None)


def _one_line_for_client_faults(record: logging.LogRecord) -> bool:
    """Log what a client's bad input raised inside Engine.IO (a POST of too many packets) without a traceback."""
    if record.exc_info and isinstance(record.exc_info[1], ValueError):
        record.msg, record.args = f"{record.getMessage()}: {record.exc_info[1]}", ()
        record.exc_info = record.exc_text = None
    return True


class _TakingTurns:
    """A client socket whose every read first lets the other greenlets run.

    simple-websocket reads and decodes a connection's frames in a loop that, while the client has data
    waiting, never yields: 10,000 events sent at once held the event loop for 0.25 s before the budget saw
    the first. Taking turns lets the budget close a flooding connection after its first few kilobytes.
    """

    def __init__(self, sock):
        self._sock = sock

    def recv(self, size: int) -> bytes:
        socketio.sleep(0)
        return self._sock.recv(size)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def _guard_websocket_transport(eio, budget: SocketBudget) -> None:
    """Make the websocket transport bound each message as it arrives, charge each frame and read in turns.

    Engine.IO compares a websocket message with ``max_http_buffer_size`` only once it has been read whole,
    and its gevent and threading transports (simple-websocket) set no limit of their own: one 200 MB frame,
    sent before any sign-in, held 400 MB for 10 s. simple-websocket's ``max_message_size`` stops reading at
    the limit (close code 1009). Engine.IO also answers each ``upgrade`` frame, budget or not, and a frame
    it cannot decode escaped its read loop as a traceback. Engine.IO offers no option for any of these,
    hence the subclass of its transport.
    """
    from engineio.async_drivers._websocket_wsgi import SimpleWebSocketWSGI

    transport = eio._async.get("websocket")
    if not (isinstance(transport, type) and issubclass(transport, SimpleWebSocketWSGI)):
        return  # another websocket server, with limits of its own

    class GuardedWebSocket(transport):
        def __init__(self, handler, server):
            self.connection = handler.__self__  # the Engine.IO socket whose read loop this is

            def read_loop(ws):
                try:
                    return handler(ws)
                except Exception as exc:  # noqa: BLE001 - an undecodable frame: one log line, not a traceback
                    budget.refuse(self.connection, f"a frame the server cannot decode ({type(exc).__name__})")
                    return []

            super().__init__(read_loop, server)
            self.server_args["max_message_size"] = server.max_http_buffer_size

        def __call__(self, environ, start_response):
            if "gunicorn.socket" in environ:  # where simple-websocket finds the client's socket under gunicorn
                environ = {**environ, "gunicorn.socket": _TakingTurns(environ["gunicorn.socket"])}
            return super().__call__(environ, start_response)

        def wait(self):
            frame = super().wait()
            return frame if frame is None or budget.spend(self.connection) else None

    eio._async = {**eio._async, "websocket": GuardedWebSocket}  # this server only; the driver's table is shared


def _socket_user(auth) -> dict:
    """Authenticate a connecting socket and remember it; refuse it without a valid, unrevoked token.

    Socket.IO's own ``ConnectionRefusedError`` hands its message to the client (the built-in one is
    answered with a bare "Connection refused by server").
    """
    token = (auth or {}).get("token") if isinstance(auth, dict) else None
    token = token or request.args.get("token")
    if not token or not isinstance(token, str):
        raise ConnectionRefused("a token is required: connect with auth={'token': ...} or ?token=")
    try:
        claims = decode_token(token)
    except Exception:
        raise ConnectionRefused("the token is invalid or expired") from None
    user, problem = token_problem(studio().store, claims)
    if user is None:
        raise ConnectionRefused(problem)
    live_sockets.add(LiveSocket(request.sid, request.namespace, user["username"], str(claims.get("jti", "")),
                                float(claims["exp"]), claims), current_app._get_current_object())
    return user


def _current_socket_user() -> dict | None:
    """The user of this socket if its token still stands; otherwise the socket is disconnected."""
    entry = live_sockets.get(request.sid, request.namespace)
    user = None
    if entry is not None and entry.expires_at > time.time():
        user = token_problem(studio().store, entry.claims)[0]
    if user is None:
        live_sockets.remove(request.sid, request.namespace)
        disconnect()
    return user


def _join_job_rooms(user: dict) -> None:
    join_room(f"jobs:user:{user['username']}")
    if job_actions.reads_every_job(user):
        join_room("jobs:all")


@socketio.on("connect")
def root_connect(auth=None):
    """The default namespace carries nothing, but it too refuses a connection without a token."""
    _socket_user(auth)


@socketio.on("connect", namespace="/test")
def legacy_connect(auth=None):
    """The legacy API's namespace: every ``my_response`` of the jobs the user may read."""
    _join_job_rooms(_socket_user(auth))


@socketio.on("connect", namespace="/jobs")
def jobs_connect(auth=None):
    _socket_user(auth)


for _namespace in ("/", "/test", "/jobs"):
    socketio.on("disconnect", namespace=_namespace)(lambda *args: live_sockets.remove(request.sid, request.namespace))


@socketio.on_error_default
def socket_event_failed(exc: Exception):
    """An event handler that failed: logged, and answered like any refusal; a connect that failed is refused.

    (Flask-SocketIO would otherwise accept a connection whose handler raised, taking this answer for a yes.)
    """
    log.error("Socket.IO %s on %s failed: %r", request.event["message"], request.namespace, exc, exc_info=exc)
    if request.event["message"] == "connect":
        raise ConnectionRefused("the server could not check the token; try again shortly") from exc
    return {"ok": False, "error": "internal error; the server log has the details"}


def _job_id(data) -> str | None:
    """The job id of a ``subscribe``/``unsubscribe`` payload (``{"job_id": ...}`` or the id alone), else None."""
    job_id = data.get("job_id") if isinstance(data, dict) else data
    return job_id if isinstance(job_id, str) and 0 < len(job_id) <= JOB_ID_MAX_CHARS else None


def _bad_job_id() -> dict:
    return {"ok": False, "field": "job_id",
            "error": f"job_id must be a job id: a string of 1 to {JOB_ID_MAX_CHARS} characters"}


@socketio.on("subscribe", namespace="/jobs")
def jobs_subscribe(data=None):
    """Receive the events of one job (``progress``, ``epoch``, ``finished``, ``failed``, ``cancelled``)."""
    user = _current_socket_user()
    if user is None:
        return {"ok": False, "error": "not authenticated"}
    job_id = _job_id(data)
    if job_id is None:
        return _bad_job_id()
    following = [room for room in rooms(namespace="/jobs") if room.startswith("job:")]
    if f"job:{job_id}" not in following and len(following) >= SOCKET_MAX_JOB_ROOMS:
        return {"ok": False, "field": "job_id",
                "error": f"a connection follows at most {SOCKET_MAX_JOB_ROOMS} jobs: unsubscribe from one first"}
    record = studio().store.get_job(job_id)
    if record is None or not _may_read(user, record):
        return {"ok": False, "error": f"no job '{job_id}'", "field": "job_id"}
    join_room(f"job:{job_id}")
    return {"ok": True, "job_id": job_id, "status": record["status"]}


@socketio.on("unsubscribe", namespace="/jobs")
def jobs_unsubscribe(data=None):
    """Stop receiving the events of one job (which frees a place among the jobs a connection may follow)."""
    if _current_socket_user() is None:
        return {"ok": False, "error": "not authenticated"}
    job_id = _job_id(data)
    if job_id is None:
        return _bad_job_id()
    leave_room(f"job:{job_id}")
    return {"ok": True, "job_id": job_id}


def _may_read(user: dict, record: dict) -> bool:
    return job_actions.may_read_job(user, record)  # the jobs.read rule, as every other door asks it


# --- CLI -----------------------------------------------------------------------------------------
@click.command("create-user")
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), default="operator", show_default=True)
@with_appcontext
def create_user_command(username: str, role: str) -> None:
    """Create a user; the password is read from standard input when it is not a terminal."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat: ") != password:
            raise click.ClickException("the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    # The command line is the studio itself (no signed-in admin): the plain function below the users.create action.
    try:
        add_user(studio().store, username, password, role)
    except WeakPassword as exc:
        raise click.ClickException(exc.problem) from None
    except (Conflict, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created user {username!r} with role {role!r}")
