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

from engine import checkpoints
from engine.checkpoints import Checkpoint
from engine.datasets import preprocess
from engine.exceptions import InvalidInput
from engine.images import decode_image
from engine.models.build import create_model
from engine.training import resolve_device

EXPORT_FORMATS = ("torchscript", "onnx")
TOP_K = 5
ONNX_OPSET = 20


CheckpointLike = str | os.PathLike | Checkpoint | dict[str, Any]


def as_checkpoint(checkpoint: CheckpointLike) -> Checkpoint:
    """A loaded checkpoint as is; a dict in the on-disk layout parsed; a path loaded (see engine.checkpoints)."""
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    if isinstance(checkpoint, dict):
        return checkpoints.parse(checkpoint)
    return checkpoints.load(checkpoint)


def rebuild_model(checkpoint: CheckpointLike) -> nn.Module:
    """Create the checkpoint's architecture and load its weights (eval mode, on the CPU)."""
    ckpt = as_checkpoint(checkpoint)
    model = create_model(ckpt.model_name, **ckpt.model_kwargs)
    model.load_state_dict(ckpt.state_dict)
    return model.eval()


class Predictor:
    """A model rebuilt from a checkpoint, with the checkpoint's preprocessing and class names.

    Attributes:
        class_names: output order of the model.
        multi_label: whether outputs are independent sigmoids.
        thresholds: per-class decision thresholds (multi-label; 0.5 where the checkpoint has none).
        preprocessing: the preprocessing dict of the training run.
    """

    def __init__(self, checkpoint: CheckpointLike, device: str | torch.device | None = None):
        ckpt = as_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.model = rebuild_model(ckpt).to(self.device)
        self.model_name = ckpt.model_name
        self.class_names = list(ckpt.class_names)
        self.multi_label = ckpt.multi_label
        self.preprocessing = ckpt.preprocessing
        self.thresholds = ckpt.thresholds or [0.5] * len(self.class_names)
        self.metrics = ckpt.metrics

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


def export_metadata(ckpt: Checkpoint) -> dict[str, Any]:
    """What a deployment needs besides the graph: classes, preprocessing, decision rule."""
    return {
        "model_name": ckpt.model_name,
        "class_names": list(ckpt.class_names),
        "multi_label": ckpt.multi_label,
        "preprocessing": ckpt.preprocessing,
        "thresholds": ckpt.thresholds,
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
    ckpt = checkpoints.load(checkpoint_path)
    model = rebuild_model(ckpt)
    height, width = ckpt.preprocessing["image_size"]
    example = torch.zeros(2, ckpt.preprocessing["channels"], height, width)
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
