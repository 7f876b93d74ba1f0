"""The model zoo: one registry (timm style) that every other layer reads, listable without torch.

Each model is declared once in :data:`MODELS` (name, family module, default input size, description,
what weights it has): that is what :func:`list_models` and :func:`get_model_info` read, so the API's
model list and request validation import no torch. The family module (``engine/models/<family>.py``)
decorates the constructor with :func:`register_model`; :func:`engine.models.build.create_model` imports
the family when a model is first built, and checks that the constructor matches its declaration.

Every model has the same face, so training and inference never ask which architecture they hold:

* ``num_classes`` (int) and ``forward(images) -> class scores`` (logits, N x num_classes);
* ``get_classifier()`` returns the class-specific layer, ``reset_classifier(n)`` replaces it;
* optionally ``compute_loss(images, targets) -> (loss, logits)`` when the architecture trains with a
  loss of its own (the capsule network's margin + reconstruction loss); the loop uses it when present.

Any input size from the registry's ``min_input_size`` upwards works (adaptive pooling), and
``in_chans=1`` builds a model for grey images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from engine.exceptions import InvalidInput

__all__ = ["MODELS", "ModelInfo", "Builder", "get_model_info", "list_models", "register_model"]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model (the API's ``GET /api/v1/models`` lists these).

    Attributes:
        name: the registry name, e.g. ``"convnetj"``.
        default_input_size: the side in pixels used when a run does not choose ``image_size``.
        description: one line for people.
        multi_label_ok: whether the model can be trained with a multi-label (sigmoid) head.
        min_input_size: the smallest side the architecture accepts.
        has_pretrained: whether ImageNet weights exist for it (torchvision's, or bundled).
        family: the module of the zoo that defines it (``"convnets"``, ``"stn"``, ...).
        bundled_weights: whether its pretrained weights ship with the install (usable offline).
    """

    name: str
    default_input_size: int
    description: str
    multi_label_ok: bool = True
    min_input_size: int = 16
    has_pretrained: bool = False
    family: str = ""
    bundled_weights: bool = False


def _declare(family: str, name: str, size: int, description: str, **flags: Any) -> ModelInfo:
    return ModelInfo(name, size, description, family=family, **flags)


_CONVNET_SIZE = 128  # the zoo's own small convnets default to 128 px
_TORCHVISION = {"has_pretrained": True}
_BUNDLED = {"has_pretrained": True, "bundled_weights": True}
MODELS: MappingProxyType[str, ModelInfo] = MappingProxyType({info.name: info for info in sorted((
    _declare("alexnet", "alexnet", 224, "AlexNet (torchvision): five conv layers and two 4096-unit dropout layers",
             min_input_size=64, **_TORCHVISION),
    _declare("capsnet", "capsnet", 32,
             "Capsule network: primary capsules, dynamic routing, margin + reconstruction loss", multi_label_ok=False),
    _declare("convnets", "convneta", _CONVNET_SIZE,
             "Plain baseline: two 5x5 conv + ReLU + max-pool stages, no normalisation"),
    _declare("convnets", "convnetb", _CONVNET_SIZE,
             "Three conv-BN-ReLU stages (32-64-128) with max pooling, global average"),
    _declare("convnets", "convnetc", _CONVNET_SIZE,
             "VGG-style: two 3x3 convs per stage, 2x2 pooled map into a 256-unit MLP"),
    _declare("convnets", "convnetd", _CONVNET_SIZE,
             "All-convolutional: stride-2 convolutions instead of pooling, 1x1 class maps"),
    _declare("convnets", "convnete", _CONVNET_SIZE,
             "Network-in-Network: mlpconv blocks (3x3 + two 1x1 convs), averaged class maps"),
    _declare("convnets", "convnetf", _CONVNET_SIZE,
             "Residual network: basic two-conv blocks with shortcuts, stages 32-64-128"),
    _declare("convnets", "convnetg", _CONVNET_SIZE, "Bottleneck residual network: 1x1-3x3-1x1 blocks, expansion 4"),
    _declare("convnets", "convneth", _CONVNET_SIZE, "MobileNetV1-style depthwise-separable convolutions"),
    _declare("convnets", "convneti", _CONVNET_SIZE,
             "MobileNetV2-style inverted residuals with linear bottlenecks (ReLU6)"),
    _declare("convnets", "convnetj", _CONVNET_SIZE,
             "Legacy default: five conv-BN-ReLU stages (32-256), avg+max pooled head"),
    _declare("convnets", "convnetk", _CONVNET_SIZE,
             "Inception-style: parallel 1x1 / 3x3 / 5x5 / pool branches concatenated"),
    _declare("convnets", "convnetl", _CONVNET_SIZE,
             "DenseNet-style: dense blocks (growth 12) joined by 1x1 transitions"),
    _declare("convnets", "convnetm", _CONVNET_SIZE,
             "SE-ResNet-style: residual blocks with squeeze-and-excitation attention"),
    _declare("convnets", "convnetn", _CONVNET_SIZE, "SqueezeNet-style fire modules (squeeze 1x1, expand 1x1 + 3x3)"),
    _declare("efficientnet", "efficientnet-lite0", 224,
             "EfficientNet-Lite0 with bundled ImageNet weights (offline transfer learning, 4.7 M parameters)",
             min_input_size=32, **_BUNDLED),
    _declare("lenet", "lenet5", 32, "LeNet-5: two 5x5 conv layers and a 120-84 MLP, the classic digit recogniser"),
    _declare("resnet", "resnet18", 224,
             "ResNet-18 (torchvision), single- or multi-label head, ImageNet transfer learning", **_TORCHVISION),
    _declare("stn", "stn-lenet5", 32, "Spatial transformer (identity-initialised affine warp) in front of LeNet-5"),
    _declare("stn", "stn-alexnet", 224, "Spatial transformer (identity-initialised affine warp) in front of AlexNet",
             min_input_size=64),
), key=lambda info: info.name)})


