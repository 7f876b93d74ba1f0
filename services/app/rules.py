"""The one table of what each role may do, and the one check every door calls before an action runs.

CVAT keeps every permission in one policy set that each endpoint consults; Django REST framework puts a
permission class on the view, not in the handler. Here each user action has a name and one :class:`Rule`
in :data:`RULES`: the roles that may take it (admin always may), and how many job slots it takes (so the
per-user job quota holds at every door). The API's routes declare the action they serve (``endpoint(...,
action=...)``); the pages declare theirs in ``services.ui.page.PAGES``; the functions of ``services.app``
that do the work are decorated with :func:`action`, which checks the rule before the body runs. So a route,
a page, a page's live panel and a Socket.IO handler that reach the same function get the same answer, and
the OpenAPI document, the page menu and the checks all read this table.

Sign-in has its own throttle (``services.app.sign_in``): it is the one action taken before there is a user.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from engine.exceptions import StudioError
from services.app.quotas import check_job_quota

if TYPE_CHECKING:
    from services.platform.config import Config
    from services.storage.store import Store

EVERYONE = ("operator", "annotator", "client")  # every role; admin may do anything
OPERATORS = ("operator",)
ANNOTATORS = ("annotator",)
CUTTERS = ("operator", "annotator")  # who cuts objects out of photos and reads the library and labels
PREDICTORS = ("operator", "annotator", "client")
OPERATOR_CLIENTS = ("operator", "client")  # models and jobs: clients read their own jobs
ADMINS: tuple[str, ...] = ()  # admin only


class Forbidden(StudioError):
    """The user's role or ownership does not allow the action (the API answers 403, a page its own words).

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


@dataclass(frozen=True)
class Rule:
    """Who may take an action and what it costs.

    Attributes:
        roles: the roles that may (admin always may); None: anyone, signed in or not.
        jobs: job slots the action takes (the per-user quota of active jobs counts them).
        doing: the action in a few words, for messages ("start a training").
    """

    roles: tuple[str, ...] | None
    doing: str
    jobs: int = 0

    @property
    def allowed(self) -> tuple[str, ...]:
        """Every role that may, admin first (for messages and the OpenAPI document)."""
        return ("admin", *(self.roles or ()))


PUBLIC = None
RULES: Mapping[str, Rule] = MappingProxyType({
    # accounts
    "sign_in": Rule(PUBLIC, "sign in"),
    "sign_out": Rule(EVERYONE, "sign out"),
    "home": Rule(EVERYONE, "see the home page"),
    "users.read": Rule(ADMINS, "list users"),
    "users.create": Rule(ADMINS, "create users"),
    "users.change": Rule(ADMINS, "change users"),
    "users.delete": Rule(ADMINS, "delete users"),
    # annotation
    "images.upload": Rule(ANNOTATORS, "upload photos"),
    "images.read": Rule(CUTTERS, "read photos"),
    "images.replace": Rule(OPERATORS, "replace another user's photos"),
    "labels.read": Rule(CUTTERS, "read the label set"),
    "labels.edit": Rule(ADMINS, "edit the label set"),
    "annotations.read": Rule(CUTTERS, "read annotations"),
    "annotations.export": Rule(CUTTERS, "export annotations"),
    "annotations.save": Rule(ANNOTATORS, "label photos"),
    # cut-outs and the object library
    "objects.segment": Rule(CUTTERS, "cut objects out of photos"),
    "objects.read": Rule(CUTTERS, "read the object library"),
    "objects.delete": Rule(OPERATORS, "delete objects"),
    "objects.move": Rule(CUTTERS, "move objects to another class"),
    # generated and imported datasets
    "datasets.generate": Rule(OPERATORS, "generate datasets", jobs=1),
    "backgrounds.read": Rule(CUTTERS, "read backgrounds"),
    "backgrounds.upload": Rule(OPERATORS, "upload backgrounds"),
    "datasets.import": Rule(OPERATORS, "import datasets", jobs=1),
    "datasets.read": Rule(OPERATORS, "read datasets"),
    "datasets.export": Rule(OPERATORS, "export datasets"),
    "datasets.delete": Rule(OPERATORS, "delete datasets"),
    "datasets.edit": Rule(OPERATORS, "change datasets"),
    # training, models, predictions
    "train.submit": Rule(OPERATORS, "start a training", jobs=1),
    "train.resume": Rule(OPERATORS, "resume a training", jobs=1),
    "models.zoo": Rule(PREDICTORS, "read the model zoo"),
    "models.read": Rule(OPERATOR_CLIENTS, "read trained models"),
    "models.manage": Rule(OPERATORS, "activate, export or delete models"),
    "weights.upload": Rule(OPERATORS, "upload weights files to start runs from"),
    "predict": Rule(PREDICTORS, "ask for predictions"),
    # hyperparameter search
    "tune.submit": Rule(OPERATORS, "start a study", jobs=1),
    "tune.read": Rule(OPERATORS, "read studies"),
    "tune.stop": Rule(OPERATORS, "stop studies"),
    "tune.train_best": Rule(OPERATORS, "train a study's best configuration", jobs=1),
    # background jobs
    "jobs.read": Rule(OPERATOR_CLIENTS, "read jobs"),
    "jobs.cancel": Rule(OPERATORS, "cancel jobs"),
})


