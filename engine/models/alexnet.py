"""torchvision's AlexNet, with a grey-input variant and the timm classifier face.

torchvision already pools the features adaptively to 6x6, so any side from 64 pixels up works (its
first 11x11 stride-4 convolution and three poolings leave nothing of a smaller image).
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from engine.models import register_model


class AlexNet(tvm.AlexNet):
    """AlexNet whose state_dict keys are torchvision's, so its ImageNet weights load directly."""

    def __init__(self, num_classes: int, in_chans: int = 3, dropout: float = 0.5):
        super().__init__(num_classes=num_classes, dropout=dropout)
        if in_chans != 3:
            self.features[0] = nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2)
        self.num_classes = num_classes

    def get_classifier(self) -> nn.Module:
        """Return the last linear layer (the earlier 4096-unit layers are transferable)."""
        return self.classifier[6]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last linear layer with a fresh one of ``num_classes`` outputs."""
        self.num_classes = num_classes
        self.classifier[6] = nn.Linear(self.classifier[6].in_features, num_classes)


@register_model("alexnet", pretrained_weights=lambda: tvm.AlexNet_Weights.IMAGENET1K_V1)
def alexnet(num_classes: int, in_chans: int = 3, dropout: float = 0.5) -> nn.Module:
    return AlexNet(num_classes, in_chans, dropout)
