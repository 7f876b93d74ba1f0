"""The feature blueprints; ``create_app`` registers each of them."""

from services.routes.annotate import bp as annotate_bp

BLUEPRINTS: tuple = (annotate_bp,)
