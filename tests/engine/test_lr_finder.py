"""The learning-rate range test on scikit-learn's real digits: the loss first falls and then blows up as the rate
grows, the chosen rate lies a decade below the valley, and a run at that rate learns the digits well."""

from __future__ import annotations

import dataclasses
import math

import pytest

from engine.datasets import ArrayDataset
from engine.exceptions import InvalidInput
from engine.lr_finder import find_learning_rate
from engine.training import TrainConfig, fit
from tests.digits import digit_images

CLASSES = [str(d) for d in range(10)]


def config(**change) -> TrainConfig:
    base = dict(model_name="convnetb", num_classes=10, epochs=6, batch_size=32, learning_rate=0.01, image_size=16,
                grey=True, seed=3, lr_schedule="plateau")
    return TrainConfig(**{**base, **change})


def digits(cfg: TrainConfig):
    images, labels = digit_images()
    pre = cfg.preprocessing()
    return ArrayDataset(images[:1400], labels[:1400], pre, train=True), ArrayDataset(images[1400:], labels[1400:], pre)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_loss_falls_then_blows_up_and_the_rate_is_a_decade_below_the_valley(optimizer):
    cfg = config(optimizer=optimizer)
    train, test = digits(cfg)
    progress = []
    found = find_learning_rate(cfg, train, on_progress=lambda done, total: progress.append((done, total)))
    lrs, losses = found["lrs"], found["losses"]
    assert len(lrs) == len(losses) == found["steps"] and all(math.isfinite(x) for x in losses)
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-6)
    valley = losses.index(min(losses))
    assert 0 < valley < len(losses) - 1, "the loss falls, then rises again"
    assert min(losses) < 0.6 * losses[0]  # ln(10) = 2.3 at the start; about 0.4-0.6 at the valley here
    assert found["lowest_at"] == lrs[valley] and found["chosen"] == pytest.approx(lrs[valley] / 10)
    assert 1e-3 <= found["chosen"] <= 0.3, found["chosen"]  # 0.009 (sgd), 0.004 (adam) where this was written
    assert progress[0] == (0, 100) and all(total == 100 for _, total in progress)


def test_a_run_at_the_chosen_rate_learns_the_digits(tmp_path):
    cfg = config(epochs=4)
    train, test = digits(cfg)
    found = find_learning_rate(cfg, train)
    result = fit(dataclasses.replace(cfg, learning_rate=found["chosen"]), train, test, CLASSES, tmp_path)
    assert result.best_score >= 85.0, result.best_score  # 97.2 in 4 epochs where this was written


def test_a_head_only_run_is_refused_naming_learning_rate():
    cfg = TrainConfig(model_name="efficientnet-lite0", num_classes=2, pretrained=True, head_only=True)
    with pytest.raises(InvalidInput) as info:
        find_learning_rate(cfg, ArrayDataset(digit_images()[0][:4], [0, 1, 0, 1], cfg.preprocessing()))
    assert info.value.field == "learning_rate" and "head-only" in str(info.value)
