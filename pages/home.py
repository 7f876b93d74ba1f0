"""Home: what the studio holds, at a glance, and where to go next."""

import streamlit as st

from services.ui import get_store, require_page

user = require_page(__file__)
store = get_store()
st.title("PyTorch Automation Studio")
st.caption(f"Signed in as {user['username']} ({user['role']})")
cols = st.columns(5)
for col, table in zip(cols, ("images", "objects", "datasets", "models", "jobs"), strict=True):
    col.metric(table.capitalize(), store.count_rows(table))
st.markdown(
    "- **Annotate**: upload photos, confirm suggested labels, see them on a map.\n"
    "- **Segment**: draw a box around an object and cut it out with GrabCut.\n"
    "- **Augment**: turn cut-outs into an augmented HDF5 dataset.\n"
    "- **Train / Tune / Models / Predict**: train classifiers, search hyperparameters, serve predictions.\n"
    "The pages in the sidebar are the ones your role may use.")
