"""The end-of-run report of a single-label run: per-class precision and recall, the most confused pairs, and
the samples the model got most confidently wrong, checked against scikit-learn on known outputs."""

from __future__ import annotations

import pytest
import torch

from engine.training import final_evaluation

NAMES = ["cat", "dog", "cup"]
# Six samples: truth and the model's logits (argmax = prediction).
TRUTH = torch.tensor([0, 0, 1, 1, 2, 2])
LOGITS = torch.tensor([
    [3.0, 0.0, 0.0],   # cat -> cat
    [0.0, 4.0, 0.0],   # cat -> dog, very sure (true-class probability ~1.8 %)
    [0.0, 2.0, 0.0],   # dog -> dog
    [1.0, 0.0, 0.0],   # dog -> cat, unsure
    [0.0, 0.0, 2.0],   # cup -> cup
    [0.0, 0.0, 5.0],   # cup -> cup
])


def test_per_class_precision_recall_pairs_and_worst():
    report = final_evaluation(LOGITS, TRUTH, False, NAMES)
    assert report["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [0, 0, 2]]
    assert report["per_class"]["cat"] == pytest.approx({"precision": 50.0, "recall": 50.0, "f1": 50.0, "support": 2})
    assert report["per_class"]["cup"]["precision"] == 100.0 and report["per_class"]["cup"]["recall"] == 100.0
    assert report["confused_pairs"] == [{"true": "cat", "predicted": "dog", "count": 1},
                                        {"true": "dog", "predicted": "cat", "count": 1}]
    worst = report["worst"]
    assert [(w["index"], w["true"], w["predicted"]) for w in worst] == [(1, "cat", "dog"), (3, "dog", "cat")]
    assert worst[0]["true_probability"] == pytest.approx(100 / (2 + torch.e ** 4), rel=1e-4)


def test_a_perfect_run_has_no_confusions_and_no_worst():
    report = final_evaluation(torch.eye(3) * 5, torch.tensor([0, 1, 2]), False, NAMES)
    assert report["confused_pairs"] == [] and report["worst"] == []
