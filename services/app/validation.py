"""Turning pydantic's validation errors into the project's own (no web framework here, so the API, the
pages and the job modules can all use it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import core_schema

from engine.exceptions import InvalidInput


def invalid_input_from(exc: ValidationError) -> InvalidInput:
    """The first problem of a pydantic validation, as the project's error naming its field."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or None
    msg = err["msg"].removeprefix("Value error, ")
    return InvalidInput(f"{field}: {msg}" if field else msg, field)


def field_limits(model: type[BaseModel], name: str) -> tuple[Any, Any, Any]:
    """``(lowest, highest, default)`` of a request field as its pydantic model declares them (None where the
    model sets no inclusive bound), so a page's widget or another model never keeps a second copy."""
    info = model.model_fields[name]
    return _bound(info, "ge"), _bound(info, "le"), info.default


def open_floor(model: type[BaseModel], name: str) -> Any:
    """The exclusive lower bound (``gt``) a request field declares, else None."""
    return _bound(model.model_fields[name], "gt")


def _bound(info: FieldInfo, kind: str) -> Any:
    return next((getattr(m, kind) for m in info.metadata if getattr(m, kind, None) is not None), None)


@dataclass(frozen=True)
class Within:
    """An inclusive range for a number field (or the items of a list field), as ``Annotated`` metadata.

    Used where the engine owns the range (``Within(*OPTION_RANGES[name])``): a value outside reads
    "must be in low..high", the engine's own wording; the JSON schema shows ``minimum``/``maximum``; and
    :func:`field_limits` reads ``ge``/``le`` as it reads pydantic's own bounds. None, and words a field
    allows beside its numbers (``"auto"``), pass.
    """

    ge: float
    le: float

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> dict:
        json_schema = handler(schema)
        return {**json_schema, "minimum": self.ge, "maximum": self.le}

    def _check(self, value: Any) -> Any:
        if isinstance(value, int | float) and not self.ge <= value <= self.le:
            raise ValueError(f"must be in {self.ge}..{self.le}, got {value}")
        return value
