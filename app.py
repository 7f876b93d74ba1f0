"""Streamlit entry: sign in, then the pages the user's role may use (st.navigation over pages/).

The sign-in survives a reload or a typed address: a session token in a cookie (services/ui/sessions.py). Every
run re-reads the user from the catalog, so a deleted or re-roled user is signed out at their next click.
Signed out, every page's address shows the sign-in form, and signing in opens the page that was asked for.
"""

import importlib
import threading
from pathlib import Path

import streamlit as st

from services.app import sign_in
from services.ui.page import PAGES, get_config, get_store, sessions, signed_in_user

HERE = Path(__file__).parent
WARM_MODULES = ("services.app.training", "services.app.tuning", "services.app.generate", "altair", "pandas")


def login_page() -> None:
    st.title("PyTorch Automation Studio")
    with st.form("login", clear_on_submit=False):
        username = st.text_input("Username", key="login_username")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Sign in")
    if submitted:  # the API's POST /auth asks the same throttle (Redis down: it counts in this process)
        outcome = sign_in.attempt(get_config(), username, st.context.ip_address,
                                  lambda: get_store().check_password(username, password))
        user = outcome.user
        if outcome.wait:
            st.error(f"Too many failed sign-ins; try again in {outcome.wait} s.")
        elif user is None:
            st.error("Wrong username or password.")
        else:
            st.session_state[sessions.STATE_KEY] = sessions.create(get_store(), user)
            st.session_state["write_cookie"] = True
            st.rerun()  # the same address now opens the page it names


def sign_out() -> None:
    sessions.revoke(get_store(), st.session_state.get(sessions.STATE_KEY))
    for key in (sessions.STATE_KEY, "user"):
        st.session_state.pop(key, None)
    st.session_state["clear_cookie"] = True


def write_cookie(token: str | None) -> None:
    """Hand the browser its session cookie (None: delete it); an invisible script element."""
    with st.sidebar:
        st.html(sessions.cookie_script(token), unsafe_allow_javascript=True, width=1)


@st.cache_resource(show_spinner=False)
def warm_up() -> threading.Thread:
    """Import the heavy modules (torch, the model registry) once per process, after a sign-in, in the
    background: the sign-in page stays light, and the first visit to Train does not wait for them."""
    thread = threading.Thread(target=lambda: [importlib.import_module(m) for m in WARM_MODULES], daemon=True,
                              name="ui-warm-up")
    thread.start()
    return thread


def pages_for(role: str) -> list:
    return [st.Page(page.path, title=page.title, icon=page.icon) for page in PAGES
            if page.open_to({"role": role}) and (HERE / page.path).exists()]


def sign_in_pages() -> list:
    """The sign-in form at every page's address, so a deep link or reload keeps its address until signed in."""
    return [st.Page(login_page, title="Sign in", icon=":material/login:", url_path=Path(path).stem,
                    default=i == 0) for i, path in enumerate(page.path for page in PAGES)]


user = signed_in_user()
if user is None:
    if st.session_state.pop("clear_cookie", False):
        write_cookie(None)
    st.navigation(sign_in_pages(), position="hidden").run()
else:
    st.set_page_config(page_title="PyTorch Automation Studio", layout="wide")
    if st.session_state.pop("write_cookie", False):
        write_cookie(st.session_state[sessions.STATE_KEY])
    st.sidebar.markdown(f"Signed in as **{user['username']}** ({user['role']})")
    st.sidebar.button("Sign out", icon=":material/logout:", key="sign_out", on_click=sign_out)
    warm_up()
    st.navigation({"Workbench": pages_for(user["role"])}).run()
