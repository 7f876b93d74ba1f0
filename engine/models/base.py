"""The base class of the zoo's own models (torch)."""

from __future__ import annotations

import torch
from torch import nn


class ImageClassifier(nn.Module):
    """Base of the zoo's own models: ``features`` (a backbone) followed by a rebuildable ``head``.

    Subclasses set ``self.features`` and implement ``_make_head(num_classes)``; the head receives the
    backbone's output unchanged.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def _make_head(self, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def get_classifier(self) -> nn.Module:
        """Return the class-specific layer."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one of ``num_classes`` outputs."""
        self.num_classes = num_classes
        self.head = self._make_head(num_classes)
