"""The UI server: Streamlit's own server running ``app.py``, plus the route that sets the HttpOnly sign-in
cookie and the guard in front of every request and websocket message (``services/ui/guard.py``); its limits
beside it in ``.streamlit/config.toml``, read from this folder (``streamlit run ui_app.py``; ``make run`` and
the test stack start it so)."""

from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware

from services.ui.guard import UiGuard
from services.ui.session_routes import ROUTES

app = st.App(Path(__file__).with_name("app.py"), routes=ROUTES, middleware=[Middleware(UiGuard)])
