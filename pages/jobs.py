"""Jobs: every background job the user may read, with status, progress and cancel; live while it runs."""

import time

import pandas as pd
import redis
import streamlit as st

from services import jobs
from services.ui import fail, get_config, get_store, require_page

LIVE_SECONDS = 2  # how often the open page re-reads the chosen job while it runs
JOBS_SHOWN = 200  # the newest of the chosen kind; older ones stay a filter away

user = require_page(__file__)
store, config = get_store(), get_config()
st.title("Jobs")


def current(record: dict) -> dict:
    """The record brought in line with the queue (a job whose worker died shows as interrupted)."""
    try:
        return jobs.read_job(config, store, record)
    except redis.exceptions.RedisError:
        st.warning("The job queue (Redis) is unreachable; showing the last recorded state.")
        return record


def job_details(job_id: str, was_live: bool) -> None:
    """Status, progress, error, result and Cancel of one job; re-run every few seconds while it runs."""
    record = current(store.get_job(job_id))
    progress = record["progress"] or {}
    started, ended = record["started_at"], record["ended_at"]
    took = f" · {(ended or time.time()) - started:.0f} s" if started else ""
    st.markdown(f"**{record['kind']}** by {record['created_by'] or '—'} · **{record['status']}**{took}")
    if progress.get("fraction") is not None:
        st.progress(min(max(progress["fraction"], 0.0), 1.0),
                    text=f"{progress.get('done')} of {progress.get('total')} {progress.get('unit') or ''}s")
    if record["error"]:
        st.error(record["error"])
    if record["result"] is not None:
        st.json(record["result"], expanded=1)
    if user["role"] != "client" and record["status"] not in jobs.TERMINAL:
        if st.button("Cancel job", key="jobs_cancel"):
            try:
                jobs.cancel(config, store, job_id)
            except redis.exceptions.RedisError:
                fail("The job queue (Redis) is unreachable; try again shortly.")
            st.rerun(scope="app")
    if was_live and record["status"] in jobs.TERMINAL:
        st.rerun(scope="app")  # once: the table shows the end too, and the page stops polling


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
live = current(store.get_job(chosen))["status"] not in jobs.TERMINAL
st.fragment(run_every=LIVE_SECONDS if live else None)(job_details)(chosen, live)
