"""The catalog of trained models and the model actions: the zoo, the trained models, activate, export, delete,
and the weights files a run may start from.

Shared by ``services/web/routes/train.py`` and the Models / Predict / Train pages. Reading the catalog imports
no torch; exporting a model and checking an uploaded weights file do, when they are asked for.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import uuid
from pathlib import Path, PureWindowsPath
from typing import Literal

from pydantic import BaseModel, ConfigDict

from engine.exceptions import Conflict, InvalidInput, NotFound
from engine.models import list_models
from services.app.rules import Actor, action
from services.app.train_request import WEIGHTS_SUFFIXES, checkpoint_dir
from services.platform.config import Config
from services.storage.rows import Model
from services.storage.store import Store

EXPORT_SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}  # file names only; the formats are the engine's
METRIC_KEYS = ("best_accuracy", "test_accuracy", "test_loss", "train_accuracy", "train_loss",
               "test_map", "test_micro_f1", "test_macro_f1")
CLIENT_HIDDEN = ("path",)  # clients see no file paths of the server


# ------------------------------------------------------------------------------------------ actions
@action("models.zoo")
def zoo(actor: Actor) -> list[dict]:
    """The model zoo: name, default input size and a one-line description of every registered model."""
    return [dataclasses.asdict(info) for info in list_models()]


@action("models.read")
def trained_models(actor: Actor) -> list[dict]:
    """Trained models with their metrics and active flag, newest first (clients see no file paths)."""
    rows = list_trained(actor.store)
    if actor.role == "client":
        rows = [{k: v for k, v in row.items() if k not in CLIENT_HIDDEN} for row in rows]
    return rows


class ModelChange(BaseModel):
    """What ``models.manage`` does to a trained model: make it the default, export it, or delete it."""

    model_config = ConfigDict(extra="forbid")

    model_id: str
    op: Literal["activate", "export", "delete"]
    format: Literal[tuple(EXPORT_SUFFIXES)] = "torchscript"  # export only


@action("models.manage")
def manage(actor: Actor, change: ModelChange) -> dict:
    """Activate, export or delete a trained model.

    Returns:
        ``{"model": row}`` (activate: the row made the default for predictions of its kind), ``{"model": row,
        "file": path}`` (export: the deployable file, see :func:`export_file`), ``{"deleted": model_id}``.

    Raises:
        NotFound: no trained model ``model_id``.
        Conflict: (export) the model's checkpoint file is missing.
    """
    return _CHANGES[change.op](actor.config, actor.store, change)


def _activate(config: Config, store: Store, change: ModelChange) -> dict:
    get_model(store, change.model_id)
    store.set_active_model(change.model_id)
    return {"model": model_view(get_model(store, change.model_id))}


def _export(config: Config, store: Store, change: ModelChange) -> dict:
    row = get_model(store, change.model_id)
    return {"model": row, "file": export_file(config, row, change.format)}


def _delete(config: Config, store: Store, change: ModelChange) -> dict:
    delete_model(config, store, change.model_id)
    return {"deleted": change.model_id}


_CHANGES = {"activate": _activate, "export": _export, "delete": _delete}


@action("weights.upload")
def upload_weights(actor: Actor, filename: str, payload: bytes) -> str:
    """Keep an uploaded weights file for later runs; see :func:`save_weights_upload`."""
    return save_weights_upload(actor.config, filename, payload)


# ------------------------------------------------------------------------------------------ catalog
def register_model(config: Config, store: Store, job_id: str, created_by: str | None) -> dict | None:
    """Add the ``best.pt`` of ``job_id`` to the ``models`` table (None when the run has no best yet)."""
    from engine import checkpoints  # torch: called from jobs, which run on the worker

    best = checkpoint_dir(config, job_id) / "best.pt"
    if not best.is_file():
        return None
    ckpt = checkpoints.load(best)
    last = checkpoints.load(best.with_name("last.pt")) if best.with_name("last.pt").is_file() else ckpt
    metrics = {k: ckpt.metrics[k] for k in METRIC_KEYS if k in ckpt.metrics}
    metrics.update(best_epoch=ckpt.epoch, epochs_completed=last.epoch, epochs=ckpt.config["epochs"],
                   monitor=ckpt.best.get("monitor"), image_size=ckpt.preprocessing["image_size"])
    row = {"id": uuid.uuid4().hex, "model_name": ckpt.model_name, "job_id": job_id,
           "path": _relative(config, best), "class_names": list(ckpt.class_names),
           "multi_label": int(ckpt.multi_label), "metrics": metrics, "created_by": created_by}
    store.add_model(Model(**row, created_at=time.time()))
    return store.get_model(row["id"])


def model_view(row: dict) -> dict:
    """A catalog row as the API shows it (booleans as booleans)."""
    return {**row, "multi_label": bool(row["multi_label"]), "active": bool(row["active"])}


def list_trained(store: Store) -> list[dict]:
    """Trained models, newest first."""
    return [model_view(r) for r in store.list_models()]


def get_model(store: Store, model_id: str) -> dict:
    """The catalog row of ``model_id``; raises NotFound."""
    row = store.get_model(model_id)
    if row is None:
        raise NotFound(f"no trained model {model_id!r}", "model_id")
    return row


def delete_model(config: Config, store: Store, model_id: str) -> None:
    """Remove a model: its row first (nothing may point at missing files), then its checkpoints and exports."""
    row = get_model(store, model_id)
    store.delete_model(model_id)
    folder = config.path(row["path"]).parent
    if folder.resolve().is_relative_to(config.path("checkpoints").resolve()):
        shutil.rmtree(folder, ignore_errors=True)
    for stale in config.path("exports").glob(f"{model_id}-*"):
        stale.unlink(missing_ok=True)


def export_file(config: Config, row: dict, fmt: str) -> Path:
    """A deployable file of the model (TorchScript or ONNX) under ``DATA_DIR/exports``.

    Cached per checkpoint modification time: the same checkpoint is exported once.

    Raises:
        InvalidInput: unknown format (field ``format``).
        Conflict: the model's checkpoint file is missing.
    """
    from engine.inference import export_model  # torch, as the serving part does, when an export is asked for

    if fmt not in EXPORT_SUFFIXES:
        raise InvalidInput(f"format: unknown export format {fmt!r}; known: {', '.join(EXPORT_SUFFIXES)}", "format")
    checkpoint = config.path(row["path"])
    if not checkpoint.is_file():
        raise Conflict(f"the checkpoint of model {row['id']!r} is missing", "model_id")
    suffix = EXPORT_SUFFIXES[fmt]
    out = config.path("exports", f"{row['id']}-{checkpoint.stat().st_mtime_ns}{suffix}")
    if not out.is_file():
        tmp = out.with_name(f".{uuid.uuid4().hex}{suffix}")  # a half-written export is never served
        try:
            export_model(checkpoint, fmt, tmp)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        for stale in out.parent.glob(f"{row['id']}-*{suffix}"):
            if stale != out:
                stale.unlink(missing_ok=True)
    return out


def save_weights_upload(config: Config, filename: str, payload: bytes) -> str:
    """Keep an uploaded weights file in ``DATA_DIR/weights``; returns its path relative to DATA_DIR.

    Raises:
        InvalidInput: (field ``weights``) a name without a weights suffix, or content that is not a
            state_dict of tensors (read without unpickling anything else).
    """
    from engine import checkpoints  # torch: reading the tensors is the check

    name = Path(PureWindowsPath(filename).name).name  # a browser may send a client-side path
    if not name.lower().endswith(WEIGHTS_SUFFIXES) or name.startswith("."):
        raise InvalidInput(f"weights: {filename!r} is not a weights file ({', '.join(WEIGHTS_SUFFIXES)})",
                           "weights")
    folder = config.path("weights")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{uuid.uuid4().hex}{Path(name).suffix}"
    try:
        tmp.write_bytes(payload)
        checkpoints.read_weights_file(tmp)
        os.replace(tmp, folder / name)
    except InvalidInput as exc:
        raise InvalidInput(f"weights: {str(exc).replace(tmp.name, name)}", "weights") from None
    finally:
        tmp.unlink(missing_ok=True)
    return f"weights/{name}"


def _relative(config: Config, path: Path) -> str:
    return Path(path).resolve().relative_to(config.data_dir.resolve()).as_posix()
