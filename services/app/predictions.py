"""Serving predictions: pick the model (given, active, else best), load it once per process, predict.

The ``predict`` action (:func:`predict_image`) is what ``POST /api/v1/predict`` and the Predict page call;
``services.app.suggestions`` picks the model of suggested tags. This is the serving part of the web process:
torch is imported on the first prediction, never at start.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.exceptions import Conflict, InvalidInput, NotFound
from engine.images import decode_image
from services.app.rules import Actor, action
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


def load_serving() -> None:
    """Import the serving stack (torch, the model zoo) if this process has not yet: the first prediction does.

    A web process calls it from its event loop's thread (see ``services/web/routes/train.py``).
    """
    import engine.inference  # noqa: F401  (torch is imported only where predictions are served)


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


class NoModel(Conflict):
    """Nothing to predict with: no model is trained yet."""

    field = "model"


@dataclass(frozen=True)
class Prediction:
    """What a prediction answers: the engine's answer (with the model id) and the image as decoded."""

    answer: dict
    image: np.ndarray


@action("predict")
def predict_image(actor: Actor, image: bytes | str, model_id: str | None = None) -> Prediction:
    """Classify one image (raw bytes, base64 or a data URL) with ``model_id``, else the active, else the best model.

    Raises:
        NotFound: (field ``model``) no trained model ``model_id``; checked first, a catalog look-up.
        InvalidInput / ImageTooLarge: the image does not decode, or is over the size limits (field ``image``);
            checked before there need be a model, so an oversized image is refused either way.
        NoModel: no model is trained yet.
    """
    config = actor.config
    row = choose_model(actor.store, model_id)
    if row is None and model_id is not None:
        raise NotFound(f"no trained model {model_id!r}", "model")
    decoded = decode_image(image, "image", config.max_image_pixels, config.image_budget_mb * 2**20,
                           max_side=PREDICT_MAX_SIDE)
    if row is None:
        raise NoModel("no trained model yet: train one with POST /api/v1/train", "model")
    return Prediction(predict(config, row, decoded), decoded)
