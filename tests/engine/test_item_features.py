"""Per-item feature caching of a dataset that names its items: a grown annotation set costs only its new images."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from engine.datasets import NewdataDataset, make_preprocessing
from engine.features import cached_features, compute_features
from engine.models import create_model
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
