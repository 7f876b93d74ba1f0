"""The feature blueprints; ``create_app`` registers each of them."""

from services.web.routes.annotate import bp as annotate_bp
from services.web.routes.datasets import bp as datasets_bp
from services.web.routes.generate import bp as generate_bp
from services.web.routes.segment import bp as segment_bp
from services.web.routes.train import bp as train_bp
from services.web.routes.tune import bp as tune_bp

BLUEPRINTS: tuple = (annotate_bp, segment_bp, generate_bp, train_bp, tune_bp, datasets_bp)
