"""Training as a service: the ``/train`` request, its checks against DATA_DIR, the ``train`` job,
resume, and the catalog of trained models (list, activate, export, delete).

Shared by ``services/web/routes/train.py`` and the Train / Models pages, so both accept exactly the same
requests. The request keeps the legacy API's field names; :func:`to_train_config` maps them onto the engine's
:class:`~engine.training.TrainConfig`. Every path a client sends is relative to DATA_DIR (``hdf5_path``:
to ``DATA_DIR/datasets``) and may never lead outside it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal
from urllib.parse import urlparse

import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from engine import checkpoints
from engine.datasets import IMAGE_SUFFIXES, DatasetBundle, DatasetSpec, build_datasets, inspect_hdf5, list_dataset_kinds
from engine.distributed import MAX_PROCESSES, Rendezvous, check_world_size, fit_distributed
from engine.exceptions import Cancelled, Conflict, InvalidInput, NotFound, StudioError
from engine.hdf5 import open_hdf5
from engine.images import MAX_IMAGE_SIDE
from engine.inference import EXPORT_FORMATS, export_model
from engine.models import download_pretrained, get_model_info, list_models
from engine.training import (
    MAX_BATCH_SIZE,
    MAX_CLASSES,
    MAX_EPOCHS,
    MAX_LEARNING_RATE,
    MAX_LOADER_WORKERS,
    MAX_SEED,
    MAX_WEIGHT_DECAY,
    OPTIMIZERS,
    TrainConfig,
    build_model,
    fit_head,
)
from services.app.quotas import check_training_size
from services.jobs import runtime as jobs
from services.jobs.runtime import JobContext, job_kind
from services.platform.config import Config
from services.storage.rows import Model
from services.storage.store import Store

# Long runs are the point of this job (the legacy API asks for 4000 epochs): three days, and a run that
# outlives it is resumed from its last.pt. Results stay a week, like the catalog's other jobs.
TRAIN_TIMEOUT = 3 * 24 * 3600
TRAIN_RESULT_TTL = 7 * 24 * 3600
HDF5_SUFFIXES = (".hdf5", ".h5")
EXPORT_SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}  # file names only; the formats are the engine's
assert set(EXPORT_SUFFIXES) == set(EXPORT_FORMATS), "every export format needs a file suffix"
TRANSFER_MODES = ("head-only", "fine-tune", "scratch")
WEIGHTS_SUFFIXES = (".pth", ".pt", ".tar", ".safetensors")
# Fine-tuning without an explicit lrp: the pretrained layers learn ten times slower than the new head.
FINE_TUNE_LR_FACTOR = 0.1
# Where each dataset path field lives: hdf5 files in the datasets folder, image folders anywhere in DATA_DIR.
PATH_BASES = {"hdf5_path": ("datasets",), "trainset_dir": (), "testset_dir": ()}
# Dataset paths that clients do not choose: the annotation feature's folder.
FIXED_PATHS = {"newdata_dir": ("newdata",)}
# The product's own folders in DATA_DIR: none is a dataset a person put there, so none is ever offered or accepted.
STORE_FOLDERS = frozenset({"newdata", "objects", "checkpoints", "datasets", "bgs", "redis", "logs", "uploads",
                           "exports"})
# Below this a test split measures nothing: one image per class gives 0 % or 100 % by chance.
MIN_TEST_PER_CLASS = 2
METRIC_KEYS = ("best_accuracy", "test_accuracy", "test_loss", "train_accuracy", "train_loss",
               "test_map", "test_micro_f1", "test_macro_f1")


# ------------------------------------------------------------------------------------------ request
class TrainRequest(BaseModel):
    """The body of ``POST /api/v1/train``: the legacy API's fields (numbers and booleans may be strings).

    Each field is declared once, here, with its bound and default; pages read them through
    :func:`services.ui.page.field_limits`. A field that sets a :class:`TrainConfig` field of another name
    carries that name as its ``serialization_alias`` (see :func:`request_name`): that is how an engine
    error is reported under the request's name, and how a study's search dimension finds its field.
    """

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(description="a registered model (GET /api/v1/models)",
                            json_schema_extra={"enum": [m.name for m in list_models()]})
    dataset: str = Field("custom", json_schema_extra={"enum": list(list_dataset_kinds())},
                         description="hdf5 (a file in DATA_DIR/datasets), custom (class folders), newdata")
    num_classes: int | None = Field(None, ge=1, le=MAX_CLASSES, description="must match the data; None: from it")
    batch_size: int = Field(16, ge=1, le=MAX_BATCH_SIZE)
    is_transform: bool = Field(False, serialization_alias="augment", description="light train-time augmentation")
    num_workers: int = Field(0, ge=0, le=MAX_LOADER_WORKERS,
                             description="DataLoader processes (capped at the CPU count)")
    lr_decay: bool = Field(False, serialization_alias="lr_schedule",
                           description="step every epoch_step epochs, else on plateau")
    l2_reg: float = Field(1e-4, ge=0, le=MAX_WEIGHT_DECAY, serialization_alias="weight_decay",
                          description="weight decay")
    hdf5_path: str | None = Field(None, max_length=1024, description="relative to DATA_DIR/datasets")
    trainset_dir: str | None = Field(None, max_length=1024, description="class folders, relative to DATA_DIR")
    testset_dir: str | None = Field(None, max_length=1024, description="class folders, relative to DATA_DIR")
    convert_grey: bool = Field(False, serialization_alias="grey")
    learning_rate: float = Field(0.01, gt=0, le=MAX_LEARNING_RATE)
    num_epochs: int = Field(10, ge=1, le=MAX_EPOCHS, serialization_alias="epochs")
    optimizer: Literal[OPTIMIZERS] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    epoch_step: int | None = Field(None, ge=1, le=MAX_EPOCHS)
    patience: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="early stopping")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    image_size: int | None = Field(None, ge=1, le=MAX_IMAGE_SIDE, description="None: the model's default")
    pretrained: bool | None = Field(None, description="start from ImageNet weights; None: yes when they ship "
                                    "with the install (efficientnet-lite0)")
    transfer_mode: Literal[TRANSFER_MODES] | None = Field(
        None, serialization_alias="head_only",
        description="head-only (frozen backbone, cached features), fine-tune (pretrained layers at lrp) "
                    "or scratch; None: head-only with weights (fine-tune when lrp > 0), else scratch")
    lrp: float | None = Field(None, ge=0, le=MAX_LEARNING_RATE, serialization_alias="lr_pretrained",
                              description="learning rate of the pretrained layers (the legacy API's --lrp; 0 freezes "
                                          "them); fine-tune default: lr/10")
    weights: str | None = Field(None, max_length=1024, serialization_alias="weights_path",
                                description="a .pth/.safetensors state_dict to start from, relative to DATA_DIR")
    multi_label: bool | None = Field(None, description="None: from the data (newdata is multi-label)")
    world_size: int = Field(1, ge=1, le=MAX_PROCESSES, validation_alias=AliasChoices("world_size", "nproc"),
                            description="training processes (also 'nproc'): one per GPU on a GPU worker, else "
                                        "CPU processes; batch_size is shared among them")
    sync_batchnorm: bool = Field(False, description="batch-norm statistics over every process's batch (GPUs only)")
    nodes: int = Field(1, ge=1, le=MAX_PROCESSES, description="worker machines sharing the run, world_size "
                                                              "processes each (one free worker per machine)")

    @field_validator("model_name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        get_model_info(value)  # the registry's own message lists the known models
        return value

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in list_dataset_kinds():
            raise ValueError(f"unknown dataset {value!r}; known: {', '.join(list_dataset_kinds())}")
        return value

    @field_validator("hdf5_path", "trainset_dir", "testset_dir", "weights")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is not None:
            check_relative_path(value)
        return value or None

    @field_validator("weights")
    @classmethod
    def _weights_suffix(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().endswith(WEIGHTS_SUFFIXES):
            raise ValueError(f"must be a weights file ({', '.join(WEIGHTS_SUFFIXES)}), got {value!r}")
        return value


def check_relative_path(raw: str) -> None:
    """Refuse what could point outside a base folder: NUL, absolute paths, drive letters, ``..``."""
    if "\x00" in raw:
        raise ValueError("must not contain NUL characters")
    if PurePosixPath(raw).is_absolute() or PureWindowsPath(raw).anchor:
        raise ValueError(f"must be a path relative to DATA_DIR, got the absolute path {raw!r}")
    if ".." in PureWindowsPath(raw).parts:  # Windows parsing splits on both '/' and '\'
        raise ValueError(f"must not contain '..', got {raw!r}")


def resolve_under(base: Path, raw: str, field: str) -> Path:
    """``base / raw`` with symlinks resolved, refused (field named) unless it stays inside ``base``."""
    try:
        check_relative_path(raw)
    except ValueError as exc:
        raise InvalidInput(f"{field}: {exc}", field) from None
    base = base.resolve()
    try:
        path = (base / raw).resolve()
    except (OSError, ValueError) as exc:  # too long, a symlink loop, not encodable
        raise InvalidInput(f"{field}: {raw!r} is not a usable path ({exc})", field) from None
    if not path.is_relative_to(base):
        raise InvalidInput(f"{field}: {raw!r} leads outside DATA_DIR", field)
    return path


def request_params(params: dict) -> dict:
    """The TrainRequest fields of a job's params (which also carry ``resume_from`` and ``resumed_from``)."""
    return {k: v for k, v in params.items() if k in TrainRequest.model_fields}


