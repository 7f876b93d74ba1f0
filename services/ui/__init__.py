"""The Streamlit door's shared parts: page helpers, live panels, the guard, sign-in sessions."""
