"""The HTTP door: Flask's conventions, the feature blueprints, the WSGI entry."""