# ------------------------------------------------------------------------------- checks against data
@dataclass(frozen=True)
class PreparedRun:
    """A request checked against DATA_DIR: the engine's config and the (lazily read) datasets."""

    request: TrainRequest
    config: TrainConfig
    data: DatasetBundle


def prepare(config: Config, req: TrainRequest) -> PreparedRun:
    """Check ``req`` against the data and build the engine's config (cheap: headers and folder listings).

    Raises:
        InvalidInput: a missing dataset, a path outside DATA_DIR, ``num_classes`` or ``multi_label``
            contradicting the data, or a value the engine refuses; the field is the request's name.
    """
    check_world_size(req.world_size * req.nodes, req.batch_size)
    data = _open_data(config, req)
    if req.multi_label is not None and req.multi_label != data.multi_label:
        raise InvalidInput(f"multi_label: the {req.dataset!r} data is "
                           f"{'multi' if data.multi_label else 'single'}-label", "multi_label")
    names = data.class_names
    check_split_sizes(req, data)
    if req.num_classes is not None and req.num_classes != len(names):
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise InvalidInput(f"num_classes is {req.num_classes} but the data has {len(names)} classes: {shown}",
                           "num_classes")
    weights = _weights_file(config, req)
    run = PreparedRun(req, to_train_config(req, len(names), data.multi_label, weights), data)
    if run.config.head_only and req.world_size * req.nodes > 1:
        raise InvalidInput("world_size: a head-only run trains its head on cached features in one process "
                           "(seconds); use world_size 1, or transfer_mode 'fine-tune' to train every layer "
                           "over several processes", "world_size")
    return run


