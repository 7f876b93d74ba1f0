"""Jobs: every background job the user may read, with status, progress and cancel; live while it runs."""

import time

import pandas as pd
import streamlit as st

from services.app import rules
from services.ui.live import cancel_button, is_live, job_state, live_panel, progress_bar
from services.ui.page import get_config, get_store, require_page

JOBS_SHOWN = 200  # the newest of the chosen kind; older ones stay a filter away

user = require_page(__file__)
store, config = get_store(), get_config()
st.title("Jobs")


def job_details(job_id: str) -> str:
    """Status, progress, error, result and Cancel of one job; returns the status shown."""
    record = job_state(config, store, job_id)
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


owner = user["username"] if user["role"] == "client" else None
kinds = store.job_kinds(created_by=owner)
if not kinds:
    st.info("No jobs yet.")
    st.stop()
kind = st.selectbox("Kind", ["(all)", *kinds], key="jobs_kind")
records = store.list_jobs(kind=None if kind == "(all)" else kind, created_by=owner, limit=JOBS_SHOWN)
table = pd.DataFrame([{"id": r["id"], "kind": r["kind"], "status": r["status"], "by": r["created_by"],
                       "progress": (r["progress"] or {}).get("fraction"),
                       "created": pd.to_datetime(r["created_at"], unit="s")} for r in records])
st.dataframe(table, key="jobs_table", hide_index=True,
             column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1)})
chosen = st.selectbox("Job", [r["id"] for r in records], key="jobs_pick")
live_panel("jobs_panel", job_state(config, store, chosen, warn=False)["status"], lambda: job_details(chosen))
