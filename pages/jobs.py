"""Jobs: every background job the user may read, with status, progress and cancel; live while it runs."""

import time
from collections.abc import Callable
from typing import TypeVar

import pandas as pd
import streamlit as st
from redis.exceptions import RedisError

from engine.exceptions import StudioError
from services.app import jobs as job_actions
from services.app import rules
from services.ui.live import cancel_button, is_live, live_panel, progress_bar, queue_down
from services.ui.page import actor, fail, get_config, get_store, page_message, require_page

T = TypeVar("T")
JOBS_SHOWN = 200  # the newest of the chosen kind; older ones stay a filter away

user = require_page(__file__)
store, config = get_store(), get_config()
st.title("Jobs")


def read_job(job_id: str, warn: bool = True) -> dict:
    """The job as the ``jobs.read`` action shows it to this user (Redis down: the last recorded state)."""
    try:
        return job_actions.read_job(actor(), job_id)
    except RedisError:
        if warn:
            st.warning(queue_down("showing the last recorded state"))
        return store.get_job(job_id)
    except StudioError as exc:
        fail(page_message(exc))


def job_details(job_id: str) -> str:
    """Status, progress, error, result and Cancel of one job; returns the status shown."""
    record = read_job(job_id)
    progress = record["progress"] or {}
    started, ended = record["started_at"], record["ended_at"]
    took = f" · {(ended or time.time()) - started:.0f} s" if started else ""
    st.markdown(f"**{record['kind']}** by {record['created_by'] or '—'} · **{record['status']}**{took}")
    progress_bar(record, f"{progress.get('done')} of {progress.get('total')} {progress.get('unit') or ''}s",
                 hide_unknown=True)
    if record["error"]:
        st.error(record["error"])
    if record["result"] is not None:
        st.json(record["result"], expanded=1)
    if rules.may("jobs.cancel", user) and is_live(record["status"]):
        cancel_button(config, store, job_id, key="jobs_cancel")
    return record["status"]


def asked(read: Callable[[], T]) -> T:
    """Run a read of the jobs actions; a refusal (signed out since) or an unreachable Redis is the page's message."""
    try:
        return read()
    except RedisError:  # a reader asks the workers which jobs still run
        fail(queue_down("the jobs cannot be listed now"))
    except StudioError as exc:
        fail(page_message(exc))


kinds = asked(lambda: job_actions.job_kinds(actor()))
if not kinds:
    st.info("No jobs yet.")
    st.stop()
kind = st.selectbox("Kind", ["(all)", *kinds], key="jobs_kind")
query = job_actions.JobsQuery(kind=None if kind == "(all)" else kind, limit=JOBS_SHOWN)
records = asked(lambda: job_actions.read_jobs(actor(), query))
table = pd.DataFrame([{"id": r["id"], "kind": r["kind"], "status": r["status"], "by": r["created_by"],
                       "progress": (r["progress"] or {}).get("fraction"),
                       "created": pd.to_datetime(r["created_at"], unit="s")} for r in records])
st.dataframe(table, key="jobs_table", hide_index=True,
             column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1)})
chosen = st.selectbox("Job", [r["id"] for r in records], key="jobs_pick")
live_panel("jobs_panel", read_job(chosen, warn=False)["status"], lambda: job_details(chosen))