def _weights_file(config: Config, req: TrainRequest) -> str | None:
    if req.weights is None:
        return None
    path = resolve_under(config.data_dir, req.weights, "weights")
    if not _probe(path, Path.is_file):
        raise InvalidInput(f"weights: no file {req.weights!r} in DATA_DIR", "weights")
    return str(path)


def check_split_sizes(req: TrainRequest, data: DatasetBundle) -> None:
    """Refuse data that cannot teach or measure a classifier: one class, or too few test images of a class.

    Raises:
        InvalidInput: field ``dataset`` (one class) or ``testset_dir`` (a class short of test images).
    """
    names = data.class_names
    if len(names) < 2:
        raise InvalidInput(f"dataset: the data has {len(names)} class{'es' if len(names) != 1 else ''} "
                           f"({', '.join(names) or 'none'}); at least 2 are needed", "dataset")
    if data.multi_label:
        return
    counts = Counter(int(t) for t in getattr(data.test, "targets", ()))
    short = [f"{name} ({counts.get(i, 0)})" for i, name in enumerate(names) if counts.get(i, 0) < MIN_TEST_PER_CLASS]
    if short:
        field = "hdf5_path" if req.dataset == "hdf5" else "testset_dir"
        raise InvalidInput(f"{field}: the test split needs at least {MIN_TEST_PER_CLASS} images of every class; "
                           f"too few: {', '.join(short[:20])}{', ...' if len(short) > 20 else ''}", field)


