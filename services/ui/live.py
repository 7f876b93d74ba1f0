"""The live-job panel every page that watches a background job shares (Train, Tune, Jobs, Augment, uploads).

A page reads the job's state with :func:`job_state`, shows it inside :func:`live_panel` (a fragment that
re-reads it every few seconds while the job runs and re-runs the whole page once when it ends), and offers
Cancel with :func:`cancel_button` (any other queue action with :func:`action_button`). Every read and every
queue action turns an unreachable Redis into one readable message (:func:`queue_down`), never a traceback.

A panel's redraws, and the buttons inside it, re-run without ``app.py`` and so without its sign-in check: the
panel and every action re-read the user from the catalog first (:func:`services.ui.page.acting_user`), so a page
left open by a user since signed out, deleted or given another role can neither show nor do anything more.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import streamlit as st
from redis.exceptions import RedisError

from engine.exceptions import StudioError
from services.app import jobs as job_actions
from services.app import rules
from services.jobs import runtime as jobs
from services.platform.config import Config
from services.storage.store import Store
from services.ui.page import acting_user, page_message, page_refusal_now

LIVE_SECONDS = 2  # how often an open page re-reads a running job
QUEUE_DOWN = "The job queue (Redis) is unreachable"


def queue_down(then: str = "try again shortly") -> str:
    """The one sentence every page shows when Redis cannot be reached, ending with what happens ``then``."""
    return f"{QUEUE_DOWN}; {then}."


def job_state(config: Config, store: Store, job_id: str, warn: bool = True) -> dict:
    """The job as readers see it (a job whose worker died reads as interrupted).

    Args:
        warn: say so on the page when Redis is unreachable (the catalog's record is shown as it is).
    """
    record = store.get_job(job_id)
    try:
        return jobs.read_job(config, store, record)
    except RedisError:
        if warn:
            st.warning(queue_down("showing the last recorded state"))
        return record


def is_live(status: str) -> bool:
    return status not in jobs.TERMINAL


def live_panel(key: str, status: str, render: Callable[[], str], every: float = LIVE_SECONDS) -> None:
    """Show ``render()`` in a fragment that re-runs every ``every`` s while the job is live.

    Args:
        key: the fragment's key (the page's widget prefix).
        status: the job's status as this run of the page saw it.
        render: draws the job and returns the status it showed. Once a job this run of the page saw
            live has ended, the whole page re-runs once: its lists show the end, and polling stops.
    """
    was_live = is_live(status)

    def panel() -> None:
        if page_refusal_now():  # signed out, deleted or re-roled since the page was drawn: app.py takes over
            st.rerun(scope="app")
        shown = render()
        if was_live and not is_live(shown):
            st.rerun(scope="app")

    st.fragment(run_every=every if was_live else None, key=key)(panel)()


def queue_action(action: Callable[[], Any], labels: Mapping[str, str] | None = None) -> tuple[bool, Any]:
    """Run a page's queue action (submit, cancel, resume, stop); a failure is shown in the page's words.

    Returns:
        ``(True, result)``, or ``(False, message)`` once the failure's message is on the page.
    """
    try:
        return True, action()
    except RedisError:
        message = queue_down()
    except StudioError as exc:
        message = page_message(exc, labels)
    st.error(message)
    return False, message


def action_button(label: str, key: str, action: Callable[[], Any], about: str = "",
                  labels: Mapping[str, str] | None = None, where: Any = st, **button: Any) -> tuple[bool, Any]:
    """A button that runs a queue action; a failure stays on the page until the button is pressed again.

    A live panel redraws every few seconds: a message that only the click's own run draws is gone with the
    next redraw, before anyone has read it (or never drawn at all, when a redraw interrupts that run).

    Args:
        about: what the action acts on (a job id): a failure is shown again only while it is the same.
        where: the column or container the button goes in.
        button: further ``st.button`` options (``type``).

    Returns:
        as :func:`queue_action`; ``(False, None)`` while the button is not pressed.
    """
    failure = f"{key}__failure"
    if where.button(label, key=key, **button):
        # The button may sit in a panel that redraws without app.py's sign-in check: the action checks itself.
        done, result = queue_action(_as_signed_in(action), labels)
        st.session_state[failure] = (about, None if done else result)
        return done, result
    remembered, message = st.session_state.get(failure, (about, None))
    if message and remembered == about:
        st.error(message)
    return False, None


def _as_signed_in(action: Callable[[], Any]) -> Callable[[], Any]:
    """``action``, run only once the user is re-read and may still use the page (else ``Forbidden``)."""

    def run() -> Any:
        acting_user()
        return action()

    return run


def cancel_button(config: Config, store: Store, job_id: str, key: str, label: str = "Cancel job") -> None:
    """Cancel the job; the whole page re-runs to show it ended (Redis down: a message, nothing else)."""
    if action_button(label, key, lambda: cancel(config, store, job_id), about=job_id)[0]:
        st.rerun(scope="app")


def cancel(config: Config, store: Store, job_id: str) -> dict:
    """Cancel ``job_id`` for the user signed in now: the ``jobs.cancel`` action, as the API's cancel calls it.

    Raises:
        Forbidden: signed out, or a role that may not cancel (or use the page).
        NotFound, Conflict: no such job, or it has already ended.
    """
    return job_actions.cancel_job(rules.Actor(acting_user(), config, store), job_id)


def progress_bar(record: dict, text: str, hide_unknown: bool = False) -> None:
    """The job's progress as a bar labelled ``text`` (a finished job with no count reads as done).

    Args:
        hide_unknown: draw nothing while the job has reported no progress (instead of an empty bar).
    """
    fraction = (record["progress"] or {}).get("fraction")
    if fraction is None and hide_unknown:
        return
    if fraction is None and record["status"] == "finished":
        fraction = 1.0
    st.progress(min(max(fraction or 0.0, 0.0), 1.0), text=text)


def status_line(title: str, record: dict, unit: str) -> str:
    """``Import 1a2b3c4d: started · 40 / 100 images``: a short job label, status and count."""
    progress = record["progress"] or {}
    done, total = progress.get("done") or 0, progress.get("total")
    return f"{title} {record['id'][:8]}: {record['status']}" + (f" · {done} / {total} {unit}" if total else "")
