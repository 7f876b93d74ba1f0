"""Learning rates that are too high, on scikit-learn's real digits.

Ten times too high, the weights jump about: when the test accuracy falls far below its best, the run goes back
to its best weights with a tenth of the rate, says so in its history, and ends close to a well-tuned run
(95.5-97.0 % against 96.5-98.2 % over seeds 3-8 where this was written: `bench/bench_learning_rate.py`). Sixty
times too high, the first epoch's weights die (the test loss is hundreds of times the starting weights'; the
training loss need not say so): the run goes back to its starting weights with a tenth of the rate, and still
ends well (94.5-98.2 %; 10 % for seeds 4 and 5 before the test side was watched)."""

from __future__ import annotations

import pytest

from engine.datasets import ArrayDataset
from engine.training import TrainConfig, fit
from tests.digits import digit_images

CLASSES = [str(d) for d in range(10)]


def run(tmp_path, learning_rate: float, seed: int = 3):
    config = TrainConfig(model_name="convnetb", num_classes=10, epochs=10, batch_size=32, learning_rate=learning_rate,
                         lr_schedule="plateau", image_size=16, grey=True, seed=seed)
    images, labels = digit_images()
    pre = config.preprocessing()
    train = ArrayDataset(images[:1400], labels[:1400], pre, train=True)
    test = ArrayDataset(images[1400:], labels[1400:], pre)
    return fit(config, train, test, CLASSES, tmp_path)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    return run(tmp_path_factory.mktemp("tuned"), 0.05, seed=4)


def test_ten_times_too_high_ends_close_to_a_tuned_run(tuned, tmp_path):
    assert tuned.best_score >= 88, tuned.best_score  # 98.2 where this was written (seed 4)
    assert not any("event" in r for r in tuned.history)  # a tuned run is left alone
    high = run(tmp_path, 0.5, seed=4)  # 97.0 against 98.2 where this was written
    assert high.best_score >= 88 and high.best_score >= tuned.best_score - 8, (high.best_score, tuned.best_score)
    events = [(r["epoch"], r["event"]) for r in high.history if "event" in r]
    assert events and events[0][1].startswith("diverged: test accuracy fell"), events  # the history says so
    rates = [r["lr"] for r in high.history]
    assert rates[-1] <= 0.05 + 1e-12, rates  # and the rate it went on with


@pytest.mark.parametrize("seed", [3, 4])
def test_a_diverged_run_goes_back_lowers_the_rate_says_so_and_ends_well(tmp_path, seed):
    """Seed 3's first epoch blows up the training loss; seed 4's kills the weights with a training loss that
    looks moderate, and only the test loss (403 against 2.3 for the starting weights) tells."""
    wild = run(tmp_path, 3.0, seed)
    first = wild.history[0]
    assert first["event"].startswith("diverged:") and "starting weights" in first["event"], first
    assert first["improved"] is False and wild.history[1]["lr"] <= 0.3 + 1e-12
    assert wild.best_score >= 85, wild.best_score  # 95.5 and 97.0 where this was written; 10 % without the guard
