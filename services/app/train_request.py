"""The ``/train`` request: its model, where its paths may lead, and the checks a request can afford.

Shared by ``POST /api/v1/train``, the Train page and the studies (``services.app.tuning``), so all accept
exactly the same requests. The request keeps the legacy API's field names; :func:`to_train_config` maps them
onto the engine's :class:`~engine.run_config.TrainConfig`. Every path a client sends is relative to DATA_DIR
(``hdf5_path``: to ``DATA_DIR/datasets``) and may never lead outside it.

Nothing here imports torch, and nothing here reads every image: the request looks at folder listings
(stopping once it knows enough), an HDF5 file's declared shapes, labels and class names (bounded before
they are read) and the label set. What grows with the data (building the datasets, the duplicate check
over both splits) runs in the ``train`` job (``services.app.train_run``), which repeats these checks on the
full data and fails with the same messages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Literal

import numpy as np
from PIL import Image as PILImage
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from engine import labels as labelsets
from engine.dataset_kinds import IMAGE_SUFFIXES, class_folders, image_files, is_image_entry, list_dataset_kinds
from engine.exceptions import InvalidInput, StudioError
from engine.hdf5_layout import inspect_hdf5, read_split_image
from engine.images import MAX_IMAGE_SIDE, open_image, to_rgb_array
from engine.models import get_model_info, list_models
from engine.run_config import (
    AUGMENT_NAMES,
    AUGMENT_POLICIES,
    AUTO_RATE_NEEDS_A_NETWORK,
    MAX_BATCH_SIZE,
    MAX_CLASSES,
    MAX_EPOCHS,
    MAX_LEARNING_RATE,
    MAX_LOADER_WORKERS,
    MAX_PROCESSES,
    MAX_SEED,
    MAX_WEIGHT_DECAY,
    MIN_LEARNING_RATE,
    OPTIMIZERS,
    ModelChoice,
    TrainConfig,
    check_world_size,
    default_input_side,
    default_model,
)
from services.app.train_folders import available_hdf5, store_folder
from services.app.validation import Within
from services.platform.config import Config
from services.storage.rows import job_dataset
from services.storage.store import Store

# Long runs are the point of this job (the legacy API asks for 4000 epochs): three days, and a run that
# outlives it is resumed from its last.pt. Results stay a week, like the catalog's other jobs.
TRAIN_TIMEOUT = 3 * 24 * 3600
TRAIN_RESULT_TTL = 7 * 24 * 3600
TRANSFER_MODES = ("head-only", "fine-tune", "scratch")
WEIGHTS_SUFFIXES = (".pth", ".pt", ".tar", ".safetensors")
# Fine-tuning without an explicit lrp: the pretrained layers learn ten times slower than the new head.
FINE_TUNE_LR_FACTOR = 0.1
# Where each dataset path field lives: hdf5 files in the datasets folder, image folders anywhere in DATA_DIR.
PATH_BASES = {"hdf5_path": ("datasets",), "trainset_dir": (), "testset_dir": ()}
# Dataset paths that clients do not choose: the annotation feature's folder.
FIXED_PATHS = {"newdata_dir": ("newdata",)}
# Below this a test split measures nothing: one image per class gives 0 % or 100 % by chance.
MIN_TEST_PER_CLASS = 2
# The request counts at most this many training images per class folder (a listing, no file is opened): the
# quota's estimate. The job counts them all and holds the run to the quota again.
MAX_COUNTED_PER_CLASS = 100_000
# Image headers read per class folder to tell the data's image size (training at it when smaller than the model's).
SIDE_SAMPLES_PER_CLASS = 8


# ------------------------------------------------------------------------------------------ request
class TrainRequest(BaseModel):
    """The body of ``POST /api/v1/train``: the legacy API's fields (numbers and booleans may be strings).

    Each field is declared once, here, with its bound and default; pages read them through
    :func:`services.ui.page.field_limits`. A field that sets a :class:`TrainConfig` field of another name
    carries that name as its ``serialization_alias`` (see :func:`request_name`): that is how an engine
    error is reported under the request's name, and how a study's search dimension finds its field.
    """

    model_config = ConfigDict(extra="forbid")

    model_name: str | None = Field(None, description="a registered model (GET /api/v1/models); None: chosen from "
                                                      "the data (the job's params say which and why: model_choice)",
                                   json_schema_extra={"enum": [m.name for m in list_models()]})
    dataset: str = Field("custom", json_schema_extra={"enum": list(list_dataset_kinds())},
                         description="hdf5 (a file in DATA_DIR/datasets), custom (class folders), newdata")
    num_classes: int | None = Field(None, ge=1, le=MAX_CLASSES, description="must match the data; None: from it")
    batch_size: int = Field(16, ge=1, le=MAX_BATCH_SIZE)
    is_transform: bool = Field(False, description="the legacy API's switch for preprocessing (resize to the model's "
                                                  "input, to a tensor): always done here, accepted for legacy "
                                                  "bodies; it does not augment (see augment)")
    augment: Literal[AUGMENT_NAMES] = Field(
        "none", description="train-time augmentation: none; shift (up to 10 % of the side); shift+flip (also "
                            "mirrors: only for classes that look the same mirrored, never for digits or letters)")
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
    learning_rate: Annotated[float | Literal["auto"], Within(MIN_LEARNING_RATE, MAX_LEARNING_RATE)] = Field(
        0.01, description="or 'auto': a learning-rate range test on the training data picks it before the run "
                          "(its curve is in the first epoch's record, lr_finder)")
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
    def _known_model(cls, value: str | None) -> str | None:
        if value is not None:
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


def checkpoint_dir(config: Config, job_id: str) -> Path:
    """Where the job ``job_id`` writes ``best.pt`` and ``last.pt``."""
    return config.path("checkpoints", job_id)


# ------------------------------------------------------------------------------- checks against data
@dataclass(frozen=True)
class DataFacts:
    """What a run's data holds, as far as the checks need it.

    Attributes:
        class_names: the classes (labels, when multi-label) in output order.
        multi_label: the data is multi-label.
        train_images: images of the training split (the request's is a lower bound past
            ``MAX_COUNTED_PER_CLASS`` images of a class).
        test_counts: test images per class name (single-label data only).
    """

    class_names: list[str]
    multi_label: bool
    train_images: int
    test_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    image_side: int | None = None


def check_request(config: Config, req: TrainRequest) -> tuple[TrainConfig, DataFacts]:
    """Check ``req`` against the data without reading it all, and build the engine's config.

    Raises:
        InvalidInput: a missing dataset, a path outside DATA_DIR, ``num_classes`` or ``multi_label``
            contradicting the data, too few classes or test images, or a value the engine refuses; the
            field is the request's name.
    """
    check_world_size(req.world_size * req.nodes, req.batch_size)
    facts = read_facts(config, req)
    return check_against(config, with_default_model(req, facts)[0], facts), facts


def with_default_model(req: TrainRequest, facts: DataFacts) -> tuple[TrainRequest, ModelChoice | None]:
    """``req`` with its model chosen from the data when it names none (:func:`engine.run_config.default_model`),
    and that choice (None when the request named its model)."""
    if req.model_name is not None:
        return req, None
    choice = default_model(facts.image_side, facts.train_images)
    # A head trains in one process, at a rate it is given: a run over processes or with an "auto" rate trains
    # every layer instead.
    if choice.transfer_mode == "head-only" and (req.world_size * req.nodes > 1 or req.learning_rate == "auto"):
        why = "the run is spread over processes" if req.world_size * req.nodes > 1 else "its rate is found by a test"
        choice = dataclasses.replace(choice, transfer_mode="fine-tune",
                                     reason=f"{choice.reason}; fine-tuned, every layer, as {why}")
    # A start the request asks for is kept; "pretrained": true (the Train page's box) agrees with the choice.
    own_start = req.transfer_mode is not None or req.pretrained is False or req.weights is not None
    update = {"model_name": choice.model_name, **({} if own_start else {"transfer_mode": choice.transfer_mode})}
    return req.model_copy(update=update), choice


def check_against(config: Config, req: TrainRequest, facts: DataFacts) -> TrainConfig:
    """The checks of ``req`` against what its data holds (the request's look or the job's full read)."""
    if req.multi_label is not None and req.multi_label != facts.multi_label:
        raise InvalidInput(f"multi_label: the {req.dataset!r} data is "
                           f"{'multi' if facts.multi_label else 'single'}-label", "multi_label")
    names = facts.class_names
    check_split_sizes(req, facts)
    if req.num_classes is not None and req.num_classes != len(names):
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise InvalidInput(f"num_classes is {req.num_classes} but the data has {len(names)} classes: {shown}",
                           "num_classes")
    run_config = to_train_config(req, len(names), facts.multi_label, weights_file(config, req), facts.image_side)
    if req.learning_rate == "auto" and run_config.head_only:
        raise InvalidInput(AUTO_RATE_NEEDS_A_NETWORK, "learning_rate")
    if req.learning_rate == "auto" and req.nodes > 1:
        raise InvalidInput("learning_rate: 'auto' tests rates on one machine; a run over several machines needs "
                           "a number (run 'auto' on one machine first: its job's lr_finder has the rate)",
                           "learning_rate")
    if run_config.head_only and req.world_size * req.nodes > 1:
        raise InvalidInput("world_size: a head-only run trains its head on cached features in one process "
                           "(seconds); use world_size 1, or transfer_mode 'fine-tune' to train every layer "
                           "over several processes", "world_size")
    return run_config


def mirror_symmetric(store: Store, req: TrainRequest) -> bool | None:
    """Whether the run's catalog dataset is marked mirror-symmetric (None: its data is no catalog dataset)."""
    name = job_dataset(req.model_dump()) if req.dataset == "hdf5" else None
    row = store.get_dataset(name) if name else None
    return None if row is None else bool(row["mirror_symmetric"])


