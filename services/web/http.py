"""The HTTP conventions every route shares: one error type, one error shape, one endpoint decorator.

``endpoint`` declares a route's roles and body schema in one place; authentication, role checks, request
parsing and the OpenAPI document (``openapi_spec``) all read that declaration.
"""

from __future__ import annotations

import contextvars
import ctypes
import functools
import re
import threading
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, current_app, g, has_request_context, jsonify, request
from pydantic import BaseModel, ValidationError

from engine.exceptions import ImageTooLarge, InvalidInput
from services.app import rules
from services.app.quotas import InsufficientStorage, TooManyJobs
from services.app.rules import Forbidden
from services.app.validation import invalid_input_from
from services.platform.config import Config
from services.storage.store import Store


@dataclass(frozen=True)
class Studio:
    """What the routes share, kept on ``app.extensions["studio"]``."""

    config: Config
    store: Store


def studio() -> Studio:
    """The running app's configuration and catalog."""
    return current_app.extensions["studio"]


def actor() -> rules.Actor:
    """The request's user (authenticated by :func:`endpoint`) as the actor of an action of ``services.app``."""
    return rules.Actor(g.user, studio().config, studio().store)


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def scrub(message: str) -> str:
    """A message without Python object reprs (``<_io.BytesIO object at 0x...>`` tells users nothing)."""
    return _OBJECT_REPR.sub("the data", message)


class ApiError(Exception):
    """Any non-2xx answer: ``{"error": code, "message": what to fix, "field": name or null}``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        message = scrub(message)
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}

    def response(self):
        resp = jsonify({"error": self.code, "message": self.message, "field": self.field})
        resp.status_code = self.status
        resp.headers.update(self.headers)
        return resp


def ok(body: Mapping | list | None = None, status: int = 200):
    """A success answer; dict bodies carry ``"status_code": "200"`` because the legacy API's clients read it."""
    if isinstance(body, Mapping) or body is None:
        body = {**(body or {}), "status_code": "200"}
    resp = jsonify(body)
    resp.status_code = status
    return resp


def from_invalid_input(exc: InvalidInput) -> ApiError:
    """Map the engine's validation error onto the API's error (413 oversize image, 429 quota, 507 disk)."""
    if isinstance(exc, ImageTooLarge):
        return ApiError(413, "too_large", str(exc), exc.field)
    if isinstance(exc, TooManyJobs):
        return ApiError(429, "too_many_jobs", str(exc), exc.field)
    if isinstance(exc, InsufficientStorage):
        return ApiError(507, "insufficient_storage", str(exc), exc.field)
    return ApiError(400, "invalid", str(exc), exc.field)


@dataclass(frozen=True)
class EndpointMeta:
    """What a route declares about itself: the action it serves (whose rule says who may) and what it accepts."""

    action: str | None  # a key of rules.RULES; None: a public page of the API itself (health, docs)
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    summary: str
    form: bool = False
    heavy: bool = False

    @property
    def roles(self) -> tuple[str, ...] | None:
        """The roles the action's rule allows besides admin (None: public)."""
        return rules.rule_of(self.action).roles if self.action else None


