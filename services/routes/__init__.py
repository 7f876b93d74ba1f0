"""The feature blueprints; ``create_app`` registers each of them."""

from services.routes.annotate import bp as annotate_bp
from services.routes.datasets import bp as datasets_bp
from services.routes.generate import bp as generate_bp
from services.routes.segment import bp as segment_bp
from services.routes.train import bp as train_bp
from services.routes.tune import bp as tune_bp

BLUEPRINTS: tuple = (annotate_bp, segment_bp, generate_bp, train_bp, tune_bp, datasets_bp)
