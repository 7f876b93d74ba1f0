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


class ImageTooLarge(InvalidInput):
    """An image has more pixels than the configured limit (decompression-bomb guard)."""


class Cancelled(StudioError):
    """Work was stopped on request (raised when ``should_stop()`` turns true)."""