def check_mirroring(store: Store, req: TrainRequest) -> None:
    """Refuse an augmentation that mirrors images unless the run's catalog dataset is marked mirror-symmetric:
    a mirrored digit, letter or arrow is another class, so only the user can say that mirroring is safe.

    Raises:
        InvalidInput: field ``augment``.
    """
    if not (AUGMENT_POLICIES[req.augment] or {}).get("hflip"):
        return
    symmetric = mirror_symmetric(store, req)
    if symmetric:
        return
    what = (f"dataset '{job_dataset(req.model_dump())}' is not marked mirror-symmetric" if symmetric is not None
            else "only a catalog dataset (Datasets page) can be marked mirror-symmetric")
    raise InvalidInput(f"augment: '{req.augment}' mirrors images, which changes what a digit, a letter or an arrow "
                       f"is; {what}. Mark it on the Datasets page (or PATCH /api/v1/datasets/<name> with "
                       "mirror_symmetric true) if every class looks the same mirrored, or choose 'shift'", "augment")


def weights_file(config: Config, req: TrainRequest) -> str | None:
    """The request's ``weights`` file resolved inside DATA_DIR (None without one); raises InvalidInput."""
    if req.weights is None:
        return None
    path = resolve_under(config.data_dir, req.weights, "weights")
    if not probe(path, Path.is_file):
        raise InvalidInput(f"weights: no file {req.weights!r} in DATA_DIR", "weights")
    return str(path)


