"""Per-item feature caching of a dataset that names its items: a grown annotation set costs only its new images."""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import torch

from engine.datasets import ArrayDataset, NewdataDataset, make_preprocessing
from engine.features import cached_features, compute_features
from engine.models.build import create_model
from tests.tagged_photos import photo


class NamedImages(NewdataDataset):
    """Annotated images named by file hash, as the suggestion head's retrain names them."""

    def item_keys(self) -> list[str]:
        return [hashlib.sha256(path.read_bytes()).hexdigest() for path, _ in self.items]


def test_a_grown_dataset_runs_the_backbone_only_on_its_new_images(tmp_path):
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=2)
    pre = make_preprocessing(32)
    items = []
    for i, label in enumerate(["person", "grass", "motorcycle", "person"]):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(photo(label, i))
        items.append((path, [label]))
    names = ["person", "motorcycle", "grass"]
    cache = tmp_path / "features"
    seen: list[tuple[int, int]] = []

    first = cached_features("lenet5", model, NamedImages(items[:3], names, pre, train=True), cache,
                            on_progress=lambda done, total: seen.append((done, total)))
    assert not first.from_cache and seen[-1] == (3, 3)

    seen.clear()
    grown = NamedImages(items, names, pre, train=True)
    second = cached_features("lenet5", model, grown, cache, on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 1)], "only the added image goes through the backbone"
    whole, targets = compute_features(model, grown)
    np.testing.assert_allclose(second.features, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(second.targets, targets)
    assert second.targets.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]]

    again = cached_features("lenet5", model, grown, cache)
    assert again.from_cache and np.array_equal(again.features, second.features)


def test_two_jobs_asking_for_the_same_features_at_once_run_the_backbone_once(tmp_path, monkeypatch):
    """A study's parallel head-only trials: the second waits for the first's cache entry instead of computing it."""
    from engine import features

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    data = ArrayDataset(images, [i % 2 for i in range(12)], make_preprocessing(32))
    waiting, original_pause = threading.Event(), features._pause
    monkeypatch.setattr(features, "_pause", lambda: (waiting.set(), original_pause()))
    progress: dict[str, list] = {"first": [], "second": []}
    results: dict[str, features.FeatureSet] = {}

    def job(name: str) -> None:
        torch.manual_seed(0)  # the same weights in each job, as two workers load them
        model = create_model("lenet5", num_classes=2)

        def on_progress(done: int, total: int) -> None:
            progress[name].append(done)
            if name == "first" and done == 12:
                started.set()
                assert waiting.wait(30), "the second job never waited for the first"

        results[name] = cached_features("lenet5", model, data, tmp_path, batch_size=4, on_progress=on_progress)

    started = threading.Event()
    first = threading.Thread(target=job, args=("first",))
    first.start()
    assert started.wait(60)
    second = threading.Thread(target=job, args=("second",))
    second.start()
    first.join(60)
    second.join(60)
    assert progress["first"] == [4, 8, 12] and progress["second"] == [], "the backbone ran once"
    assert not results["first"].from_cache and results["second"].from_cache
    np.testing.assert_array_equal(results["first"].features, results["second"].features)