def rule_of(name: str) -> Rule:
    """The rule of action ``name``; an unknown name is a programming error, named with the known ones."""
    try:
        return RULES[name]
    except KeyError:
        raise KeyError(f"unknown action {name!r}; known: {', '.join(RULES)}") from None


def may(name: str, user: Mapping | None) -> bool:
    """Whether ``user`` (None: nobody signed in) may take action ``name`` (roles only; no quota)."""
    roles = rule_of(name).roles
    return roles is None or allows(roles, user)


def check(name: str, user: Mapping | None, config: Config | None = None, store: Store | None = None) -> None:
    """Refuse the action unless ``user``'s role may take it and, for actions that start jobs, a slot is free.

    Args:
        name: the action (a key of :data:`RULES`).
        user: the user row or dict (``username``, ``role``); None when nobody is signed in.
        config, store: needed to count the user's active jobs (the quota is skipped without them).

    Raises:
        Forbidden: nobody signed in, or the role may not (the message names the roles that may).
        TooManyJobs: the user's queued and running jobs already fill the quota.
    """
    rule = rule_of(name)
    if rule.roles is None:
        return
    if user is None:
        raise Forbidden(f"sign in first: nobody is signed in (to {rule.doing})")
    if not allows(rule.roles, user):
        raise Forbidden(f"role '{user['role']}' may not {rule.doing}; allowed: {', '.join(rule.allowed)}")
    if rule.jobs and config is not None and store is not None:
        check_job_quota(config, store, user["username"], rule.jobs)


@dataclass(frozen=True)
class Actor:
    """Who takes an action, and the product they take it in: every door builds one and hands it over."""

    user: Mapping[str, Any]
    config: Config
    store: Store

    @property
    def username(self) -> str:
        return self.user["username"]

    @property
    def role(self) -> str:
        return self.user["role"]


ACTIONS: dict[str, Callable[..., Any]] = {}


def action(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare the function that does action ``name``: it takes an :class:`Actor` first and runs only if
    :func:`check` lets that actor take the action. Each action has one function (registered in ``ACTIONS``).
    """
    rule_of(name)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(actor: Actor, *args: Any, **kwargs: Any) -> Any:
            check(name, actor.user, actor.config, actor.store)
            return fn(actor, *args, **kwargs)

        if name in ACTIONS and ACTIONS[name].__qualname__ != fn.__qualname__:
            raise ValueError(f"action {name!r} already done by {ACTIONS[name].__module__}.{ACTIONS[name].__name__}")
        run.action = name
        ACTIONS[name] = run
        return run

    return decorate
