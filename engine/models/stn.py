"""Spatial transformer networks (Jaderberg et al., 2015): a learned affine warp in front of a classifier.

The localisation network looks at a 32x32 average-pooled copy of the input (so its size never depends
on the image size) and regresses the six affine parameters. Its last layer starts at zero weights and
an identity bias, so an untrained transformer passes the image through unchanged and the classifier
learns from the start; the warp is learned only as far as it lowers the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models import register_model
from engine.models.alexnet import AlexNet
from engine.models.lenet import LeNet5

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class SpatialTransformer(nn.Module):
    """Predict an affine transform from the image and resample the image with it."""

    def __init__(self, in_chans: int):
        super().__init__()
        self.localisation = nn.Sequential(
            nn.AdaptiveAvgPool2d(32),
            nn.Conv2d(in_chans, 8, 7),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 10, 5),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(3),
            nn.Flatten(),
            nn.Linear(90, 32),
            nn.ReLU(inplace=True),
        )
        self.theta = nn.Linear(32, 6)
        self.reset_identity()

    def reset_identity(self) -> None:
        """Make the transformer the identity warp."""
        nn.init.zeros_(self.theta.weight)
        with torch.no_grad():
            self.theta.bias.copy_(torch.tensor(_IDENTITY))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.theta(self.localisation(x)).view(-1, 2, 3)
        return F.grid_sample(
            x, self._grid(theta, x), mode="bilinear", padding_mode="zeros", align_corners=False
        )

    @staticmethod
    def _grid(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # Same sampling grid as F.affine_grid(align_corners=False), written with a matmul because that
        # exports to ONNX with any opset while affine_grid does not.
        h, w = x.shape[-2], x.shape[-1]
        ys = (torch.arange(h, device=x.device, dtype=x.dtype) * 2 + 1) / h - 1
        xs = (torch.arange(w, device=x.device, dtype=x.dtype) * 2 + 1) / w - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        base = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(1, -1, 3)
        return torch.matmul(base, theta.transpose(1, 2)).reshape(-1, h, w, 2)


class STNClassifier(nn.Module):
    """A spatial transformer followed by any classifier of the zoo; the classifier face is delegated."""

    def __init__(self, backbone: nn.Module, in_chans: int):
        super().__init__()
        self.stn = SpatialTransformer(in_chans)
        self.backbone = backbone

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.stn(x))

    def get_classifier(self) -> nn.Module:
        """Return the backbone's classifier."""
        return self.backbone.get_classifier()

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the backbone's classifier."""
        self.backbone.reset_classifier(num_classes)


@register_model("stn-lenet5")
def stn_lenet5(num_classes: int, in_chans: int = 3) -> nn.Module:
    return STNClassifier(LeNet5(num_classes, in_chans), in_chans)


@register_model("stn-alexnet")
def stn_alexnet(num_classes: int, in_chans: int = 3, dropout: float = 0.5) -> nn.Module:
    return STNClassifier(AlexNet(num_classes, in_chans, dropout), in_chans)
