"""The model zoo: one registry (timm style) that every other layer reads.

A family module decorates its constructor with :func:`register_model`; :func:`create_model` builds a
model by name, optionally loading pretrained weights from torchvision's local cache or a file.

Every model has the same face, so training and inference never ask which architecture they hold:

* ``num_classes`` (int) and ``forward(images) -> class scores`` (logits, N x num_classes);
* ``get_classifier()`` returns the class-specific layer, ``reset_classifier(n)`` replaces it;
* optionally ``compute_loss(images, targets) -> (loss, logits)`` when the architecture trains with a
  loss of its own (the capsule network's margin + reconstruction loss); the loop uses it when present.

Any input size from the registry's ``min_input_size`` upwards works (adaptive pooling), and
``in_chans=1`` builds a model for grey images.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import urlopen

import torch
from torch import nn

from engine.checkpoints import read_weights_file
from engine.exceptions import InvalidInput

__all__ = [
    "ImageClassifier",
    "ModelInfo",
    "create_model",
    "download_pretrained",
    "get_model_info",
    "head_parameter_names",
    "list_models",
    "load_pretrained_weights",
    "pretrained_cache_file",
    "pretrained_state_dict",
    "register_model",
]


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


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    constructor: Callable[..., nn.Module]
    torchvision_weights: Callable[[], Any] | None
    bundled_weights: Callable[[], Path] | None


_REGISTRY: dict[str, _Entry] = {}


def register_model(
    name: str,
    default_input_size: int,
    description: str,
    multi_label_ok: bool = True,
    min_input_size: int = 16,
    pretrained_weights: Callable[[], Any] | None = None,
    bundled_weights: Callable[[], Path] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that adds a model constructor ``fn(num_classes, in_chans, **kwargs)`` to the registry.

    Args:
        name: unique registry name.
        default_input_size: default image side in pixels.
        description: one-line description.
        multi_label_ok: False when the architecture cannot train a multi-label head.
        min_input_size: the smallest image side that the architecture accepts.
        pretrained_weights: zero-argument callable returning a torchvision ``WeightsEnum`` member
            (called lazily, so importing the zoo never touches torchvision's weight tables).
        bundled_weights: zero-argument callable returning the path of a weights file installed with a
            package; wins over ``pretrained_weights`` (no download, no cache).
    """

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        assert name not in _REGISTRY, f"model {name!r} registered twice"
        info = ModelInfo(
            name,
            default_input_size,
            description,
            multi_label_ok,
            min_input_size,
            pretrained_weights is not None or bundled_weights is not None,
            fn.__module__.rsplit(".", 1)[-1],
            bundled_weights is not None,
        )
        _REGISTRY[name] = _Entry(info, fn, pretrained_weights, bundled_weights)
        return fn

    return decorate


def list_models() -> list[ModelInfo]:
    """Return the registered models, sorted by name."""
    return [entry.info for _, entry in sorted(_REGISTRY.items())]


def get_model_info(name: str) -> ModelInfo:
    """Return the registry entry of ``name``.

    Raises:
        InvalidInput: (field ``model_name``) for an unregistered name; the message lists the known.
    """
    if name not in _REGISTRY:
        raise InvalidInput(
            f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}", field="model_name"
        )
    return _REGISTRY[name].info


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    weights_path: str | os.PathLike | None = None,
    multi_label: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry name.
        num_classes: number of outputs (classes or labels).
        in_chans: 3 for RGB, 1 for grey.
        pretrained: load ImageNet weights: bundled with the install, or from torch.hub's local cache
            (never downloads here; see :func:`download_pretrained`).
        weights_path: a local state_dict file (torchvision layout, or a checkpoint holding
            ``state_dict``/``model``); wins over ``pretrained``. Layers whose shape differs only because
            of ``num_classes`` are left freshly initialised; an RGB first convolution is summed for grey.
        multi_label: train/predict with independent sigmoids instead of a softmax.
        **kwargs: architecture options of the family constructor.

    Raises:
        InvalidInput: unknown name (``model_name``), bad ``num_classes``/``in_chans``, a multi-label
            request the model cannot serve (``multi_label``), or missing/unfit weights
            (``pretrained``/``weights_path``).
    """
    info = get_model_info(name)
    _check_int(num_classes, 1, "num_classes")
    if in_chans not in (1, 3):
        raise InvalidInput(f"in_chans must be 1 (grey) or 3 (RGB), got {in_chans!r}", field="in_chans")
    if multi_label and not info.multi_label_ok:
        raise InvalidInput(f"model {name!r} cannot be trained multi-label", field="multi_label")
    entry = _REGISTRY[name]
    model = entry.constructor(num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.multi_label = bool(multi_label)
    if weights_path is not None:
        load_pretrained_weights(model, read_weights_file(weights_path), source=Path(weights_path).name)
    elif pretrained:
        load_pretrained_weights(model, pretrained_state_dict(name), source=f"{name}'s ImageNet weights")
    return model


def _check_int(value: Any, minimum: int, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{field} must be an integer >= {minimum}, got {value!r}", field=field)


def pretrained_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of ``name``: the bundled file, else the file in torch.hub's local cache.

    Never downloads (see :func:`download_pretrained`); torch.hub's cache is ``$TORCH_HOME/hub``
    unless ``torch.hub.set_dir`` chose another.

    Raises:
        InvalidInput: (field ``pretrained``) the model has no pretrained weights, or they are not cached.
    """
    entry = _REGISTRY[get_model_info(name).name]
    if entry.bundled_weights is not None:
        return read_weights_file(entry.bundled_weights())
    if entry.torchvision_weights is None:
        raise InvalidInput(
            f"model {name!r} has no published pretrained weights; pass a weights file", field="pretrained"
        )
    cached = pretrained_cache_file(name)
    if not cached.is_file():
        raise InvalidInput(
            f"pretrained weights for {name!r} are not available offline: "
            f"put {cached.name} in {cached.parent} "
            "or pass a local weights file",
            field="pretrained",
        )
    return torch.load(cached, map_location="cpu", weights_only=True)


