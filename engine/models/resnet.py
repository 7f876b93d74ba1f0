"""torchvision's ResNet-18 with a single-label (softmax) or multi-label (sigmoid) head.

The head is one linear layer in both cases; ``multi_label`` (set by ``create_model``) changes the loss
and the decision, not the layer. For transfer learning the training loop gives the classifier
(``get_classifier()``, here ``fc``) the main learning rate and every other, pretrained, layer
``lr_pretrained`` (0 freezes them), as the legacy pipeline's ``--lr`` / ``--lrp`` did.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock

from engine.models import register_model


class ResNet18(tvm.ResNet):
    """ResNet-18 whose state_dict keys are torchvision's, so ImageNet weight files load directly."""

    def __init__(self, num_classes: int, in_chans: int = 3, drop: float = 0.0):
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        if in_chans != 3:
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        # Dropout before the classifier is optional: useful with few labelled images per class.
        self.drop = nn.Dropout(drop)
        self.num_classes = num_classes

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.drop(self.avgpool(x).flatten(1)))

    def get_classifier(self) -> nn.Module:
        """Return the final linear layer."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final linear layer with a fresh one of ``num_classes`` outputs."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.fc.in_features, num_classes)


@register_model("resnet18", pretrained_weights=lambda: tvm.ResNet18_Weights.IMAGENET1K_V1)
def resnet18(num_classes: int, in_chans: int = 3, drop: float = 0.0) -> nn.Module:
    return ResNet18(num_classes, in_chans, drop)
