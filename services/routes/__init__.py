"""The feature blueprints; ``create_app`` registers each of them."""

BLUEPRINTS: tuple = ()
