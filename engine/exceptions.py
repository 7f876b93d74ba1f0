"""The project's own exceptions (one small module, as in rq's ``exceptions.py``)."""


class StudioError(Exception):
    """Base class of every error the project raises on purpose."""


class InvalidInput(StudioError, ValueError):
    """A value from outside is not acceptable.

    Attributes:
        field: the name of the offending field, or None when it is not tied to one field.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class NotFound(StudioError, LookupError):
    """Something named by the caller does not exist (the API answers 404).

    Attributes:
        field: the field that named it; subclasses may set a class-level default.
    """

    field: str | None = None

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        if field is not None:
            self.field = field


class Conflict(StudioError):
    """The request is valid but the current state forbids it (the API answers 409)."""

    field: str | None = None

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        if field is not None:
            self.field = field


class ImageTooLarge(InvalidInput):
    """An image has more pixels than the configured limit (decompression-bomb guard)."""


class Cancelled(StudioError):
    """Work was stopped on request (raised when ``should_stop()`` turns true)."""


class RankFailed(StudioError):
    """A process of a distributed training run died or failed; the run's other processes were stopped."""