@dataclass(frozen=True)
class Builder:
    """The torch side of a declared model, registered by its family module.

    Attributes:
        constructor: ``fn(num_classes, in_chans, **kwargs) -> nn.Module``.
        torchvision_weights: zero-argument callable returning a torchvision ``WeightsEnum`` member.
        bundled_weights: zero-argument callable returning the path of a weights file shipped with a package.
    """

    constructor: Callable[..., Any]
    torchvision_weights: Callable[[], Any] | None = None
    bundled_weights: Callable[[], Path] | None = None


BUILDERS: dict[str, Builder] = {}


def register_model(
    name: str,
    pretrained_weights: Callable[[], Any] | None = None,
    bundled_weights: Callable[[], Path] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that gives the declared model ``name`` its constructor ``fn(num_classes, in_chans, **kwargs)``.

    Args:
        name: a name declared in :data:`MODELS`, by this family.
        pretrained_weights: zero-argument callable returning a torchvision ``WeightsEnum`` member
            (called lazily, so importing the zoo never touches torchvision's weight tables).
        bundled_weights: zero-argument callable returning the path of a weights file installed with a
            package; wins over ``pretrained_weights`` (no download, no cache).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        info = MODELS.get(name)
        # The declaration is what the API shows: a constructor may never say otherwise.
        assert info is not None, f"model {name!r} is not declared in engine.models.MODELS"
        assert info.family == fn.__module__.rsplit(".", 1)[-1], f"model {name!r} is declared in {info.family!r}"
        assert info.has_pretrained == (pretrained_weights is not None or bundled_weights is not None), name
        assert info.bundled_weights == (bundled_weights is not None), name
        assert name not in BUILDERS, f"model {name!r} registered twice"
        BUILDERS[name] = Builder(fn, pretrained_weights, bundled_weights)
        return fn

    return decorate


def list_models() -> list[ModelInfo]:
    """Return the registered models, sorted by name."""
    return list(MODELS.values())


def get_model_info(name: str) -> ModelInfo:
    """Return the registry entry of ``name``.

    Raises:
        InvalidInput: (field ``model_name``) for an unregistered name; the message lists the known.
    """
    if name not in MODELS:
        raise InvalidInput(f"unknown model {name!r}; known: {', '.join(MODELS)}", field="model_name")
    return MODELS[name]
