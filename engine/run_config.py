"""What defines a training run, readable without torch: :class:`TrainConfig`, its bounds, the process count.

The web process checks requests against these (``services.app.train_request``); the engine's training loop
(:mod:`engine.training`) and launcher (:mod:`engine.launch`) run them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.exceptions import InvalidInput
from engine.images import MAX_IMAGE_SIDE
from engine.models import get_model_info

# Train-time augmentation by name (:func:`engine.datasets.make_preprocessing` applies it). A flip changes what
# a digit, a letter, an arrow or a logo is: only "shift+flip" flips, for classes that look the same mirrored
# (faces, cats, cups), and only when the user asks for it.
AUGMENT_POLICIES: dict[str, dict[str, float] | None] = {
    "none": None,
    "shift": {"hflip": 0.0, "max_shift": 0.1},
    "shift+flip": {"hflip": 0.5, "max_shift": 0.1},
}
AUGMENT_NAMES = tuple(AUGMENT_POLICIES)

OPTIMIZERS = ("sgd", "adam")
# The learning-rate range test (engine.lr_finder) trains the network; a head-only run has none to train.
AUTO_RATE_NEEDS_A_NETWORK = ("learning_rate: 'auto' finds the rate of a run that trains the network; a head-only "
                             "run trains its classifier in seconds: give a number (e.g. 0.001 with adam)")
# Bounds of the run's numbers: the request models (services/app/train_request.py, services/app/tuning.py) declare
# theirs from these, so the API, the pages and this defensive check agree.
MAX_CLASSES = 100_000
MAX_EPOCHS = 1_000_000
MAX_BATCH_SIZE = 65_536
MIN_LEARNING_RATE, MAX_LEARNING_RATE = 1e-12, 10.0
MAX_WEIGHT_DECAY = 1.0
MAX_LOADER_WORKERS = 64
MAX_SEED = 2**31 - 1
LR_SCHEDULES = ("none", "plateau", "step")

@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored in its checkpoints).

    Attributes:
        model_name: a registered model.
        num_classes: number of classes (single-label) or labels (multi-label).
        epochs: total number of epochs (a resumed run continues up to this number).
        batch_size: mini-batch size.
        learning_rate: learning rate (of the classifier when ``lr_pretrained`` is set).
        optimizer: ``"sgd"`` (with momentum) or ``"adam"``.
        momentum: SGD momentum.
        weight_decay: L2 penalty (the legacy API's ``l2_reg``).
        lr_schedule: ``"none"``, ``"plateau"`` (divide by 1/``lr_gamma`` when the monitored metric stalls
            for ``plateau_patience`` epochs) or ``"step"`` (every ``epoch_step`` epochs). The legacy API's
            ``lr_decay=1`` means ``"step"`` when ``epoch_step`` is given, else ``"plateau"``.
        epoch_step: epochs between learning-rate steps (``"step"`` schedule).
        lr_gamma: learning-rate factor of a schedule step.
        plateau_patience: epochs without improvement before a plateau step.
        patience: early stopping: stop after this many epochs without improvement (None: never).
        seed: seeds model initialisation, shuffling, dropout and augmentation.
        image_size: input side in pixels (None: the model's default).
        grey: train on grey images (the legacy API's ``convert_grey``).
        multi_label: independent sigmoid outputs and BCE loss instead of softmax + cross-entropy.
        pretrained: start from torchvision's ImageNet weights (must be in the local cache).
        weights_path: start from this local state_dict file instead.
        lr_pretrained: learning rate of every layer but the classifier (0 freezes them; None: same lr).
        num_workers: DataLoader worker processes.
        augment: train-time augmentation: a name of :data:`AUGMENT_POLICIES` (``"none"``,
            ``"shift"``, ``"shift+flip"``), False, True (``"shift+flip"``) or a spec dict.
        head_only: train only the classifier, on backbone features computed once and cached
            (:func:`fit_head`); needs ``pretrained`` or ``weights_path``.
        augment_copies: head-only with ``augment``: augmented copies of each training image whose
            features are cached (augmentation happens once, when features are computed).
        clip_grad_norm: the gradients' total norm is clipped to this (None: never).
        warmup_steps: the learning rate rises linearly to its value over the first batches of a new run.
    """

    model_name: str
    num_classes: int
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "none"
    epoch_step: int | None = None
    lr_gamma: float = 0.1
    plateau_patience: int = 2
    patience: int | None = None
    seed: int = 0
    image_size: int | None = None
    grey: bool = False
    multi_label: bool = False
    pretrained: bool = False
    weights_path: str | None = None
    lr_pretrained: float | None = None
    num_workers: int = 0
    augment: bool | str | dict = False
    head_only: bool = False
    augment_copies: int = 4
    clip_grad_norm: float | None = 5.0
    warmup_steps: int = 20

    def __post_init__(self):
        info = get_model_info(self.model_name)
        _check_number(self, "num_classes", int, 1 if self.multi_label else 2, MAX_CLASSES)
        _check_number(self, "epochs", int, 0, MAX_EPOCHS)
        _check_number(self, "batch_size", int, 1, MAX_BATCH_SIZE)
        _check_number(self, "learning_rate", float, MIN_LEARNING_RATE, MAX_LEARNING_RATE)
        _check_choice(self, "optimizer", OPTIMIZERS)
        _check_number(self, "momentum", float, 0.0, 0.999999)
        _check_number(self, "weight_decay", float, 0.0, MAX_WEIGHT_DECAY)
        _check_choice(self, "lr_schedule", LR_SCHEDULES)
        _check_number(self, "epoch_step", int, 1, MAX_EPOCHS, optional=self.lr_schedule != "step")
        _check_number(self, "lr_gamma", float, 1e-6, 1.0)
        _check_number(self, "plateau_patience", int, 0, 1_000_000)
        _check_number(self, "patience", int, 1, MAX_EPOCHS, optional=True)
        _check_number(self, "seed", int, 0, MAX_SEED)
        _check_number(self, "image_size", int, info.min_input_size, MAX_IMAGE_SIDE, optional=True)
        _check_number(self, "lr_pretrained", float, 0.0, MAX_LEARNING_RATE, optional=True)
        _check_number(self, "num_workers", int, 0, MAX_LOADER_WORKERS)
        _check_number(self, "augment_copies", int, 1, 64)
        if isinstance(self.augment, str):
            _check_choice(self, "augment", AUGMENT_NAMES)
        _check_number(self, "clip_grad_norm", float, 1e-6, 1e6, optional=True)
        _check_number(self, "warmup_steps", int, 0, 1_000_000)
        _check_head_only(self)
        if self.multi_label and not info.multi_label_ok:
            raise InvalidInput(
                f"model {self.model_name!r} cannot be trained multi-label", field="multi_label"
            )

    @property
    def input_size(self) -> int:
        """The image side used: ``image_size`` or the model's default."""
        return self.image_size or get_model_info(self.model_name).default_input_size

    def preprocessing(self) -> dict[str, Any]:
        """Return the preprocessing dict the datasets of this run must use."""
        # The datasets module is the torch side; a run's description is read without it (the web process).
        from engine.datasets import make_preprocessing

        return make_preprocessing(self.input_size, grey=self.grey, augment=self.augmentation)

    @property
    def augmentation(self) -> dict[str, float] | None:
        """The augmentation spec of ``augment``: a policy's, True's (``"shift+flip"``), or a dict over it."""
        if isinstance(self.augment, str):
            return AUGMENT_POLICIES[self.augment]
        if isinstance(self.augment, dict):
            return {**AUGMENT_POLICIES["shift+flip"], **self.augment}
        return AUGMENT_POLICIES["shift+flip"] if self.augment is True else None


