"""The checkpoint format: the one place that writes, reads, validates and interprets ``best.pt``/``last.pt``.

A checkpoint is a plain dict of built-in types and tensors, so ``torch.load(..., weights_only=True)`` reads
it and no code runs while loading. Every other module works with the typed :class:`Checkpoint` and never
with the dict's keys. The layout, as written by :func:`save` (format version 2)::

    format, format_version, kind ("best"/"last"),
    model: {name, kwargs}            # create_model(name, **kwargs) rebuilds the network
    state_dict, class_names, preprocessing, config (the TrainConfig as a dict),
    epoch, history (one record per epoch), best, epochs_without_improvement,
    evaluation (best.pt only; holds the multi-label thresholds), optimizer, scheduler, scaler, rng, versions

Version 1 files also held ``multi_label``, ``seed``, ``metrics`` and ``thresholds``, each a copy of a fact
stored elsewhere in the file; :func:`load` still reads them (a top-level ``thresholds`` wins over the
evaluation's, as it did).

The module also reads users' weights files (``.pth``/``.pt``/``.tar``/``.safetensors``) with the same
safety: :func:`read_weights_file`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.exceptions import InvalidInput

FORMAT = "pytorch-automation-studio/checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_REQUIRED = ("model", "state_dict", "class_names", "preprocessing")
# Version 1 repeated these beside the facts they copy; nothing reads them from a version 2 file.
_V1_COPIES = ("multi_label", "seed", "metrics", "thresholds")

Record = dict[str, Any]


@dataclass
class Checkpoint:
    """One training run's snapshot: enough to rebuild the model, predict, and resume training.

    Attributes:
        model_name: registered model name.
        model_kwargs: the other arguments of ``create_model`` (``num_classes``, ``in_chans``, ``multi_label``).
        state_dict: the unwrapped network's weights.
        class_names: output order of the model.
        preprocessing: the preprocessing dict of the run (:func:`engine.datasets.make_preprocessing`).
        config: the run's ``TrainConfig`` as a plain dict.
        kind: ``"best"`` or ``"last"``.
        epoch: epochs completed.
        history: one record per epoch (the dicts ``fit`` reports).
        best: ``{epoch, score, monitor, accuracy}`` of the best epoch so far.
        epochs_without_improvement: patience counter.
        evaluation: evaluation of the best epoch (``best.pt`` only; multi-label ``thresholds`` live here).
        optimizer: optimizer state dict.
        scheduler: learning-rate scheduler state dict (None without a schedule).
        scaler: mixed-precision GradScaler state (None on a CPU).
        rng: random generator states at save time.
        versions: library versions that wrote the file.
    """

    model_name: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    class_names: list[str]
    preprocessing: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    kind: str = "last"
    epoch: int = 0
    history: list[Record] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    epochs_without_improvement: int = 0
    evaluation: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def multi_label(self) -> bool:
        """Whether outputs are independent sigmoids (a model argument: rebuilding needs it anyway)."""
        return bool(self.model_kwargs.get("multi_label", False))

    @property
    def seed(self) -> int | None:
        """The run's seed (from its configuration)."""
        return self.config.get("seed")

    @property
    def metrics(self) -> Record:
        """The record of the checkpoint's epoch ({} before the first epoch)."""
        return dict(self.history[-1]) if self.history else {}

    @property
    def thresholds(self) -> list[float] | None:
        """Per-class decision thresholds of a multi-label best checkpoint (None elsewhere)."""
        found = self.evaluation.get("thresholds")
        return None if found is None else list(found)

    def as_dict(self) -> dict[str, Any]:
        """The on-disk layout (current version): plain types and tensors only."""
        return {
            "format": FORMAT,
            "format_version": VERSION,
            "kind": self.kind,
            "model": {"name": self.model_name, "kwargs": dict(self.model_kwargs)},
            "state_dict": self.state_dict,
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing,
            "config": self.config,
            "epoch": self.epoch,
            "history": [dict(r) for r in self.history],
            "best": dict(self.best),
            "epochs_without_improvement": self.epochs_without_improvement,
            "evaluation": self.evaluation,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "rng": self.rng,
            "versions": self.versions,
        }


