"""WSGI entry for gunicorn: ``gunicorn -w 1 --threads 64 services.wsgi:app``."""

from services.api import create_app

app = create_app()