def check_split_sizes(req: TrainRequest, facts: DataFacts) -> None:
    """Refuse data that cannot teach or measure a classifier: one class, or too few test images of a class.

    Raises:
        InvalidInput: field ``dataset`` (one class) or ``testset_dir`` (a class short of test images).
    """
    names = facts.class_names
    if len(names) < 2:
        raise InvalidInput(f"dataset: the data has {len(names)} class{'es' if len(names) != 1 else ''} "
                           f"({', '.join(names) or 'none'}); at least 2 are needed", "dataset")
    if facts.multi_label:
        return
    counts = facts.test_counts
    short = [f"{name} ({counts.get(name, 0)})" for name in names if counts.get(name, 0) < MIN_TEST_PER_CLASS]
    if short:
        field = "hdf5_path" if req.dataset == "hdf5" else "testset_dir"
        raise InvalidInput(f"{field}: the test split needs at least {MIN_TEST_PER_CLASS} images of every class; "
                           f"too few: {', '.join(short[:20])}{', ...' if len(short) > 20 else ''}", field)


def read_facts(config: Config, req: TrainRequest) -> DataFacts:
    """What the data of ``req`` holds, from listings, declared shapes and labels (never every image).

    Raises:
        InvalidInput: the data is missing or unreadable (engine messages, with DATA_DIR for server paths).
    """
    readers = {"custom": _folder_facts, "hdf5": _hdf5_facts, "newdata": _newdata_facts}
    try:
        return readers[req.dataset](config, req)
    except InvalidInput as exc:  # the engine names absolute paths; clients know paths relative to DATA_DIR
        raise InvalidInput(client_words(config, exc), exc.field) from None
    except StudioError as exc:  # e.g. a hand-edited label set that no longer parses
        raise InvalidInput(client_words(config, exc), "dataset") from None


