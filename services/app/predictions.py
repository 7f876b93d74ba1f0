"""Serving predictions: pick the model (given, active, else best), load it once per process, predict.

Shared by ``POST /api/v1/predict`` and the Predict page; ``services.app.suggestions`` picks the model of suggested tags.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np

from engine.exceptions import InvalidInput
from services.platform.config import Config
from services.storage.rows import Model
from services.storage.store import Store

_lock = threading.Lock()
# Models see a few hundred pixels a side; a JPEG is decoded at the smallest scale that keeps this many.
PREDICT_MAX_SIDE = 1024


def choose_model(store: Store, model_id: str | None = None, multi_label: bool | None = None) -> Model | None:
    """The catalog row of ``model_id``; else the active model; else the best finished one (None if none).

    ``multi_label`` restricts the automatic choice to single-label (False) or multi-label (True) models.
    """
    if model_id is not None:
        return store.get_model(model_id)
    active = store.list_models(active=True, multi_label=multi_label)
    if active:
        return active[0]
    rows = store.list_models(multi_label=multi_label)
    return max(rows, key=lambda r: (r["metrics"] or {}).get("best_accuracy") or 0.0, default=None)


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime: float):
    from engine.inference import Predictor  # torch is imported only where predictions are served

    return Predictor(Path(path))


def predictor_for(config: Config, row: dict):
    """The loaded model of a catalog row, cached per process (reloaded if the file changed).

    Raises:
        InvalidInput: (field ``model``) the row's checkpoint file is gone.
    """
    path = config.path(row["path"])
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        raise InvalidInput(f"the checkpoint of model {row['id']!r} is missing; train or choose another model",
                           "model") from None
    with _lock:  # one load per model even when many requests arrive at once
        return _load(str(path), mtime)


def predict(config: Config, row: dict, image_rgb: np.ndarray) -> dict:
    """Predict with the model of ``row``; the engine's answer plus the model id."""
    return {**predictor_for(config, row).predict(image_rgb), "model": row["id"]}
