"""Tag suggestions for the Annotate page, and the head that retrains itself on the labels saved so far.

Policy, in one place:

- The model whose tags are suggested is the multi-label model an admin or operator activated, when one
  is; otherwise the newest *suggestion head*: the product's own model for annotation, a multi-label head
  on the bundled EfficientNet-Lite0's features, trained by the ``suggestion_head`` job. An activated
  model keeps priority because a person chose it on purpose.
- Either way its validation mAP must reach :data:`SUGGEST_MIN_MAP`; below it nothing is suggested.
- After every ``config.suggest_retrain_every`` newly saved labels (the catalog's ``images.labels``), one
  retrain is queued; never a second while one is queued or running. Before any label exists there is no
  head, so nothing is suggested (never random tags).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from engine import labels as labelsets
from services.app.annotated_images import labelled_items
from services.app.predictions import predict
from services.jobs import runtime as jobs
from services.jobs.runtime import JobContext, job_kind, redis_connection
from services.platform.config import Config
from services.storage.store import ImageQuery, Store

log = logging.getLogger(__name__)

RETRAIN_KIND = "suggestion_head"
BACKBONE = "efficientnet-lite0"
# Below this validation mAP a model's tags are more noise than help: better no suggestion than a wrong one.
SUGGEST_MIN_MAP = 0.5
# A label needs an image on each side of the train/validation split before the head can learn and be judged on it.
MIN_IMAGES_PER_LABEL = 2
KEEP_HEADS = 3  # older heads are deleted: each is a whole network's checkpoint (~18 MB)
HEAD_EPOCHS = 60  # epochs of a linear head on cached features take milliseconds
LOCK_KEY = "studio:suggestions:retrain:lock"


# ------------------------------------------------------------------------------------- which model


def annotation_model(config: Config, store: Store) -> tuple[dict | None, str]:
    """The model whose tags are suggested to annotators, and a sentence saying which (or why none).

    An activated multi-label model wins; else the newest suggestion head. Either needs a validation mAP
    of at least :data:`SUGGEST_MIN_MAP`.
    """
    active = store.list_models(active=True, multi_label=True)
    if active:
        return _judge_active(active[0])
    head = latest_head(store)
    if head is None:
        return None, (f"No suggestions: no multi-label model is activated (an operator activates one on Models), "
                      f"and no suggestion head is trained yet: {_retrains(config)}.")
    score = validation_map(head)
    if score is None or score < SUGGEST_MIN_MAP:
        return None, (f"No suggestions: the suggestion head {describe_head(head)} has a validation mAP of "
                      f"{_shown(score)}, below the {SUGGEST_MIN_MAP:.2f} suggestions need; {_retrains(config)}.")
    return head, (f"Suggested by {describe_head(head)}; validation mAP {score:.2f} (suggestions need at least "
                  f"{SUGGEST_MIN_MAP:.2f}). A multi-label model an operator activates would take priority.")


def _judge_active(row: dict) -> tuple[dict | None, str]:
    score = validation_map(row)
    if score is None or score < SUGGEST_MIN_MAP:
        return None, (f"No suggestions: the active model {_name(row)} has a validation mAP of {_shown(score)}, "
                      f"below the {SUGGEST_MIN_MAP:.2f} suggestions need.")
    return row, (f"Suggestions from {_name(row)}, trained {_trained(row)}, validation mAP {score:.2f} (at least "
                 f"{SUGGEST_MIN_MAP:.2f} needed); activated by an operator, it takes priority over the self-trained "
                 f"suggestion head.")


def _shown(score: float | None) -> str:
    return "unknown" if score is None else f"{score:.2f}"


def validation_map(row: dict) -> float | None:
    """The model's validation mAP as a fraction in [0, 1] (the catalog keeps percentages); None if unknown."""
    score = (row["metrics"] or {}).get("test_map")
    return None if score is None else float(score) / 100.0


def describe_head(row: dict) -> str:
    """``<model>, trained <UTC time> on <n> labelled photos``."""
    count = (row["metrics"] or {}).get("labelled_images", "?")
    return f"{_name(row)}, trained {_trained(row)} on {count} labelled photos"


def _trained(row: dict) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(row["created_at"]))


def _name(row: dict) -> str:
    return f"{row['model_name']} ({row['id'][:8]})"


def _retrains(config: Config) -> str:
    every = config.suggest_retrain_every
    if every <= 0:
        return "it does not retrain itself here (SUGGEST_RETRAIN_EVERY is 0)"
    return f"it trains itself after every {every} newly saved labels"


def latest_head(store: Store) -> dict | None:
    """The newest model a ``suggestion_head`` job trained (None before the first)."""
    heads = _heads(store)
    return heads[0] if heads else None


def _heads(store: Store) -> list[dict]:
    """Suggestion heads, newest first: the multi-label models whose job is a retrain."""
    return store.list_models_trained_by(RETRAIN_KIND, multi_label=True)


def suggest(config: Config, store: Store, image_rgb: np.ndarray) -> dict:
    """``{"tags": [over the model's per-label thresholds], "scores": {label: p}, "model": its id}``.

    Empty tags and scores, and model None, when no model earns the right (:func:`annotation_model`).
    """
    row, _why = annotation_model(config, store)
    if row is None:
        return {"tags": [], "scores": {}, "model": None}
    answer = predict(config, row, image_rgb)
    return {"tags": list(answer.get("tags", [])), "scores": dict(answer.get("scores", {})), "model": row["id"]}


