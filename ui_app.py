"""The UI server: Streamlit's own server running ``app.py``, plus the route that sets the HttpOnly sign-in
cookie (``streamlit run ui_app.py``; ``make run`` and the test stack start it so)."""

from pathlib import Path

import streamlit as st

from services.session_routes import ROUTES

app = st.App(Path(__file__).with_name("app.py"), routes=ROUTES)
