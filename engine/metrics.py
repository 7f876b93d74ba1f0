"""Classification metrics of a run: accuracy counts, the confusion matrix, and the multi-label figures
(average precision, per-label thresholds, precision/recall/F1), on top of scikit-learn's implementations."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
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