# ------------------------------------------------------------------------------------ when to retrain


def labels_saved(config: Config, store: Store) -> str | None:
    """Called after labels are saved: queue a retrain once enough new labels arrived; the job id, or None.

    Never raises: a retrain that cannot be queued (Redis down) must not cost the user the labels just saved.
    """
    try:
        return maybe_retrain(config, store)
    except Exception:  # noqa: BLE001 - advisory; the log keeps the cause and the next save tries again
        log.exception("could not queue a retrain of the suggestion head")
        return None


def maybe_retrain(config: Config, store: Store) -> str | None:
    """Queue a ``suggestion_head`` job when ``suggest_retrain_every`` labels were saved since the last one.

    Serialised by a lock in Redis (the API, the UI and workers may be processes on several machines; a
    Redis lock also yields to gevent while it waits, where a file lock would block the API's event loop),
    so two saves never queue two retrains; none is queued while another is queued or running.
    """
    every = config.suggest_retrain_every
    if every <= 0:
        return None
    with redis_connection(config.effective_redis_url).lock(LOCK_KEY, timeout=60, blocking_timeout=30):
        previous = store.list_jobs(kind=RETRAIN_KIND, limit=1)
        if previous and jobs.read_job(config, store, previous[0])["status"] not in jobs.TERMINAL:
            return None
        since = previous[0]["params"]["labels_until"] if previous else 0.0
        now = time.time()
        if labels_saved_since(store, since) < every:
            return None
        return jobs.submit(config, store, RETRAIN_KIND, {"labels_until": now}, None)


def labels_saved_since(store: Store, since: float) -> int:
    """How many images had labels saved after ``since`` (a re-labelled image counts again)."""
    return store.count_images(ImageQuery(labelled_after=since))


# --------------------------------------------------------------------------------------- the retrain


def head_labels(items: list[tuple[Path, list[str]]], label_set: list[str]) -> list[str]:
    """The labels a head can learn and be judged on: in the label set, on at least two images (set order)."""
    counts = Counter(label for _, labels in items for label in labels)
    return [label for label in label_set if counts[label] >= MIN_IMAGES_PER_LABEL]


@job_kind(RETRAIN_KIND, timeout=3600, result_ttl=7 * 24 * 3600,
          description="retrain the Annotate page's suggestion head on the labels saved so far")
def retrain_head(ctx: JobContext, params: dict) -> dict:
    """Train a multi-label head on EfficientNet-Lite0 features of the labelled images; register it.

    Features are cached per dataset (``DATA_DIR/features``), so a retrain on unchanged labels skips the
    backbone. The model's per-label thresholds and validation mAP come from :func:`engine.training.fit_head`.
    """
    from services.app import training  # torch is imported only by the workers that run this

    items = labelled_items(ctx.config, ctx.store)
    names = head_labels(items, labelsets.read_label_set(ctx.config.path("newdata")))
    if not names:
        return {"model_id": None, "labelled_images": len(items),
                "skipped": f"no label is on {MIN_IMAGES_PER_LABEL} or more labelled images yet"}
    result = _fit(ctx, items, names)
    row = training.register_model(ctx.config, ctx.store, ctx.job_id, None)
    if row is None:
        return {"model_id": None, "labelled_images": len(items), "skipped": "the head never improved"}
    metrics = {**row["metrics"], "labelled_images": len(items), "labels_until": params["labels_until"]}
    ctx.store.update_model(row["id"], metrics=metrics)
    _prune(ctx.config, ctx.store)
    return {"model_id": row["id"], "labelled_images": len(items), "class_names": names,
            "test_map": metrics.get("test_map"), "best_epoch": result.best_epoch}


def _fit(ctx: JobContext, items: list[tuple[Path, list[str]]], names: list[str]):
    from engine.training import TrainConfig, fit_head

    config = TrainConfig(BACKBONE, num_classes=len(names), epochs=HEAD_EPOCHS, batch_size=16, learning_rate=0.01,
                         optimizer="adam", multi_label=True, pretrained=True, head_only=True, lr_pretrained=0.0,
                         seed=0)
    train_items, val_items = labelsets.split_multilabel(items, names, 0.2, seed=0)
    prep = config.preprocessing()
    dataset = _annotated_images_class()
    train, val = dataset(train_items, names, prep, train=True), dataset(val_items, names, prep)
    return fit_head(config, train, val, names, ctx.config.path("checkpoints", ctx.job_id), ctx.config.path("features"),
                    on_epoch=ctx.epoch, should_stop=ctx.should_stop,
                    on_progress=lambda done, total: ctx.progress(done, total, unit="image",
                                                                 stage="computing features"))


def _annotated_images_class():
    """:class:`~engine.datasets.NewdataDataset` whose items are named by file hash, so that
    :func:`engine.features.cached_features` caches their features per image: the set only grows between
    retrains, and only its new photos then go through the backbone."""
    from engine.datasets import NewdataDataset

    class AnnotatedImages(NewdataDataset):
        def item_keys(self) -> list[str]:
            return [hashlib.sha256(path.read_bytes()).hexdigest() for path, _ in self.items]

    return AnnotatedImages


def _prune(config: Config, store: Store) -> None:
    """Delete all but the newest :data:`KEEP_HEADS` heads (an activated one is kept whatever its age)."""
    from services.app.training import delete_model

    for row in _heads(store)[KEEP_HEADS:]:
        if not row["active"]:
            delete_model(config, store, row["id"])