# The model of a request that names none (see default_model): the figures are bench/bench_training_quality.py's.
SCRATCH_DEFAULT, PRETRAINED_DEFAULT = "convnetj", "efficientnet-lite0"


@dataclass(frozen=True)
class ModelChoice:
    """The model a run that names none trains, how, and why (shown on the Train page, kept in the job)."""

    model_name: str
    transfer_mode: str
    reason: str


def default_model(image_side: int | None, train_images: int) -> ModelChoice:
    """Choose the model of a run that names none, from what its data holds.

    Images at least as large as the bundled backbone's smallest input: that backbone, pretrained on ImageNet,
    with only a new head trained (on photo patches of six scenes, 93 % in 10 s against 90 % in 150 s for
    convnetj from scratch). Smaller images (digits, glyphs, icons): convnetj from scratch at their own size
    (on scikit-learn's 8 px digits, 98.7 % against 93 % for ImageNet features).
    """
    backbone = get_model_info(PRETRAINED_DEFAULT)
    if image_side is not None and image_side < backbone.min_input_size:
        return ModelChoice(SCRATCH_DEFAULT, "scratch", (
            f"the images are {image_side} px, smaller than the pretrained backbone's smallest input "
            f"({backbone.min_input_size} px): small pictures such as digits or glyphs learn best from scratch at "
            "their own size"))
    seen = f"{image_side} px images" if image_side else "the images"
    return ModelChoice(PRETRAINED_DEFAULT, "head-only", (
        f"{train_images} training images, {seen}: the ImageNet backbone that ships with the install, with only "
        "a new head trained on its features (computed once), learns from few images in seconds"))


