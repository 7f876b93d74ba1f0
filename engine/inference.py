"""Prediction and export from a checkpoint alone (the model, classes and preprocessing travel inside it)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.datasets import preprocess
from engine.exceptions import InvalidInput
from engine.images import decode_image
from engine.models import create_model
from engine.training import CHECKPOINT_FORMAT, resolve_device

EXPORT_FORMATS = ("torchscript", "onnx")
TOP_K = 5
ONNX_OPSET = 20
_REQUIRED_KEYS = ("model", "state_dict", "class_names", "preprocessing", "multi_label")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`engine.training.fit` with ``weights_only=True`` (no code runs).

    Raises:
        InvalidInput: (field ``checkpoint``) the file is missing or is not one of our checkpoints.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"checkpoint {str(path)!r} does not exist", field="checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types for foreign or corrupt files
        raise InvalidInput(f"{str(path)!r} is not a loadable checkpoint: {exc}", field="checkpoint") from exc
    if (
        not isinstance(ckpt, dict)
        or ckpt.get("format") != CHECKPOINT_FORMAT
        or any(k not in ckpt for k in _REQUIRED_KEYS)
    ):
        raise InvalidInput(f"{str(path)!r} is not a checkpoint of this project", field="checkpoint")
    return ckpt


def rebuild_model(ckpt: dict[str, Any]) -> nn.Module:
    """Create the checkpoint's architecture and load its weights (eval mode, on the CPU)."""
    model = create_model(ckpt["model"]["name"], **ckpt["model"]["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


class Predictor:
    """A model rebuilt from a checkpoint, with the checkpoint's preprocessing and class names.

    Attributes:
        class_names: output order of the model.
        multi_label: whether outputs are independent sigmoids.
        thresholds: per-class decision thresholds (multi-label; 0.5 where the checkpoint has none).
        preprocessing: the preprocessing dict of the training run.
    """

    def __init__(
        self, checkpoint: str | os.PathLike | dict[str, Any], device: str | torch.device | None = None
    ):
        ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.model = rebuild_model(ckpt).to(self.device)
        self.model_name = ckpt["model"]["name"]
        self.class_names = list(ckpt["class_names"])
        self.multi_label = bool(ckpt["multi_label"])
        self.preprocessing = ckpt["preprocessing"]
        self.thresholds = list(ckpt.get("thresholds") or [0.5] * len(self.class_names))
        self.metrics = dict(ckpt.get("metrics") or {})

    def to_tensor(self, images: Sequence[np.ndarray | bytes | str]) -> torch.Tensor:
        """Preprocess decoded images (or raw/base64 image bytes) into one input batch."""
        arrays = [decode_image(img) if isinstance(img, (bytes, str)) else img for img in images]
        return torch.stack([preprocess(np.asarray(a), self.preprocessing) for a in arrays])

    @torch.inference_mode()
    def probabilities(self, images: Sequence[np.ndarray | bytes | str]) -> torch.Tensor:
        """Return class probabilities (softmax) or label scores (sigmoid), N x classes, on the CPU."""
        logits = self.model(self.to_tensor(images).to(self.device)).float().cpu()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)

    def predict(self, image: np.ndarray | bytes | str) -> dict[str, Any]:
        """Predict one image (RGB uint8 array, or encoded bytes / base64).

        Returns:
            Single-label ``{"label", "confidence" (0-100), "probabilities": {label: p (0-1), top 5}}``;
            multi-label ``{"tags": [labels over their threshold, best first], "scores": {label: p}}``.
        """
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray | bytes | str]) -> list[dict[str, Any]]:
        """Predict several images at once (see :meth:`predict`)."""
        return [self._describe(row) for row in self.probabilities(images)]

    def _describe(self, probs: torch.Tensor) -> dict[str, Any]:
        values = probs.tolist()
        if self.multi_label:
            order = sorted(range(len(values)), key=lambda i: -values[i])
            tags = [self.class_names[i] for i in order if values[i] >= self.thresholds[i]]
            return {"tags": tags, "scores": {self.class_names[i]: values[i] for i in range(len(values))}}
        top = torch.topk(probs, min(TOP_K, len(values)))
        best = int(top.indices[0])
        return {
            "label": self.class_names[best],
            "confidence": 100.0 * values[best],
            "probabilities": {
                self.class_names[int(i)]: float(p) for p, i in zip(top.values, top.indices, strict=True)
            },
        }


def export_metadata(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a deployment needs besides the graph: classes, preprocessing, decision rule."""
    return {
        "model_name": ckpt["model"]["name"],
        "class_names": list(ckpt["class_names"]),
        "multi_label": bool(ckpt["multi_label"]),
        "preprocessing": ckpt["preprocessing"],
        "thresholds": ckpt.get("thresholds"),
        "input": "float32 N x C x H x W, preprocessed as described",
        "output": "logits: sigmoid per label if multi_label else softmax over classes",
    }


def export_model(checkpoint_path: str | os.PathLike, format: str, out_path: str | os.PathLike) -> Path:
    """Export a checkpoint's model to a file usable without this project.

    TorchScript files carry ``metadata.json`` as an extra file; ONNX files carry the same JSON in the
    model's ``metadata_props`` under ``"metadata"``. The batch dimension is dynamic; the spatial size is
    the preprocessing's.

    Args:
        checkpoint_path: a ``best.pt``/``last.pt``.
        format: ``"torchscript"`` or ``"onnx"``.
        out_path: the file to write.

    Raises:
        InvalidInput: unknown ``format`` or unreadable checkpoint.
    """
    if format not in EXPORT_FORMATS:
        raise InvalidInput(
            f"unknown export format {format!r}; known: {', '.join(EXPORT_FORMATS)}", field="format"
        )
    ckpt = load_checkpoint(checkpoint_path)
    model = rebuild_model(ckpt)
    height, width = ckpt["preprocessing"]["image_size"]
    example = torch.zeros(2, ckpt["preprocessing"]["channels"], height, width)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    metadata = json.dumps(export_metadata(ckpt))
    if format == "torchscript":
        _export_torchscript(model, example, out_path, metadata)
    else:
        _export_onnx(model, example, out_path, metadata)
    return out_path


def _export_torchscript(model: nn.Module, example: torch.Tensor, out_path: Path, metadata: str) -> None:
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream but still the one-file format that C++ and mobile load.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(out_path), _extra_files={"metadata.json": metadata})


def _export_onnx(model: nn.Module, example: torch.Tensor, out_path: Path, metadata: str) -> None:
    import onnx  # only exports need it

    batch = torch.export.Dim("batch")
    # The torch.export-based exporter: the TorchScript one cannot export adaptive pooling to sizes that do
    # not divide the input, which most models here use. One self-contained file (no external data).
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(out_path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=ONNX_OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = onnx.load(str(out_path))
    onnx.helper.set_model_props(proto, {"metadata": metadata})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out_path))