def check_distinct_splits(config: Config, req: TrainRequest) -> None:
    """Refuse a test split that is the training split, or that repeats its images (found by content hash).

    Raises:
        InvalidInput: field ``testset_dir`` (or ``hdf5_path``), with the number of shared images.
    """
    if req.dataset == "custom":
        train, test = check_separate_folders(config, req)
        shared, field = _file_hashes(train) & _file_hashes(test), "testset_dir"
    elif req.dataset == "hdf5":
        path = _locate(config, req, "hdf5_path")
        sources = inspect_hdf5(path).sources  # X_val stands in for X_test in files made elsewhere
        shared, field = _hdf5_hashes(path, sources["train"]) & _hdf5_hashes(path, sources["test"]), "hdf5_path"
    else:
        return
    if shared:
        raise InvalidInput(f"{field}: {len(shared)} image{'s are' if len(shared) != 1 else ' is'} in both the "
                           "training and the test split; a test image must be one the model never saw", field)


def check_separate_folders(config: Config, req: TrainRequest) -> tuple[Path, Path]:
    """The training and test folders of a ``custom`` request, refused when one is (inside) the other."""
    train, test = _locate(config, req, "trainset_dir"), _locate(config, req, "testset_dir")
    if train == test or train.is_relative_to(test) or test.is_relative_to(train):
        raise InvalidInput(f"testset_dir: the test folder {req.testset_dir!r} is the training folder "
                           f"{req.trainset_dir!r} (or inside it); choose a separate test folder", "testset_dir")
    return train, test


