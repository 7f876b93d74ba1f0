"""Learning rates that are too high, on scikit-learn's real digits.

Ten times too high, the run (with the legacy API's ``lr_decay``, i.e. a plateau schedule) ends close to a
well-tuned one (95-97 % against 98 % where this was written), its history showing the rate it lowered. Far
too high, the run notices that it diverged, goes back to its starting weights with a tenth of the rate, says
so in its history, and still ends well."""

from __future__ import annotations

import pytest

from engine.datasets import ArrayDataset
from engine.training import TrainConfig, fit
from tests.digits import digit_images

CLASSES = [str(d) for d in range(10)]


def run(tmp_path, learning_rate: float):
    config = TrainConfig(model_name="convnetb", num_classes=10, epochs=10, batch_size=32, learning_rate=learning_rate,
                         lr_schedule="plateau", image_size=16, grey=True, seed=3)
    images, labels = digit_images()
    pre = config.preprocessing()
    train = ArrayDataset(images[:1400], labels[:1400], pre, train=True)
    test = ArrayDataset(images[1400:], labels[1400:], pre)
    return fit(config, train, test, CLASSES, tmp_path)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    return run(tmp_path_factory.mktemp("tuned"), 0.05)


def test_ten_times_too_high_ends_close_to_a_tuned_run(tuned, tmp_path):
    assert tuned.best_score >= 88, tuned.best_score  # 97.7-98.2 where this was written
    high = run(tmp_path, 0.5)
    assert high.best_score >= 85 and high.best_score >= tuned.best_score - 8, (high.best_score, tuned.best_score)
    rates = [r["lr"] for r in high.history]
    assert rates[0] == pytest.approx(0.5) and rates[-1] <= 0.05 + 1e-12, rates  # the history shows it lowered


def test_a_diverged_run_goes_back_lowers_the_rate_says_so_and_ends_well(tmp_path):
    wild = run(tmp_path, 3.0)
    first = wild.history[0]
    assert first["event"].startswith("diverged: training loss") and "starting weights" in first["event"]
    assert first["improved"] is False and wild.history[1]["lr"] == pytest.approx(0.3)
    assert not any("event" in r for r in wild.history[1:])
    assert wild.best_score >= 85, wild.best_score  # 95.5 where this was written; 10 % without the guard
