"""Building the zoo's models (torch): :func:`create_model`, pretrained weights, and the head's names.

The registry's declarations live in :mod:`engine.models` (importable without torch); a family module is
imported here when one of its models is first built, which registers its constructor.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import urlopen

import torch
from torch import nn

from engine.checkpoints import read_weights_file
from engine.exceptions import InvalidInput
from engine.models import BUILDERS, Builder, get_model_info

__all__ = [
    "builder",
    "create_model",
    "download_pretrained",
    "head_parameter_names",
    "load_pretrained_weights",
    "pretrained_cache_file",
    "pretrained_state_dict",
]


def builder(name: str) -> Builder:
    """The constructor and weights of the declared model ``name``, importing its family module once.

    Raises:
        InvalidInput: (field ``model_name``) for an unregistered name; the message lists the known.
    """
    family = get_model_info(name).family
    if name not in BUILDERS:
        importlib.import_module(f"engine.models.{family}")  # registers the family's constructors
    assert name in BUILDERS, f"engine.models.{family} declares no constructor for {name!r}"
    return BUILDERS[name]


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
    model = builder(name).constructor(num_classes=num_classes, in_chans=in_chans, **kwargs)
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
    entry = builder(name)
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
    weights = builder(name).torchvision_weights
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
    entry = builder(name)
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
