"""Streamlit entry: sign in, then the pages the user's role may use (st.navigation over pages/)."""

import streamlit as st

from services.ui import PAGES, current_user, get_store


def login_page() -> None:
    st.title("PyTorch Automation Studio")
    with st.form("login", clear_on_submit=False):
        username = st.text_input("Username", key="login_username")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Sign in")
    if submitted:
        user = get_store().check_password(username, password)
        if user is None:
            st.error("Wrong username or password.")
        else:
            st.session_state["user"] = user
            st.rerun()


def logout_page() -> None:
    st.session_state.pop("user", None)
    st.rerun()


def pages_for(role: str) -> list:
    from pathlib import Path

    here = Path(__file__).parent
    return [st.Page(path, title=title, icon=icon) for path, title, icon, roles in PAGES
            if (role == "admin" or role in roles) and (here / path).exists()]


user = current_user()
if user is None:
    st.navigation([st.Page(login_page, title="Sign in", icon=":material/login:")]).run()
else:
    st.set_page_config(page_title="PyTorch Automation Studio", layout="wide")
    st.sidebar.markdown(f"Signed in as **{user['username']}** ({user['role']})")
    account = [st.Page(logout_page, title="Sign out", icon=":material/logout:", url_path="logout")]
    st.navigation({"Workbench": pages_for(user["role"]), "Account": account}).run()