def save(checkpoint: Checkpoint, path: str | os.PathLike) -> Path:
    """Write ``checkpoint`` to ``path`` atomically: a killed writer leaves the previous file intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(checkpoint.as_dict(), tmp)
    os.replace(tmp, path)
    return path


def load(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint of this project (any readable version) with ``weights_only=True`` (no code runs).

    Raises:
        InvalidInput: (field ``checkpoint``) the file is missing or is not one of our checkpoints.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"checkpoint {str(path)!r} does not exist", field="checkpoint")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types for foreign or corrupt files
        raise InvalidInput(f"{str(path)!r} is not a loadable checkpoint: {exc}", field="checkpoint") from exc
    return parse(raw, source=str(path))


def parse(raw: Any, source: str = "checkpoint") -> Checkpoint:
    """The :class:`Checkpoint` of a dict in the on-disk layout (version 1 or 2).

    Raises:
        InvalidInput: (field ``checkpoint``) ``raw`` is not a checkpoint of this project.
    """
    if not _is_ours(raw):
        raise InvalidInput(f"{source!r} is not a checkpoint of this project", field="checkpoint")
    model, evaluation = raw["model"], dict(raw.get("evaluation") or {})
    kwargs = dict(model.get("kwargs") or {})
    if "multi_label" in raw:
        kwargs.setdefault("multi_label", bool(raw["multi_label"]))
    if raw.get("thresholds") is not None:
        evaluation["thresholds"] = list(raw["thresholds"])
    return Checkpoint(
        model_name=model["name"],
        model_kwargs=kwargs,
        state_dict=raw["state_dict"],
        class_names=list(raw["class_names"]),
        preprocessing=raw["preprocessing"],
        config=dict(raw.get("config") or {}),
        kind=raw.get("kind", "last"),
        epoch=int(raw.get("epoch", 0)),
        history=[dict(r) for r in raw.get("history") or []],
        best=dict(raw.get("best") or {}),
        epochs_without_improvement=int(raw.get("epochs_without_improvement", 0)),
        evaluation=evaluation,
        optimizer=raw.get("optimizer"),
        scheduler=raw.get("scheduler"),
        scaler=raw.get("scaler"),
        rng=dict(raw.get("rng") or {}),
        versions=dict(raw.get("versions") or {}),
    )


def _is_ours(raw: Any) -> bool:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        return False
    if raw.get("format_version", 1) not in READABLE_VERSIONS or any(k not in raw for k in _REQUIRED):
        return False
    if raw.get("format_version", 1) == 1 and "multi_label" not in raw:
        return False
    model = raw["model"]
    return isinstance(model, dict) and isinstance(model.get("name"), str) and isinstance(raw["state_dict"], dict)


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from a ``.pth``/``.pt``/``.tar`` (torch, tensors only) or ``.safetensors`` file.

    Whole checkpoints (ours, or others' with ``state_dict``/``model`` inside) yield their weights.
    Nothing is unpickled beyond tensors and plain containers.

    Raises:
        InvalidInput: (field ``weights_path``) missing file, or not a state_dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"weights file {str(path)!r} does not exist", field="weights_path")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(path, device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip, safetensors and unpickler errors all mean "not a weights file"
        raise InvalidInput(f"{path.name!r} is not a loadable state_dict: {exc}", field="weights_path") from exc
    if _is_ours(loaded):
        loaded = parse(loaded, path.name).state_dict
    for key in ("state_dict", "model"):  # others' whole checkpoints (the legacy API's .tar) nest the weights
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InvalidInput(f"{path.name!r} does not hold a state_dict of tensors", field="weights_path")
    return loaded