def endpoint(bp: Blueprint, rule: str, methods: tuple[str, ...] = ("GET",), action: str | None = None,
             body: type[BaseModel] | None = None, query: type[BaseModel] | None = None, summary: str = "",
             form: bool = False, heavy: bool = False, name: str | None = None):
    """Register a view on ``bp`` that serves ``action`` (see ``services.app.rules``), with its schemas.

    The action's rule is asked before the body is parsed: who may (401 without a token, 403 for a role
    that may not) and, for an action that starts jobs, whether the user has a job slot left (429). The
    view receives the parsed ``body`` / ``query`` models as keyword arguments when declared. A ``heavy``
    route (one that decodes images) runs only while a slot of :func:`heavy_slot` is free. ``name`` (default:
    the view's) is the endpoint's name and so its OpenAPI ``operationId``: give the published one when a
    view is renamed, so clients generated from the document keep working.
    """
    if action is not None:
        rules.rule_of(action)

    def decorate(view: Callable[..., Any]):
        meta = EndpointMeta(action, body, query, summary or (view.__doc__ or "").strip().split("\n")[0], form,
                            heavy)

        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            if meta.roles is not None:
                g.user = authenticate()
                check_rule(action, g.user)
            if body is not None:
                kwargs["body"] = parse(body, _request_data(form))
            if query is not None:
                kwargs["query"] = parse(query, request.args.to_dict())
            if heavy:
                with heavy_slot():
                    return run_blocking(view, *args, **kwargs)
            return view(*args, **kwargs)

        wrapper.endpoint_meta = meta
        bp.add_url_rule(rule, name or view.__name__, wrapper, methods=list(methods))
        return wrapper

    return decorate


def request_json():
    """The request's JSON (None when absent or malformed); JSON nested too deeply to parse is a 400."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        raise ApiError(400, "invalid_json", "the JSON body is nested too deeply") from None


HEAVY_WAIT_SECONDS = 5.0
RETRY_AFTER_BUSY = "5"
_heavy_lock = threading.Lock()


def _heavy_semaphore() -> threading.BoundedSemaphore:
    """The app's semaphore of heavy requests, made on first use with the configured number of slots."""
    ext = current_app.extensions
    with _heavy_lock:
        if "heavy_slots" not in ext:
            ext["heavy_slots"] = threading.BoundedSemaphore(max(1, studio().config.heavy_requests))
        return ext["heavy_slots"]


@contextmanager
def heavy_slot():
    """Hold one of the few slots for image-decoding work; 503 with Retry-After when none frees up soon.

    N parallel uploads then cost at most ``heavy_requests`` decoded images of memory, not N.
    """
    slots = _heavy_semaphore()
    if not slots.acquire(timeout=HEAVY_WAIT_SECONDS):
        raise ApiError(503, "busy", "the server is busy with other images; try again shortly",
                       headers={"Retry-After": RETRY_AFTER_BUSY})
    try:
        yield
    finally:
        slots.release()
        _give_memory_back()


def _under_gevent() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("socket")