def client_words(config: Config, exc: Exception) -> str:
    """An engine message with DATA_DIR in place of the server's path."""
    return str(exc).replace(str(config.data_dir.resolve()), "DATA_DIR").replace(str(config.data_dir), "DATA_DIR")


def _hdf5_facts(config: Config, req: TrainRequest) -> DataFacts:
    summary = inspect_hdf5(locate(config, req, "hdf5_path"))  # declared shapes bounded before any read
    return DataFacts(summary.class_names, summary.multi_label, summary.split_sizes["train"],
                     summary.class_counts.get("test", {}), max(summary.image_shape[:2]))


def _newdata_facts(config: Config, req: TrainRequest) -> DataFacts:
    folder = locate(config, req, "newdata_dir")
    label_set = labelsets.read_label_set(folder)
    items = labelsets.labelled_images(folder)
    if len(items) < 2:
        raise InvalidInput(f"{str(folder)!r} has {len(items)} labelled images; at least 2 are needed",
                           "newdata_dir")
    return DataFacts(list(label_set), True, len(items))


def _folder_facts(config: Config, req: TrainRequest) -> DataFacts:
    """Class folders: the class names and counts from listings that stop once they know enough."""
    train, test = check_separate_folders(config, req)
    names = class_folders(train)
    unknown = sorted(set(class_folders(test)) - set(names))
    if unknown:
        raise InvalidInput(f"{str(test)!r} has classes unknown to the training set: {unknown}", "testset_dir")
    train_images = sum(count_images(train / name, MAX_COUNTED_PER_CLASS) for name in names)
    if not train_images:
        raise InvalidInput(f"{str(train)!r} holds no {'/'.join(IMAGE_SUFFIXES)} images in class folders",
                           "trainset_dir")
    # Enough to tell a class short of test images; the job counts every image.
    counts = {name: count_images(test / name, MIN_TEST_PER_CLASS) for name in names}
    return DataFacts(names, False, train_images, counts, sampled_side(train, names))


def sampled_side(root: Path, names: list[str], per_class: int = SIDE_SAMPLES_PER_CLASS) -> int | None:
    """The largest image side among the first few images of each class folder, read from the files' headers
    (None when none can be read: the model's default size then)."""
    sides = []
    for name in names:
        for path in image_files(root / name)[:per_class]:
            with contextlib.suppress(OSError, ValueError), PILImage.open(path) as image:
                sides.append(max(image.size))  # header only: nothing is decoded
    return max(sides, default=None)


def count_images(folder: Path, limit: int) -> int:
    """Images in ``folder`` by their names, counting no further than ``limit`` (0 if it is no folder)."""
    found = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                found += is_image_entry(entry)
                if found >= limit:
                    break
    except (NotADirectoryError, FileNotFoundError):
        return 0
    return found


def check_separate_folders(config: Config, req: TrainRequest) -> tuple[Path, Path]:
    """The training and test folders of a ``custom`` request, refused when one is (inside) the other."""
    train, test = locate(config, req, "trainset_dir"), locate(config, req, "testset_dir")
    if train == test or train.is_relative_to(test) or test.is_relative_to(train):
        raise InvalidInput(f"testset_dir: the test folder {req.testset_dir!r} is the training folder "
                           f"{req.trainset_dir!r} (or inside it); choose a separate test folder", "testset_dir")
    return train, test