def pretrained_cache_file(name: str) -> Path:
    """Where torchvision's weights of ``name`` live in torch.hub's cache (the name torchvision uses)."""
    weights = _REGISTRY[get_model_info(name).name].torchvision_weights
    assert weights is not None, f"{name!r} has no torchvision weights"
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights().url).path)


def download_pretrained(
    name: str,
    on_progress: Callable[[int, int], None] | None = None,
    opener: Callable[..., Any] = urlopen,
    chunk: int = 1 << 20,
) -> Path | None:
    """Fetch torchvision's ImageNet weights of ``name`` into torch.hub's cache unless already there.

    Bundled weights and models without torchvision weights need nothing (returns None). The file is
    written under a temporary name and renamed, so a broken download never looks cached.

    Args:
        name: a registered model.
        on_progress: called with ``(bytes done, bytes total)`` (total 0 when the server does not say).
        opener: ``urllib.request.urlopen`` or a stand-in.
        chunk: bytes read at a time.

    Raises:
        InvalidInput: (field ``pretrained``) the download failed, e.g. on a machine without network.
    """
    entry = _REGISTRY[get_model_info(name).name]
    if entry.bundled_weights is not None or entry.torchvision_weights is None:
        return None
    target = pretrained_cache_file(name)
    if target.is_file():
        return target
    url = entry.torchvision_weights().url
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with opener(url, timeout=30) as response, tmp.open("wb") as out:
            total, done = int(response.headers.get("Content-Length") or 0), 0
            while block := response.read(chunk):
                out.write(block)
                done += len(block)
                if on_progress is not None:
                    on_progress(done, total)
        os.replace(tmp, target)
    except (OSError, ValueError) as exc:  # URLError and socket timeouts are OSErrors
        raise InvalidInput(
            f"pretrained weights for {name!r} could not be downloaded from {url} ({exc}); without a "
            f"network, put {target.name} in {target.parent} or pass a local weights file",
            field="pretrained",
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def head_parameter_names(model: nn.Module) -> set[str]:
    """Return the names (as in ``state_dict``) of the tensors of the model's classifier."""
    head = model.get_classifier()
    prefixes = [f"{name}." for name, module in model.named_modules() if module is head]
    assert prefixes, "get_classifier() must return a sub-module of the model"
    return {key for key in model.state_dict() if any(key.startswith(p) for p in prefixes)}


def load_pretrained_weights(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "weights"
) -> None:
    """Copy matching tensors of ``state_dict`` into ``model``.

    The classifier may differ (another number of classes): it keeps its fresh initialisation. An RGB
    first convolution is summed over its input channels for a grey model (as timm does). Every other
    tensor of the model must be found with the right shape.

    Raises:
        InvalidInput: (field ``weights_path``) when the weights do not fit the architecture.
    """
    own = model.state_dict()
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    chosen = {}
    for key, value in state_dict.items():
        if key in own and value.shape != own[key].shape:
            value = _adapt_input_conv(value, own[key].shape)
        if key in own and value is not None and value.shape == own[key].shape:
            chosen[key] = value
    optional = head_parameter_names(model)
    missing = [
        k for k in own if k not in chosen and k not in optional and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state_dict if k not in own and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise InvalidInput(
            f"weights from {source} do not fit model {type(model).__name__}: "
            f"{len(missing)} missing or shaped differently{_listed(missing)}; "
            f"{len(unexpected)} unexpected{_listed(unexpected)}",
            field="weights_path",
        )
    model.load_state_dict(chosen, strict=False)


def _listed(keys: list[str], shown: int = 8) -> str:
    if not keys:
        return ""
    return ": " + ", ".join(keys[:shown]) + (f", ... ({len(keys) - shown} more)" if len(keys) > shown else "")


def _adapt_input_conv(weight: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    # A conv kernel [out, 3, k, k] serves a grey model as the sum over colours: a grey image replicated
    # to three channels would give the same response.
    if weight.dim() == 4 and weight.shape[1] == 3 and shape[1] == 1 and weight.shape[0] == shape[0]:
        return weight.sum(dim=1, keepdim=True)
    return None


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


# Importing the family modules registers their models (timm does the same in its package __init__).
from engine.models import alexnet, capsnet, convnets, efficientnet, lenet, resnet, stn  # noqa: E402, F401
