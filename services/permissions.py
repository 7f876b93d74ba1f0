"""Who may act on what: rules that the API's routes, the pages and their live panels all ask.

A rule written at one door is a hole at the others: a page's self-refreshing panel or a job never passes
through the Flask decorator that checks a route's roles. So a rule that more than one door needs lives here,
once (an image's ownership lives with the images, in ``services.annotation``).
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.exceptions import StudioError

# Roles that may cancel (and so stop) any queued or running job; admin may do anything.
# POST /api/v1/jobs/<id>/cancel declares these roles, and the pages' Cancel buttons check them.
JOB_CANCELLERS = ("operator",)


class Forbidden(StudioError):
    """The user's role or ownership does not allow the action (the API answers 403).

    Attributes:
        field: the request field that names what was refused, or None.
    """

    field: str | None = None

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        if field is not None:
            self.field = field


def allows(roles: tuple[str, ...], user: Mapping | None) -> bool:
    """Whether ``user`` (a user row or dict; None: nobody) has one of ``roles``; admin always has."""
    return user is not None and (user["role"] == "admin" or user["role"] in roles)


def check_may_cancel(user: Mapping | None) -> None:
    """Refuse to cancel a job for a user whose role may not (operators may cancel anyone's jobs).

    Raises:
        Forbidden: naming the roles that may.
    """
    if user is None:
        raise Forbidden("sign in first: nobody is signed in", "job_id")
    if not allows(JOB_CANCELLERS, user):
        raise Forbidden(f"role '{user['role']}' may not cancel jobs; allowed: "
                        f"{', '.join(('admin', *JOB_CANCELLERS))}", "job_id")
