"""Classification metrics of a run: accuracy counts, the confusion matrix, and the multi-label figures
(average precision, per-label thresholds, precision/recall/F1), on top of scikit-learn's implementations."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm


def count_correct(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Correct decisions: samples (single-label) or sample-label pairs at probability 0.5 (multi-label)."""
    if multi_label:
        return ((logits > 0) == (targets > 0.5)).sum()
    return (logits.argmax(dim=1) == targets).sum()


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> list[list[int]]:
    """Return the confusion matrix as nested lists: rows are true classes, columns predictions."""
    matrix = skm.confusion_matrix(targets.long().numpy(), predictions.long().numpy(), labels=range(num_classes))
    return matrix.tolist()


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class average precision; NaN for classes without positives (where it is undefined)."""
    truth = targets > 0.5
    result = np.full(scores.shape[1], np.nan)
    present = truth.any(0)
    if present.any():
        result[present] = skm.average_precision_score(truth[:, present], scores[:, present], average=None)
    return result


def best_thresholds(probs: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per class, the probability threshold that maximises F1 on this set (0.5 for classes never present)."""
    thresholds = []
    for c in range(probs.shape[1]):
        order = np.argsort(-probs[:, c], kind="stable")
        hits = targets[order, c] > 0.5
        if not hits.any():
            thresholds.append(0.5)
            continue
        tp = np.cumsum(hits)
        f1 = 2 * tp / (np.arange(1, len(hits) + 1) + hits.sum())
        k = int(np.argmax(f1))
        # Midway to the next score, so that the chosen item is included with some margin.
        nxt = probs[order[k + 1], c] if k + 1 < len(order) else 0.0
        thresholds.append(float((probs[order[k], c] + nxt) / 2))
    return thresholds


def multilabel_metrics(probs: np.ndarray, targets: np.ndarray, thresholds: Sequence[float]) -> dict[str, Any]:
    """mAP, micro/macro F1 and per-class precision/recall/F1 (percentages) at the given thresholds."""
    truth = targets > 0.5
    pred = probs >= np.asarray(thresholds)[None, :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # labels absent from this set: zero_division answers for them
        precision, recall, f1, support = skm.precision_recall_fscore_support(truth, pred, average=None,
                                                                              zero_division=0)
        micro_f1 = skm.f1_score(truth, pred, average="micro", zero_division=0)
    ap = average_precision(probs, targets)
    return {
        "map": 100 * float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0,
        "micro_f1": 100 * float(micro_f1),
        "macro_f1": 100 * float(f1[truth.any(0)].mean()) if truth.any() else 0.0,
        "precision": (100 * precision).tolist(),
        "recall": (100 * recall).tolist(),
        "f1": (100 * f1).tolist(),
        "average_precision": [None if math.isnan(a) else 100 * float(a) for a in ap],
        "support": support.astype(int).tolist(),
    }


def single_label_report(logits: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str],
                        pairs: int = 5, worst: int = 8,
                        item_id: Callable[[int], str] | None = None) -> dict[str, Any]:
    """What a single-label run got right and wrong on an evaluation set.

    Returns:
        ``per_class`` (name → precision, recall, f1 in percent, support), ``confused_pairs`` (the ``pairs``
        most frequent mistakes: true, predicted, count), and ``worst`` (up to ``worst`` misclassified samples,
        most confidently wrong first: their ``index`` in the evaluation set and, with ``item_id``, its ``id``
        there (e.g. ``test/17`` of an HDF5 file, ``cat/img_3.jpg`` of class folders), true and predicted
        class, and the probability the model gave the true class, in percent).
    """
    probs = torch.softmax(logits.float(), 1).numpy()
    truth, predicted = targets.numpy(), probs.argmax(1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0)
    per_class = {name: {"precision": 100 * float(precision[i]), "recall": 100 * float(recall[i]),
                        "f1": 100 * float(f1[i]), "support": int(support[i])} for i, name in enumerate(class_names)}
    matrix = skm.confusion_matrix(truth, predicted, labels=labels)
    np.fill_diagonal(matrix, 0)
    order = np.argsort(-matrix, axis=None, kind="stable")[:pairs]
    confused = [{"true": class_names[t], "predicted": class_names[p], "count": int(matrix[t, p])}
                for t, p in zip(*np.unravel_index(order, matrix.shape), strict=True) if matrix[t, p] > 0]
    on_truth = probs[np.arange(len(truth)), truth]
    wrong = np.flatnonzero(predicted != truth)
    wrong = wrong[np.argsort(on_truth[wrong], kind="stable")][:worst]
    return {"per_class": per_class, "confused_pairs": confused,
            "worst": [{"index": int(i), **({"id": item_id(int(i))} if item_id is not None else {}),
                       "true": class_names[truth[i]], "predicted": class_names[predicted[i]],
                       "true_probability": 100 * float(on_truth[i])} for i in wrong]}
