"""Home: what the studio holds, at a glance, and where to go next."""

import streamlit as st

from services.ui.page import PAGES, get_store, require_page

# What each page is for, in the order of the work; the first a role may use is where it starts.
PURPOSE = {
    "pages/annotate.py": "upload photos, confirm suggested labels, see them on a map.",
    "pages/segment.py": "draw a box around an object in a photo and cut it out with GrabCut.",
    "pages/objects.py": "browse the cut-outs by class; delete or re-file them.",
    "pages/augment.py": "turn the cut-outs into an augmented HDF5 dataset.",
    "pages/train.py": "train a classifier on a dataset and watch it learn.",
    "pages/tune.py": "search hyperparameters with Optuna, then train the best.",
    "pages/models.py": "compare trained models, activate one, export it.",
    "pages/predict.py": "label an image with a trained model.",
    "pages/jobs.py": "follow and cancel the background jobs.",
}
START = {"annotator": "pages/annotate.py", "client": "pages/predict.py"}  # everyone else: the pipeline's start

user = require_page(__file__)
store = get_store()
st.title("PyTorch Automation Studio")
st.caption(f"Signed in as {user['username']} ({user['role']})")
cols = st.columns(5)
for col, table in zip(cols, ("images", "objects", "datasets", "models", "jobs"), strict=True):
    col.metric(table.capitalize(), store.count_rows(table))

mine = [(page.path, page.title, page.icon) for page in PAGES if page.path in PURPOSE and page.open_to(user)]
start = START.get(user["role"], "pages/segment.py")
mine.sort(key=lambda page: page[0] != start)  # the starting point first, the rest in the order of the work
st.subheader("Where to go")
for path, title, icon in mine:
    left, right = st.columns([1, 4])
    left.page_link(path, label=title + (" · start here" if path == start else ""), icon=icon)
    right.markdown(PURPOSE[path])
