"""Turning pydantic's validation errors into the project's own (no web framework here, so the API, the
pages and the job modules can all use it)."""

from __future__ import annotations

from pydantic import ValidationError

from engine.exceptions import InvalidInput


def invalid_input_from(exc: ValidationError) -> InvalidInput:
    """The first problem of a pydantic validation, as the project's error naming its field."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or None
    msg = err["msg"].removeprefix("Value error, ")
    return InvalidInput(f"{field}: {msg}" if field else msg, field)
