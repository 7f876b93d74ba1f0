"""WSGI entry for gunicorn: ``gunicorn -w 1 -k gevent services.wsgi:app`` (see services.launcher)."""

from services.api import create_app

app = create_app()
