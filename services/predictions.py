"""Serving predictions: pick the model (given, active, else best), load it once per process, predict.

Shared by ``POST /api/v1/predict``, ``POST /imgup`` (suggested tags) and the Predict / Annotate pages.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np

from engine.exceptions import InvalidInput
from services.config import Config
from services.rows import Model
from services.store import Store

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


# Below this validation mAP a model's tags are more noise than help: better no suggestion than a wrong one.
SUGGEST_MIN_MAP = 0.5


def annotation_model(store: Store) -> tuple[Model | None, str]:
    """The model whose tags are suggested to annotators, and a sentence saying which (or why none).

    Only the multi-label model an admin or operator activated counts, and only when its validation
    (test split) mAP reaches :data:`SUGGEST_MIN_MAP`; the best of the rest is never picked silently.
    """
    active = store.list_models(active=True, multi_label=True)
    if not active:
        return None, "No suggestions: no multi-label model is activated (an operator activates one on Models)."
    row = active[0]
    score = (row["metrics"] or {}).get("test_map")
    name = f"{row['model_name']} ({row['id'][:8]})"
    if score is None or score < SUGGEST_MIN_MAP:
        shown = "unknown" if score is None else f"{score:.2f}"
        return None, f"No suggestions: the active model {name} has a validation mAP of {shown}, " \
                     f"below the {SUGGEST_MIN_MAP:.2f} suggestions need."
    return row, f"Suggestions from {name}, validation mAP {score:.2f} (at least {SUGGEST_MIN_MAP:.2f} needed)."


def suggest(config: Config, store: Store, image_rgb: np.ndarray) -> dict:
    """``{"tags": [over the model's per-label thresholds], "scores": {label: p}}`` ({} without a model)."""
    row, _why = annotation_model(store)
    if row is None:
        return {"tags": [], "scores": {}}
    answer = predict(config, row, image_rgb)
    return {"tags": list(answer.get("tags", [])), "scores": dict(answer.get("scores", {}))}


def suggest_tags(config: Config, store: Store, image_rgb: np.ndarray) -> list[str]:
    """Tags the annotation model suggests for an image ([] when no model earns the right, see annotation_model)."""
    return suggest(config, store, image_rgb)["tags"]
