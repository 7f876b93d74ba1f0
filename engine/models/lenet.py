"""LeNet-5 (LeCun et al., 1998) with ReLU and max pooling, adaptive so that any input side >= 16 works."""

from __future__ import annotations

from torch import nn

from engine.models import register_model
from engine.models.base import ImageClassifier


class LeNet5(ImageClassifier):
    """Two 5x5 convolutions (6 and 16 maps) and the 120-84 fully connected layers of LeNet-5.

    The original expects 32x32 inputs, where the second pooling leaves a 5x5 map; an adaptive pooling
    to 5x5 gives the fully connected part that shape at any input size.
    """

    def __init__(self, num_classes: int, in_chans: int = 3):
        super().__init__(num_classes)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(5),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
        )
        self.head = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(84, num_classes)


@register_model("lenet5")
def lenet5(num_classes: int, in_chans: int = 3) -> nn.Module:
    return LeNet5(num_classes, in_chans)
