"""What every Streamlit page shares: the cached catalog and config, the signed-in user, role checks."""

from __future__ import annotations

import streamlit as st

from services.config import Config
from services.store import Store, open_store


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


def fail(message: str) -> None:
    """Show a failure the way every page does (never a traceback) and stop the script."""
    st.error(message)
    st.stop()