def default_input_side(model_name: str, data_side: int | None) -> int | None:
    """The input side of a run that names none: the data's own side when it is smaller than the model's default
    (enlarging adds pixels but no information, and costs time as the square of the side: 8 px digits at 128 px
    train 60 times slower, no better), never below the model's minimum; otherwise None, the model's default."""
    info = get_model_info(model_name)
    if data_side is None or data_side >= info.default_input_size:
        return None
    return max(int(data_side), info.min_input_size)


def _check_number(
    config: TrainConfig, name: str, kind: type, low: float, high: float, optional: bool = False
) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    ok_type = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
    if (
        isinstance(value, bool)
        or not ok_type
        or not (low <= value <= high)
        or (kind is float and math.isnan(value))
    ):
        raise InvalidInput(
            f"{name} must be {'an integer' if kind is int else 'a number'} in [{low}, {high}], got {value!r}",
            field=name,
        )


def _check_head_only(config: TrainConfig) -> None:
    if config.head_only and not (config.pretrained or config.weights_path):
        raise InvalidInput(
            "head_only trains a classifier on pretrained features: it needs pretrained weights "
            "or a weights file",
            field="head_only",
        )
    if config.head_only and config.lr_pretrained:
        raise InvalidInput(
            f"head_only freezes the pretrained layers; lr_pretrained must be 0, got {config.lr_pretrained}",
            field="lr_pretrained",
        )


def _check_choice(config: TrainConfig, name: str, allowed: Sequence[str]) -> None:
    if getattr(config, name) not in allowed:
        raise InvalidInput(
            f"{name} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}", field=name
        )


# ------------------------------------------------------------------------------------ processes
MAX_PROCESSES = 64  # the one bound on a run's processes (the API's world_size reads it)


@dataclass(frozen=True)
class Rendezvous:
    """How the launchers of one run on several machines find each other (c10d's TCP store rendezvous).

    Machine 0 hosts the store and calls ``publish(host, port)``; every other machine calls ``lookup()``,
    which waits for that address (e.g. a key in Redis). Every machine runs the same number of processes.

    Attributes:
        nnodes: machines in the run.
        node_rank: this machine's index (0 hosts the store and writes the checkpoints).
        host: machine 0's address as the others reach it.
    """

    nnodes: int
    node_rank: int
    publish: Callable[[str, int], None] | None = None
    lookup: Callable[[], tuple[str, int]] | None = None
    host: str = "127.0.0.1"


def check_world_size(world_size: int, batch_size: int, field: str = "world_size") -> None:
    """Refuse a process count out of bounds, or one that cannot share ``batch_size`` evenly.

    Raises:
        InvalidInput: naming ``field`` (or ``batch_size``).
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or not 1 <= world_size <= MAX_PROCESSES:
        raise InvalidInput(f"{field} must be an integer in [1, {MAX_PROCESSES}], got {world_size!r}", field)
    if batch_size % world_size:
        raise InvalidInput(
            f"batch_size {batch_size} is the effective batch of all {world_size} processes and must be "
            f"a multiple of {field} ({world_size})",
            "batch_size",
        )
