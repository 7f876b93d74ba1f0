"""WSGI entry for gunicorn: ``gunicorn -w 1 -k gevent services.web.wsgi:app`` (see services.platform.launcher)."""

from services.api import create_app

app = create_app()