def locate(config: Config, req: TrainRequest, field: str) -> Path:
    """The path of a dataset field of ``req``, checked: inside its base, not the studio's own, existing."""
    if field in FIXED_PATHS:
        return config.path(*FIXED_PATHS[field])
    raw = getattr(req, field)
    if not raw:
        raise InvalidInput(f"{field}: dataset {req.dataset!r} needs {field}", field)
    path = resolve_under(config.path(*PATH_BASES[field]), raw, field)
    if field != "hdf5_path" and store_folder(config, path):
        raise InvalidInput(f"{field}: {raw!r} is one of the studio's own folders, not a dataset", field)
    if field == "hdf5_path" and not probe(path, Path.is_file):
        known = ", ".join(available_hdf5(config)) or "none yet"
        raise InvalidInput(f"{field}: no dataset file {raw!r} in DATA_DIR/datasets; available: {known}", field)
    if field != "hdf5_path" and not probe(path, Path.is_dir):
        raise InvalidInput(f"{field}: no folder {raw!r} in DATA_DIR", field)
    return path


def evaluation_image(config: Config, params: dict, item: dict) -> np.ndarray | None:
    """The test image a run's report names (an entry of its evaluation's ``worst``) as the data holds it now,
    read within the run's dataset and DATA_DIR; None when it is no longer there or cannot be read."""
    try:
        req = TrainRequest.model_validate(request_params(params))
        if req.dataset == "hdf5":
            return read_split_image(locate(config, req, "hdf5_path"), "test", int(item["index"]))
        if req.dataset == "custom" and item.get("id"):
            path = resolve_under(locate(config, req, "testset_dir"), str(item["id"]), "id")
            return to_rgb_array(open_image(path.read_bytes(), field="id"))
    except (StudioError, ValueError, KeyError, OSError):
        return None
    return None


def probe(path: Path, test) -> bool:
    """``test(path)``, False for names the file system cannot even hold."""
    # Names too long for the file system, or not encodable to it, name nothing that exists.
    try:
        return test(path)
    except (OSError, ValueError):
        return False


def to_train_config(req: TrainRequest, num_classes: int, multi_label: bool,
                    weights_path: str | None = None, data_side: int | None = None) -> TrainConfig:
    """Map the legacy API's fields onto the engine's TrainConfig (errors name the request's field).

    Args:
        weights_path: the request's ``weights`` file, already resolved inside DATA_DIR.
        data_side: the largest side of the data's images (:attr:`DataFacts.image_side`): without an
            ``image_size``, smaller images train at their own size (:func:`engine.run_config.default_input_side`).
    """
    schedule = ("step" if req.epoch_step else "plateau") if req.lr_decay else "none"
    try:
        return TrainConfig(
            model_name=req.model_name, num_classes=num_classes, epochs=req.num_epochs, batch_size=req.batch_size,
            learning_rate=nominal_rate(req), optimizer=req.optimizer, momentum=req.momentum,
            weight_decay=req.l2_reg, lr_schedule=schedule, epoch_step=req.epoch_step, patience=req.patience,
            seed=req.seed, image_size=req.image_size or default_input_side(req.model_name, data_side),
            grey=req.convert_grey, multi_label=multi_label,
            augment=req.augment, **transfer_settings(req, weights_path),
            # More loader processes than cores only adds contention with the training process itself.
            num_workers=min(req.num_workers, os.cpu_count() or 1))
    except InvalidInput as exc:
        field = request_name(exc.field)
        if field == exc.field:
            raise
        raise InvalidInput(str(exc).replace(exc.field, field, 1), field) from None


def nominal_rate(req: TrainRequest) -> float:
    """The request's learning rate; for ``"auto"``, the field's default, which the checks before the run use
    (the job's range test replaces it: :func:`services.app.train_run.find_rate`)."""
    return TrainRequest.model_fields["learning_rate"].default if req.learning_rate == "auto" else req.learning_rate


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
    lrp = req.lrp if req.lrp is not None else nominal_rate(req) * FINE_TUNE_LR_FACTOR
    return {**start, "head_only": False, "lr_pretrained": lrp}
