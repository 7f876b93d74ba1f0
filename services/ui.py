"""What every Streamlit page shares: the cached catalog and config, the signed-in user, role checks."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from services.config import Config
from services.store import Store, open_store

# The only list of pages: file, title, icon, and the roles that see it (admin sees everything).
PAGES = (
    ("pages/home.py", "Home", ":material/home:", ("operator", "annotator", "client")),
    ("pages/segment.py", "Segment", ":material/content_cut:", ("operator", "annotator")),
    ("pages/augment.py", "Augment", ":material/auto_awesome_mosaic:", ("operator",)),
    ("pages/datasets.py", "Datasets", ":material/dataset:", ("operator",)),
    ("pages/train.py", "Train", ":material/model_training:", ("operator",)),
    ("pages/tune.py", "Tune", ":material/tune:", ("operator",)),
    ("pages/models.py", "Models", ":material/inventory_2:", ("operator",)),
    ("pages/predict.py", "Predict", ":material/online_prediction:", ("operator", "annotator", "client")),
    ("pages/annotate.py", "Annotate", ":material/label:", ("annotator",)),
    ("pages/jobs.py", "Jobs", ":material/work_history:", ("operator", "client")),
)


def page_roles(script: str) -> tuple[str, ...]:
    """The roles that may use the page whose script is ``script`` (its ``__file__``)."""
    name = f"pages/{Path(script).name}"
    return next(roles for path, _title, _icon, roles in PAGES if path == name)


@st.cache_resource
def get_config() -> Config:
    return Config.from_env()


@st.cache_resource
def get_store() -> Store:
    return open_store(get_config().data_dir)


def current_user() -> dict | None:
    return st.session_state.get("user")


def require_role(*roles: str) -> dict:
    """The signed-in user if their role may see this page; otherwise an error and a stop."""
    user = current_user()
    if user is None:
        st.error("Please sign in first.")
        st.stop()
    if user["role"] != "admin" and user["role"] not in roles:
        st.error(f"Your role ({user['role']}) may not use this page.")
        st.stop()
    return user


def require_page(script: str) -> dict:
    """The signed-in user if their role may use the page ``script`` (its ``__file__``), as ``PAGES`` says."""
    return require_role(*page_roles(script))


def fail(message: str) -> None:
    """Show a failure the way every page does (never a traceback) and stop the script."""
    st.error(message)
    st.stop()
