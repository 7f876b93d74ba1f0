"""Jobs: every background job the user may read, with status, progress and cancel."""

import pandas as pd
import redis
import streamlit as st

from services import jobs
from services.ui import fail, get_config, get_store, require_page

user = require_page(__file__)
store, config = get_store(), get_config()
st.title("Jobs")

owner = user["username"] if user["role"] == "client" else None
everything = store.list_jobs(created_by=owner, limit=1000)
if not everything:
    st.info("No jobs yet.")
    st.stop()
kind = st.selectbox("Kind", ["(all)", *sorted({r["kind"] for r in everything})], key="jobs_kind")
records = [r for r in everything if kind in ("(all)", r["kind"])][:200]
table = pd.DataFrame([{"id": r["id"], "kind": r["kind"], "status": r["status"], "by": r["created_by"],
                       "progress": (r["progress"] or {}).get("fraction"),
                       "created": pd.to_datetime(r["created_at"], unit="s")} for r in records])
st.dataframe(table, key="jobs_table", hide_index=True,
             column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1)})
chosen = st.selectbox("Job", [r["id"] for r in records], key="jobs_pick")
record = store.get_job(chosen)
try:
    record = jobs.reconcile(config, store, record)
except redis.exceptions.RedisError:
    st.warning("The job queue (Redis) is unreachable; showing the last recorded state.")
st.json({k: record[k] for k in ("status", "progress", "result", "error")}, expanded=False)
if user["role"] != "client" and record["status"] not in jobs.TERMINAL:
    if st.button("Cancel job", key="jobs_cancel"):
        try:
            jobs.cancel(config, store, chosen)
        except redis.exceptions.RedisError:
            fail("The job queue (Redis) is unreachable; try again shortly.")
        st.rerun()