def run_blocking(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Run CPU-bound work (decoding, inference, GrabCut, scrypt) off the event loop when serving under gevent.

    The function runs in one of gevent's real threads with a copy of this request's context (``request``,
    ``g``, the app); the request's body is read first, here, because its socket belongs to the loop.
    Outside gevent it simply runs.
    """
    if not _under_gevent():
        return fn(*args, **kwargs)
    from gevent import get_hub

    if has_request_context():
        request.get_data(cache=True, parse_form_data=True)
    context = contextvars.copy_context()
    ok_, value = get_hub().threadpool.apply(context.run, (_captured, fn, *args), kwargs)
    if not ok_:
        raise value  # raised here, in the request's greenlet, where the error handlers answer it
    return value


def _captured(fn: Callable[..., Any], *args, **kwargs) -> tuple[bool, Any]:
    # gevent's thread pool prints every exception it sees; expected ones (a 400, a 413) must not fill the log.
    try:
        return True, fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - handed back to the caller unchanged
        return False, exc


def _give_memory_back() -> None:
    """Ask glibc to return freed heap pages to the system, so a spike does not stay in the RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def check_rule(action: str, user: Mapping) -> None:
    """Ask the action's rule (role, then job quota) and answer its refusal in the API's words (403, 429)."""
    try:
        rules.check(action, user, studio().config, studio().store)
    except Forbidden:
        raise ApiError(403, "forbidden", f"role '{user['role']}' may not call this route; "
                       f"allowed: {', '.join(rules.rule_of(action).allowed)}") from None
    except InvalidInput as exc:
        raise from_invalid_input(exc) from None


def _request_data(form: bool) -> dict:
    if form:
        return request.form.to_dict()
    data = request_json()
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object (Content-Type: application/json)")
    return data


def parse(model: type[BaseModel], data: dict) -> BaseModel:
    """Validate ``data`` against ``model``; the first problem becomes a 400 naming its field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problem = invalid_input_from(exc)
        raise ApiError(400, "invalid_field", str(problem), problem.field) from None


def authenticate() -> dict:
    """The user of a valid access token, or a 401 ApiError."""
    from flask_jwt_extended import get_jwt, verify_jwt_in_request

    from services.app.users import token_problem

    try:
        verify_jwt_in_request()
    except Exception as exc:  # flask-jwt-extended and PyJWT raise many types; all mean "not authenticated"
        raise ApiError(401, "unauthorized", _auth_message(exc)) from None
    user, problem = token_problem(studio().store, get_jwt())
    if user is None:
        raise ApiError(401, "unauthorized", problem)
    return user


def _auth_message(exc: Exception) -> str:
    name = type(exc).__name__
    if name == "NoAuthorizationError":
        return "missing token: send 'Authorization: JWT <token>' or 'Bearer <token>' (get one from POST /auth)"
    if name == "ExpiredSignatureError":
        return "the token has expired: get a new one from POST /auth"
    return "the token is invalid"


def openapi_spec(app) -> dict:
    """An OpenAPI 3.1 document built from the app's own routes and their declared schemas."""
    paths: dict[str, dict] = {}
    schemas: dict[str, Any] = {}
    for rule in app.url_map.iter_rules():
        meta = getattr(app.view_functions[rule.endpoint], "endpoint_meta", None)
        if meta is None:
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        path = "/".join(p.split(":")[-1] if p.startswith("{") else p for p in path.split("/"))
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule, meta, schemas)
    schemas["Error"] = ERROR_SCHEMA
    return {"openapi": "3.1.0", "info": {"title": "PyTorch Automation Studio API", "version": "1"},
            "paths": paths, "components": {"schemas": schemas, "securitySchemes": {
                "jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}}}


ERROR_SCHEMA = {"type": "object", "required": ["error", "message", "field"], "additionalProperties": False,
                "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                               "field": {"type": ["string", "null"]}}}
ERROR_STATUSES = {"400": "Invalid input", "401": "No, bad or expired token", "403": "Role may not call this",
                  "404": "Not found", "405": "Method not allowed", "409": "Conflict", "413": "Too large",
                  "429": "Too many requests or jobs", "503": "Redis unreachable or server busy (Retry-After)",
                  "507": "Not enough disk"}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _operation(rule, meta: EndpointMeta, schemas: dict) -> dict:
    responses = {"200": {"description": "OK"}, "202": {"description": "Accepted"}}
    responses.update({code: _error(text) for code, text in ERROR_STATUSES.items()})
    op: dict[str, Any] = {"summary": meta.summary, "operationId": rule.endpoint.replace(".", "_"),
                          "responses": responses}
    params = [{"name": a, "in": "path", "required": True, "schema": {"type": "string"}} for a in rule.arguments]
    if meta.query is not None:
        for name, prop in _schema(meta.query, schemas).get("properties", {}).items():
            params.append({"name": name, "in": "query", "required": False, "schema": prop})
    if params:
        op["parameters"] = params
    if meta.roles is not None:
        op["security"] = [{"jwt": []}]
        op["x-roles"] = list(rules.rule_of(meta.action).allowed)
        op["x-action"] = meta.action
    if meta.body is not None:
        ctype = "multipart/form-data" if meta.form else "application/json"
        op["requestBody"] = {"required": True, "content": {ctype: {"schema": {"$ref":
                             f"#/components/schemas/{_register(meta.body, schemas)}"}}}}
    return op


def _schema(model: type[BaseModel], schemas: dict) -> dict:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    return schema


def _register(model: type[BaseModel], schemas: dict) -> str:
    schemas[model.__name__] = _schema(model, schemas)
    return model.__name__