def _file_hashes(root: Path) -> set[str]:
    return {hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
            for path in root.glob("*/*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()}


def _hdf5_hashes(path: Path, images_name: str, chunk: int = 1024) -> set[str]:
    found: set[str] = set()
    with open_hdf5(path) as f:
        images = f[images_name]
        for start in range(0, len(images), chunk):
            found.update(hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest()
                         for row in images[start:start + chunk])
    return found


def _open_data(config: Config, req: TrainRequest) -> DatasetBundle:
    if req.dataset == "custom":
        check_separate_folders(config, req)
    spec = dataset_spec(config, req)
    # The preprocessing depends on neither the class count nor the label kind, which the data tells.
    preprocessing = to_train_config(req, 2, False, req.weights).preprocessing()
    try:
        return build_datasets(spec, preprocessing)
    except InvalidInput as exc:  # the engine names absolute paths; clients know paths relative to DATA_DIR
        raise InvalidInput(str(exc).replace(str(config.data_dir), "DATA_DIR"), exc.field) from None
    except StudioError as exc:  # e.g. a hand-edited label set that no longer parses
        raise InvalidInput(str(exc).replace(str(config.data_dir), "DATA_DIR"), "dataset") from None


def dataset_spec(config: Config, req: TrainRequest) -> DatasetSpec:
    """The engine's dataset spec of ``req``: the fields its kind needs, resolved inside DATA_DIR."""
    paths = {field: str(_locate(config, req, field)) for field in list_dataset_kinds()[req.dataset]}
    return DatasetSpec(req.dataset, **paths)


def _locate(config: Config, req: TrainRequest, field: str) -> Path:
    if field in FIXED_PATHS:
        return config.path(*FIXED_PATHS[field])
    raw = getattr(req, field)
    if not raw:
        raise InvalidInput(f"{field}: dataset {req.dataset!r} needs {field}", field)
    path = resolve_under(config.path(*PATH_BASES[field]), raw, field)
    if field != "hdf5_path" and _store_folder(config, path):
        raise InvalidInput(f"{field}: {raw!r} is one of the studio's own folders, not a dataset", field)
    if field == "hdf5_path" and not _probe(path, Path.is_file):
        known = ", ".join(available_hdf5(config)) or "none yet"
        raise InvalidInput(f"{field}: no dataset file {raw!r} in DATA_DIR/datasets; available: {known}", field)
    if field != "hdf5_path" and not _probe(path, Path.is_dir):
        raise InvalidInput(f"{field}: no folder {raw!r} in DATA_DIR", field)
    return path


def _probe(path: Path, test) -> bool:
    # Names too long for the file system, or not encodable to it, name nothing that exists.
    try:
        return test(path)
    except (OSError, ValueError):
        return False


def to_train_config(req: TrainRequest, num_classes: int, multi_label: bool,
                    weights_path: str | None = None) -> TrainConfig:
    """Map the legacy API's fields onto the engine's TrainConfig (errors name the request's field).

    Args:
        weights_path: the request's ``weights`` file, already resolved inside DATA_DIR.
    """
    schedule = ("step" if req.epoch_step else "plateau") if req.lr_decay else "none"
    try:
        return TrainConfig(
            model_name=req.model_name, num_classes=num_classes, epochs=req.num_epochs, batch_size=req.batch_size,
            learning_rate=req.learning_rate, optimizer=req.optimizer, momentum=req.momentum,
            weight_decay=req.l2_reg, lr_schedule=schedule, epoch_step=req.epoch_step, patience=req.patience,
            seed=req.seed, image_size=req.image_size, grey=req.convert_grey, multi_label=multi_label,
            augment=req.is_transform, **transfer_settings(req, weights_path),
            # More loader processes than cores only adds contention with the training process itself.
            num_workers=min(req.num_workers, os.cpu_count() or 1))
    except InvalidInput as exc:
        field = request_name(exc.field)
        if field == exc.field:
            raise
        raise InvalidInput(str(exc).replace(exc.field, field, 1), field) from None


def request_name(engine_field: str | None) -> str | None:
    """The TrainRequest field that sets the engine's ``engine_field`` (the name itself when none is aliased)."""
    return next((name for name, info in TrainRequest.model_fields.items()
                 if info.serialization_alias == engine_field), engine_field)


def transfer_settings(req: TrainRequest, weights_path: str | None) -> dict:
    """``pretrained``, ``weights_path``, ``head_only`` and ``lr_pretrained`` of the run ``req`` asks for.

    Without ``transfer_mode``: head-only when the run starts from weights (``pretrained``, a ``weights``
    file, or a model whose weights ship with the install), fine-tune instead when ``lrp`` > 0, else scratch.
    """
    info = get_model_info(req.model_name)
    pretrained = info.bundled_weights and weights_path is None if req.pretrained is None else req.pretrained
    if pretrained and not info.has_pretrained:
        raise InvalidInput(f"pretrained: model {req.model_name!r} has no published pretrained weights",
                           "pretrained")
    starts_trained = bool(pretrained or weights_path)
    mode = req.transfer_mode or (("fine-tune" if req.lrp else "head-only") if starts_trained else "scratch")
    if mode == "scratch":
        if req.pretrained or weights_path:
            raise InvalidInput("transfer_mode: 'scratch' starts from random weights; drop pretrained and weights",
                               "transfer_mode")
        return {"pretrained": False, "weights_path": None, "head_only": False, "lr_pretrained": req.lrp}
    if not starts_trained:
        raise InvalidInput(f"transfer_mode: {mode!r} needs weights: pretrained true or a weights file",
                           "transfer_mode")
    start = {"pretrained": bool(pretrained) and weights_path is None, "weights_path": weights_path}
    if mode == "head-only":
        if req.lrp:
            raise InvalidInput("lrp: head-only freezes the pretrained layers; lrp must be 0 or left out", "lrp")
        return {**start, "head_only": True, "lr_pretrained": 0.0}
    if req.lrp == 0:
        raise InvalidInput("lrp: fine-tune trains the pretrained layers; lrp must be > 0", "lrp")
    lrp = req.lrp if req.lrp is not None else req.learning_rate * FINE_TUNE_LR_FACTOR
    return {**start, "head_only": False, "lr_pretrained": lrp}


# ------------------------------------------------------------------------------------- submit/resume
def submit_training(config: Config, store: Store, req: TrainRequest, username: str | None) -> str:
    """Check ``req`` against the data (distinct splits included, and its weights file against the model),
    then enqueue a ``train`` job; returns its id."""
    run = prepare(config, req)
    check_training_size(config, store, username, req.num_epochs, len(run.data.train))
    if run.config.weights_path:
        check_weights_fit(run.config)
    check_distinct_splits(config, req)
    return _submit_run(config, store, req.model_dump(), username)


def _submit_run(config: Config, store: Store, params: dict, username: str | None) -> str:
    """Enqueue the run's ``train`` job and, for a run over several machines, one ``train_node`` job per
    other machine (each taken by another worker); returns the ``train`` job's id."""
    # The run's quota slots (one per machine) are counted at once, so a run is never left half-submitted.
    job_id = jobs.submit(config, store, "train", params, username, reserve=params.get("nodes", 1))
    for node in range(1, params.get("nodes", 1)):
        jobs.submit(config, store, "train_node", {**params, "run_id": job_id, "node_rank": node}, username,
                    reserve=0)
    return job_id


def check_weights_fit(config: TrainConfig) -> None:
    """Build the run's model from its weights file now, so a file that does not fit is a 400, not a failed job."""
    try:
        build_model(config, config.preprocessing()["channels"])
    except InvalidInput as exc:
        raise InvalidInput(f"weights: {exc}", "weights") from None


def save_weights_upload(config: Config, filename: str, payload: bytes) -> str:
    """Keep an uploaded weights file in ``DATA_DIR/weights``; returns its path relative to DATA_DIR.

    Raises:
        InvalidInput: (field ``weights``) a name without a weights suffix, or content that is not a
            state_dict of tensors (read without unpickling anything else).
    """
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


def checkpoint_dir(config: Config, job_id: str) -> Path:
    """Where the job ``job_id`` writes ``best.pt`` and ``last.pt``."""
    return config.path("checkpoints", job_id)


def resume(config: Config, store: Store, job_id: str, username: str | None, num_epochs: int | None = None) -> str:
    """Enqueue a new ``train`` job that continues ``job_id`` from its ``last.pt``; returns the new id.

    Args:
        num_epochs: a new total (to train a finished run longer); default: the original total.

    Raises:
        NotFound: no training job ``job_id``.
        Conflict: the job is still queued or running, has no checkpoint, or already ran every epoch.
    """
    record = store.get_job(job_id)
    if record is None or record["kind"] != "train":
        raise NotFound(f"no training job {job_id!r}", "job_id")
    record = jobs.read_job(config, store, record)
    if record["status"] not in jobs.TERMINAL:
        raise Conflict(f"job {job_id!r} is still {record['status']}; cancel it before resuming", "job_id")
    last = checkpoint_dir(config, job_id) / "last.pt"
    if not last.is_file():
        raise Conflict(f"job {job_id!r} has no checkpoint to resume from", "job_id")
    params = {**request_params(record["params"]), **({"num_epochs": num_epochs} if num_epochs else {})}
    req = TrainRequest.model_validate(params)
    done = _checkpoint_epoch(last)
    if done >= req.num_epochs:
        raise Conflict(f"job {job_id!r} already completed {done} of {req.num_epochs} epochs; "
                       "pass a larger num_epochs to train longer", "num_epochs")
    run = prepare(config, req)
    check_training_size(config, store, username, req.num_epochs - done, len(run.data.train))
    return _submit_run(config, store, {**req.model_dump(), "resumed_from": job_id,
                                       "resume_from": last.relative_to(config.data_dir).as_posix()}, username)


def _checkpoint_epoch(path: Path) -> int:
    return checkpoints.load(path).epoch


# --------------------------------------------------------------------------------------------- job
@job_kind("train", timeout=TRAIN_TIMEOUT, result_ttl=TRAIN_RESULT_TTL,
          description="train a classifier (POST /api/v1/train); resumable from its last.pt")
def train(ctx: JobContext, params: dict) -> dict:
    """Train on the worker: per-epoch metrics to ``ctx.epoch``, checkpoints in ``checkpoints/<job_id>/``."""
    run = prepare(ctx.config, TrainRequest.model_validate(request_params(params)))
    resume_from = _resume_from(ctx, params.get("resume_from"))
    directory = checkpoint_dir(ctx.config, ctx.job_id)
    try:
        fetch_pretrained(ctx, run.config)
        if run.config.head_only:
            result = fit_head_on_cached_features(ctx, run, directory, ctx.epoch, ctx.should_stop, resume_from)
        else:
            # Polling the stop flag every few batches lets a cancel land within the platform's grace period.
            # Several processes: this work horse launches them and relays rank 0's epochs to ctx.
            result = fit_distributed(run.request.world_size, run.config, run.data.train, run.data.test,
                                     run.data.class_names, directory, on_epoch=ctx.epoch,
                                     should_stop=ctx.should_stop, resume_from=resume_from, log_every=5,
                                     sync_batchnorm=run.request.sync_batchnorm,
                                     rendezvous=_rendezvous(ctx, ctx.job_id, 0, run.request.nodes))
    except Cancelled:
        register_model(ctx.config, ctx.store, ctx.job_id, ctx.record()["created_by"])
        raise
    row = register_model(ctx.config, ctx.store, ctx.job_id, ctx.record()["created_by"])
    return _summary(ctx.config, result, row)


def fit_head_on_cached_features(ctx: JobContext, run: PreparedRun, directory: Path,
                                on_epoch: Callable[[dict], None], should_stop: Callable[[], bool],
                                resume_from: Path | None = None):
    """Train only the head of a head-only run, on backbone features cached under ``DATA_DIR/features``.

    The features are computed once per model, weights, preprocessing and dataset contents (the job's
    progress says so while they are), so later runs and tune trials on the same data skip the backbone.
    """
    return fit_head(run.config, run.data.train, run.data.test, run.data.class_names, directory,
                    ctx.config.path("features"), on_epoch=on_epoch, should_stop=should_stop, resume_from=resume_from,
                    on_progress=lambda done, total: ctx.progress(done, total, unit="image", stage="computing features"))


def use_weights_cache(config: Config) -> Path:
    """Point torch.hub (torchvision's weights cache, ``$TORCH_HOME/hub``) at ``DATA_DIR/torch/hub``."""
    folder = config.path("torch", "hub")
    torch.hub.set_dir(str(folder))
    return folder


def fetch_pretrained(ctx: JobContext, config: TrainConfig) -> None:
    """Download torchvision's weights of the run's model into DATA_DIR's cache, reporting the bytes."""
    use_weights_cache(ctx.config)
    if config.pretrained:
        download_pretrained(config.model_name, on_progress=lambda done, total: ctx.progress(
            done, total, unit="byte", stage="downloading pretrained weights"))


@job_kind("train_node", timeout=TRAIN_TIMEOUT, result_ttl=TRAIN_RESULT_TTL,
          description="one more machine's processes of a train job's run over several machines")
def train_node(ctx: JobContext, params: dict) -> dict:
    """Join the run of the ``train`` job ``run_id`` with this worker's processes; its rank 0 reports."""
    run = prepare(ctx.config, TrainRequest.model_validate(request_params(params)))
    resume_from = None
    if params.get("resume_from"):
        resume_from = resolve_under(ctx.config.path("checkpoints"), params["resume_from"].removeprefix(
            "checkpoints/"), "resume_from")
    fit_distributed(run.request.world_size, run.config, run.data.train, run.data.test, run.data.class_names,
                    checkpoint_dir(ctx.config, params["run_id"]), should_stop=ctx.should_stop,
                    resume_from=resume_from, log_every=5, sync_batchnorm=run.request.sync_batchnorm,
                    rendezvous=_rendezvous(ctx, params["run_id"], params["node_rank"], run.request.nodes))
    return {"run_id": params["run_id"], "node_rank": params["node_rank"]}


RENDEZVOUS_KEY = "studio:rendezvous:{}"
RENDEZVOUS_WAIT_S = 600  # how long a machine waits for machine 0 to start


def _rendezvous(ctx: JobContext, run_id: str, node_rank: int, nodes: int) -> Rendezvous | None:
    """Machine 0 publishes its store's address under the run's key in Redis; the others wait for it."""
    if nodes == 1:
        return None
    conn = jobs.redis_connection(ctx.config.effective_redis_url)
    key = RENDEZVOUS_KEY.format(run_id)

    def publish(host: str, port: int) -> None:
        conn.set(key, f"{host}:{port}", ex=TRAIN_TIMEOUT)

    def lookup() -> tuple[str, int]:
        deadline = time.monotonic() + RENDEZVOUS_WAIT_S
        while (found := conn.get(key)) is None:
            if ctx.should_stop() or time.monotonic() > deadline:
                raise Cancelled(f"machine 0 of run {run_id} never started")
            time.sleep(0.5)
        host, port = found.decode().rsplit(":", 1)
        return host, int(port)

    return Rendezvous(nodes, node_rank, publish, lookup, _address_towards(ctx.config.effective_redis_url))


def _address_towards(redis_url: str) -> str:
    """This machine's address on the network that reaches Redis (where the other workers are too)."""
    target = urlparse(redis_url).hostname or "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((target, 9))  # UDP: no packet is sent, the kernel only picks the route
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _resume_from(ctx: JobContext, raw: str | None) -> Path | None:
    """The checkpoint to continue from; its epochs become the start of this job's history."""
    if raw is None:
        return None
    path = resolve_under(ctx.config.path("checkpoints"), raw.removeprefix("checkpoints/"), "resume_from")
    # One continuous history per job: the chart and /jobs show the earlier epochs too.
    ctx.store.update_job(ctx.job_id, history=checkpoints.load(path).history)
    return path


def _summary(config: Config, result, row: dict | None) -> dict:
    """The job's result: best metrics, the evaluation of the best epoch, checkpoint paths."""
    last = result.history[-1] if result.history else {}
    return {
        "model_id": row["id"] if row else None,
        "best_epoch": result.best_epoch, "best_score": result.best_score, "monitor": result.monitor,
        "best_accuracy": last.get("best_accuracy"), "epochs_completed": result.epochs_completed,
        "stopped_early": result.stopped_early, "class_names": result.class_names,
        "evaluation": result.evaluation,
        "checkpoints": {"best": _relative(config, result.best_path), "last": _relative(config, result.last_path)},
    }


def _relative(config: Config, path: Path) -> str:
    return Path(path).resolve().relative_to(config.data_dir.resolve()).as_posix()


# ------------------------------------------------------------------------------------ models catalog
def register_model(config: Config, store: Store, job_id: str, created_by: str | None) -> dict | None:
    """Add the ``best.pt`` of ``job_id`` to the ``models`` table (None when the run has no best yet)."""
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


def activate(store: Store, model_id: str) -> dict:
    """Make ``model_id`` the default for predictions of its kind (single- or multi-label)."""
    get_model(store, model_id)
    store.set_active_model(model_id)
    return model_view(get_model(store, model_id))


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


# ------------------------------------------------------------------------------- what the UI offers
def available_hdf5(config: Config, store: Store | None = None) -> list[str]:
    """HDF5 dataset files, relative to ``DATA_DIR/datasets``: the folder's and the datasets catalog's."""
    base = config.path("datasets")
    names = {p.name for p in base.glob("*") if p.suffix.lower() in HDF5_SUFFIXES and p.is_file()}
    for row in (store.list_datasets() if store is not None else ()):
        path = config.path(row["path"]).resolve()
        if path.is_file() and path.is_relative_to(base.resolve()):
            names.add(path.relative_to(base.resolve()).as_posix())
    return sorted(names)


def image_folder_candidates(config: Config, depth: int = 2, limit: int = 200) -> list[str]:
    """Folders under DATA_DIR laid out as class folders of images (``<dir>/<class>/*.png``)."""
    found: list[str] = []
    frontier = [config.data_dir]
    for _ in range(depth):
        frontier = [c for d in frontier for c in _subdirs(d) if not _store_folder(config, c)][:limit]
        found += [d.relative_to(config.data_dir).as_posix() for d in frontier if _holds_class_folders(d)]
    return sorted(found)


def _store_folder(config: Config, path: Path) -> bool:
    """Whether ``path`` is in one of the product's own folders (or a dot folder) of DATA_DIR."""
    parts = path.resolve().relative_to(config.data_dir.resolve()).parts
    return bool(parts) and (parts[0] in STORE_FOLDERS or any(p.startswith(".") for p in parts))


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    except OSError:
        return []


def _holds_class_folders(folder: Path) -> bool:
    # Looking at a few files per class is enough to tell; big trees must not slow the page down.
    for sub in _subdirs(folder)[:50]:
        with os.scandir(sub) as entries:
            for _, entry in zip(range(20), entries, strict=False):
                if entry.name.lower().endswith(IMAGE_SUFFIXES):
                    return True
    return False


def data_classes(config: Config, req: TrainRequest) -> list[str]:
    """The class (or label) names of the data ``req`` points at (raises InvalidInput like :func:`prepare`)."""
    return _open_data(config, req).class_names
