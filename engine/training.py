"""The training loop: ``train_one_epoch``, ``evaluate`` and ``fit`` (torchvision references style).

``fit`` reports through callbacks only: ``on_epoch(record)`` after every epoch (a plain dict, see
:func:`fit`), ``on_batch(progress)`` every ``log_every`` batches, and ``should_stop()`` polled at the
same points and between epochs. It writes two self-describing checkpoints to ``checkpoint_dir``:
``last.pt`` after every epoch and ``best.pt`` whenever the monitored metric improves (test accuracy,
or mAP for multi-label), in the format of :mod:`engine.checkpoints` (loadable with ``weights_only=True``).

All accuracies and multi-label metrics are percentages (0-100); a multi-label "accuracy" counts
correct label decisions at probability 0.5. On a CUDA device the loop uses
automatic mixed precision (float16 autocast + GradScaler); on a CPU it runs in float32.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

from engine import checkpoints, distributed
from engine.datasets import augment_batch
from engine.exceptions import Cancelled, InvalidInput
from engine.metrics import (
    best_thresholds,
    confusion_matrix,
    count_correct,
    multilabel_metrics,
    single_label_report,
)
from engine.models.build import create_model, head_parameter_names
from engine.run_config import (  # noqa: F401  (re-exported: a run's description, as engine.training names it)
    LR_SCHEDULES,
    MAX_BATCH_SIZE,
    MAX_CLASSES,
    MAX_EPOCHS,
    MAX_LEARNING_RATE,
    MAX_LOADER_WORKERS,
    MAX_SEED,
    MAX_WEIGHT_DECAY,
    OPTIMIZERS,
    TrainConfig,
)

Record = dict[str, Any]


# ------------------------------------------------------------------------------------ building blocks


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device``, or CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: TrainConfig, in_chans: int) -> nn.Module:
    """Create the run's model (pretrained weights loaded when asked)."""
    return create_model(
        config.model_name,
        config.num_classes,
        in_chans=in_chans,
        pretrained=config.pretrained,
        weights_path=config.weights_path,
        multi_label=config.multi_label,
    )


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or Adam; with ``lr_pretrained`` the classifier and the other layers get separate learning rates.

    ``lr_pretrained == 0`` freezes the non-classifier layers (no gradients, batch norm statistics kept).
    """
    groups = parameter_groups(config, model)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        groups, lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
    )


def parameter_groups(config: TrainConfig, model: nn.Module) -> list[dict[str, Any]]:
    """The optimizer's groups: the classifier at ``learning_rate``, the pretrained layers at ``lr_pretrained``.

    Without ``lr_pretrained`` every parameter shares one group. ``lr_pretrained == 0`` (or
    ``head_only``) freezes the pretrained layers instead of giving them a zero learning rate, so they
    get no gradients at all (and batch norm keeps their statistics).
    """
    named = list(model.named_parameters())
    if config.lr_pretrained is None and not config.head_only:
        return [{"params": [p for _, p in named], "lr": config.learning_rate}]
    head = head_parameter_names(model)
    body = [p for name, p in named if name not in head]
    groups = [{"params": [p for name, p in named if name in head], "lr": config.learning_rate}]
    if config.lr_pretrained and not config.head_only:
        groups.append({"params": body, "lr": config.lr_pretrained})
    else:
        freeze(body)
    return groups


def freeze(parameters: Sequence[nn.Parameter]) -> None:
    """Stop gradients to ``parameters`` (a frozen layer's batch norm is kept in eval mode by the loop)."""
    for p in parameters:
        p.requires_grad_(False)


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer):
    """Return the learning-rate scheduler of ``config.lr_schedule`` (None for ``"none"``)."""
    if config.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.epoch_step, gamma=config.lr_gamma)
    if config.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=config.lr_gamma, patience=config.plateau_patience
        )
    return None


def build_criterion(multi_label: bool) -> nn.Module:
    """BCE-with-logits for multi-label, cross-entropy otherwise."""
    return nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss()


def compute_loss(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, criterion: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(loss, logits)``, using the model's own ``compute_loss`` hook when it has one."""
    if isinstance(model, distributed.DistributedDataParallel):
        # Through the wrapper's forward, so that its gradient synchronisation is armed.
        return model(images, targets)
    hook = getattr(_unwrap(model), "compute_loss", None)
    if hook is not None:
        return hook(images, targets)
    logits = model(images)
    return criterion(logits, targets), logits


def _unwrap(model: nn.Module) -> nn.Module:
    return distributed.unwrap(model)


def _keep_frozen_batchnorm(model: nn.Module) -> None:
    # A frozen layer must not drift through its running statistics either.
    for module in model.modules():
        if (
            isinstance(module, nn.modules.batchnorm._BatchNorm)
            and module.affine
            and not module.weight.requires_grad
        ):
            module.eval()


# --------------------------------------------------------------------------------- epochs and evaluation


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    multi_label: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_batch: Callable[[Record], None] | None = None,
    log_every: int = 20,
    clip_grad_norm: float | None = None,
    warmup_steps: int = 0,
    augmentation: dict[str, float] | None = None,
    generator: torch.Generator | None = None,
) -> Record:
    """Train for one pass over ``loader``.

    ``clip_grad_norm`` clips the gradients' total norm (after unscaling under mixed precision);
    ``warmup_steps`` raises each group's learning rate linearly over the first batches (at most half the
    epoch's), up to its value, which every group has again at the end. ``augmentation`` (a preprocessing's
    ``augment`` spec) is applied to each batch on the device (:func:`engine.datasets.augment_batch`), its
    draws from ``generator``.

    Returns:
        ``{"loss", "accuracy", "samples", "seconds", "first_loss"}`` (accuracy in percent; ``first_loss``: the
        first batch's, before any update of this epoch).

    Raises:
        Cancelled: ``should_stop()`` turned true (polled every ``log_every`` batches).
    """
    model.train()
    _keep_frozen_batchnorm(model)
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    # Sums stay on the device: reading them back every batch would stall a GPU.
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)
    samples, start, first_loss = 0, time.perf_counter(), torch.tensor(float("nan"))
    rates = [group["lr"] for group in optimizer.param_groups]
    # At most half an epoch: on a small dataset a warm-up longer than its epoch would waste the epoch.
    warmup_steps = min(warmup_steps, len(loader) // 2)
    try:
        for step, (images, targets) in enumerate(loader, start=1):
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if augmentation:
                images = augment_batch(images, augmentation, generator)
            if step <= warmup_steps:
                for group, rate in zip(optimizer.param_groups, rates, strict=True):
                    group["lr"] = rate * step / (warmup_steps + 1)
            loss, logits = optimizer_step(model, images, targets, criterion, optimizer, scaler, clip_grad_norm)
            if step == 1:
                first_loss = loss.detach()
            loss_sum += loss.detach() * len(images)
            correct += count_correct(logits.detach(), targets, multi_label)
            samples += len(images)
            if step % log_every == 0:
                if on_batch is not None:
                    on_batch({"batch": step, "batches": len(loader), "loss": loss_sum.item() / samples})
                if should_stop is not None and should_stop():
                    raise Cancelled(f"stopped during an epoch, after batch {step}")
    finally:
        for group, rate in zip(optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
    per_sample = samples * (targets.shape[1] if multi_label and samples else 1)
    return {
        "loss": loss_sum.item() / max(samples, 1),
        "accuracy": 100.0 * correct.item() / max(per_sample, 1),
        "samples": samples,
        "seconds": time.perf_counter() - start,
        "first_loss": first_loss.item(),  # this process's first batch, before the epoch's first update
    }


def optimizer_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    clip_grad_norm: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One update on one batch (mixed precision when ``scaler`` is enabled, the gradients' total norm clipped to
    ``clip_grad_norm``); returns ``(loss, logits)``. The training loop and the learning-rate range test share it."""
    with torch.autocast(images.device.type, dtype=torch.float16, enabled=scaler.is_enabled()):
        loss, logits = compute_loss(model, images, targets, criterion)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad_norm is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss, logits


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    device: torch.device,
    multi_label: bool = False,
    thresholds: Sequence[float] | None = None,
) -> Record:
    """Evaluate in eval mode without gradients.

    Returns:
        ``{"loss", "accuracy"}`` plus, multi-label, ``map``, ``micro_f1``, ``macro_f1`` (at ``thresholds``,
        default 0.5), all in percent; and ``outputs``: ``(logits, targets)`` CPU tensors for further metrics.
    """
    model.eval()
    logits_all, targets_all, loss_sum = [], [], 0.0
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"),
    ):
        for images, targets in loader:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            loss, logits = compute_loss(model, images, targets, criterion)
            loss_sum += float(loss) * len(images)
            logits_all.append(logits.float().cpu())
            targets_all.append(targets.cpu())
    return outputs_record(torch.cat(logits_all), torch.cat(targets_all), loss_sum, multi_label, thresholds)


def outputs_record(
    logits: torch.Tensor,
    targets: torch.Tensor,
    loss_sum: float,
    multi_label: bool = False,
    thresholds: Sequence[float] | None = None,
) -> Record:
    """The figures of :func:`evaluate` from all outputs of a pass (``loss_sum``: the summed sample losses)."""
    n_decisions = targets.numel() if multi_label else len(targets)
    result = {
        "loss": loss_sum / max(len(targets), 1),
        "accuracy": 100.0 * count_correct(logits, targets, multi_label).item() / max(n_decisions, 1),
    }
    if multi_label:
        probs = torch.sigmoid(logits).numpy()
        found = multilabel_metrics(probs, targets.numpy(), thresholds or [0.5] * probs.shape[1])
        result.update({k: found[k] for k in ("map", "micro_f1", "macro_f1")})
    result["outputs"] = (logits, targets)
    return result


def final_evaluation(
    logits: torch.Tensor,
    targets: torch.Tensor,
    multi_label: bool,
    class_names: Sequence[str],
    item_id: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """The end-of-run report of an evaluation's outputs.

    Single-label: ``confusion_matrix`` and :func:`engine.metrics.single_label_report`'s per-class
    precision/recall, most confused pairs and most confidently wrong samples. Multi-label: per-class
    ``thresholds`` (chosen for best F1 on this set) and, at those thresholds, mAP, micro/macro F1 and
    ``per_class`` precision/recall/F1.
    """
    if not multi_label:
        return {
            "class_names": list(class_names),
            "confusion_matrix": confusion_matrix(logits.argmax(1), targets, len(class_names)),
            **single_label_report(logits, targets, class_names, item_id=item_id),
        }
    probs, truth = torch.sigmoid(logits).numpy(), targets.numpy()
    thresholds = best_thresholds(probs, truth)
    found = multilabel_metrics(probs, truth, thresholds)
    per_class = {
        name: {
            "precision": found["precision"][i],
            "recall": found["recall"][i],
            "f1": found["f1"][i],
            "average_precision": found["average_precision"][i],
            "support": found["support"][i],
            "threshold": thresholds[i],
        }
        for i, name in enumerate(class_names)
    }
    return {
        "class_names": list(class_names),
        "thresholds": thresholds,
        "map": found["map"],
        "micro_f1": found["micro_f1"],
        "macro_f1": found["macro_f1"],
        "per_class": per_class,
    }


# ------------------------------------------------------------------------------------------------ fit


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    best_path: Path
    last_path: Path
    best_epoch: int
    best_score: float
    monitor: str
    epochs_completed: int
    stopped_early: bool
    history: list[Record]
    evaluation: dict[str, Any]
    class_names: list[str]


@dataclass
class _Run:
    """The mutable state of one run; checkpoints are snapshots of it."""

    config: TrainConfig
    class_names: list[str]
    preprocessing: dict[str, Any]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    device: torch.device
    directory: Path
    epoch: int = 0
    history: list[Record] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    bad_epochs: int = 0
    evaluation: dict[str, Any] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    # The weights (and optimizer state) a diverged epoch goes back to: the best epoch's, or the start's.
    fallback: dict[str, Any] | None = None
    warm_up: bool = True
    # The loss of the run's first batch before its first update (see _recover_if_diverged).
    starting_loss: float | None = None
    # How the report names an evaluation image: its test set's ``item_id(index)``, when the set has one.
    item_id: Callable[[int], str] | None = None

    @property
    def monitor(self) -> str:
        return "test_map" if self.config.multi_label else "test_accuracy"

    def checkpoint(self, kind: str) -> checkpoints.Checkpoint:
        """A snapshot of the run (``kind`` ``"best"`` or ``"last"``); only best ones keep the evaluation."""
        return checkpoints.Checkpoint(
            model_name=self.config.model_name,
            model_kwargs={
                "num_classes": self.config.num_classes,
                "in_chans": self.preprocessing["channels"],
                "multi_label": self.config.multi_label,
            },
            state_dict=_unwrap(self.model).state_dict(),
            class_names=list(self.class_names),
            preprocessing=self.preprocessing,
            config=dataclasses.asdict(self.config),
            kind=kind,
            epoch=self.epoch,
            history=[dict(r) for r in self.history],
            best=dict(self.best),
            epochs_without_improvement=self.bad_epochs,
            evaluation=self.evaluation if kind == "best" else {},
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            rng={"torch": torch.get_rng_state()},
            versions={"torch": str(torch.__version__), "torchvision": str(torchvision.__version__)},
        )

    def save(self, kind: str) -> Path:
        """Write ``<kind>.pt`` atomically: a killed worker leaves the previous file intact.

        Only rank 0 of a distributed run writes; the others hold the same weights.
        """
        path = self.directory / f"{kind}.pt"
        if self.rank != 0:
            return path
        return checkpoints.save(self.checkpoint(kind), path)


def _make_run(
    config: TrainConfig,
    class_names: Sequence[str],
    preprocessing: dict[str, Any],
    device: torch.device,
    directory: Path,
    sync_batchnorm: bool = False,
) -> _Run:
    seed_everything(config.seed)
    rank, world_size = distributed.rank_and_world()
    model = build_model(config, preprocessing["channels"]).to(device)
    if world_size > 1 and sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(config, model)
    if world_size > 1:  # after build_optimizer: DDP synchronises only the parameters left trainable
        model = distributed.wrap(model, build_criterion(config.multi_label), device)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    return _Run(
        config,
        list(class_names),
        preprocessing,
        model,
        optimizer,
        build_scheduler(config, optimizer),
        scaler,
        device,
        directory,
        rank=rank,
        world_size=world_size,
    )


def _restore(run: _Run, path: str | os.PathLike) -> None:
    ckpt = checkpoints.load(path)
    if ckpt.model_name != run.config.model_name or ckpt.class_names != run.class_names:
        raise InvalidInput(
            f"{str(path)!r} is a run of {ckpt.model_name!r} on other classes; it cannot be "
            "resumed with this configuration",
            field="resume_from",
        )
    _unwrap(run.model).load_state_dict(ckpt.state_dict)
    run.optimizer.load_state_dict(ckpt.optimizer)
    if run.scheduler is not None and ckpt.scheduler is not None:
        run.scheduler.load_state_dict(ckpt.scheduler)
    if ckpt.scaler is not None and run.scaler.is_enabled():
        run.scaler.load_state_dict(ckpt.scaler)
    run.epoch, run.history, run.best = ckpt.epoch, ckpt.history, ckpt.best
    run.bad_epochs = ckpt.epochs_without_improvement
    best = Path(path).with_name("best.pt")
    target = run.directory / "best.pt"
    if run.rank == 0 and not target.exists() and best.is_file():
        # Through a temporary name: the other ranks of a distributed run may be reading meanwhile.
        tmp = target.with_name(f".best.pt.{os.getpid()}.tmp")
        shutil.copyfile(best, tmp)
        os.replace(tmp, target)
    source = best if best.is_file() else target  # the source is never being written, the copy may be
    if source.is_file():
        run.evaluation = checkpoints.load(source).evaluation


def _loader(
    dataset: Dataset,
    config: TrainConfig,
    device: torch.device,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> DataLoader:
    rank, world_size = distributed.rank_and_world()
    sampler = None
    if world_size > 1 and shuffle:
        sampler = distributed.train_sampler(dataset, config.seed)
    elif world_size > 1:
        dataset = distributed.shard(dataset)
    return DataLoader(
        dataset,
        # batch_size is the run's effective batch: each of the processes takes its share.
        batch_size=config.batch_size // world_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )


def _epoch_record(run: _Run, train: Record, test: Record, event: str | None = None) -> Record:
    record = {
        "epoch": run.epoch + 1,
        "epochs": run.config.epochs,
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "lr": run.optimizer.param_groups[0]["lr"],
        "epoch_seconds": train["seconds"] + test.get("seconds", 0.0),
        "train_samples_per_s": train["samples"] / max(train["seconds"], 1e-9),
    }
    if run.config.multi_label:
        record.update(
            {"test_map": test["map"], "test_micro_f1": test["micro_f1"], "test_macro_f1": test["macro_f1"]}
        )
    if event is not None:
        record["event"] = event
    score = record[run.monitor]
    # A diverged epoch is never the best: its weights are gone (the run went back to the fallback's).
    record["improved"] = event is None and (not run.best or score > run.best["score"])
    if record["improved"]:
        run.best = {"epoch": record["epoch"], "score": score, "monitor": run.monitor,
                    "accuracy": run.best.get("accuracy", -1.0)}
    if event is None:
        run.best["accuracy"] = max(run.best.get("accuracy", -1.0), record["test_accuracy"])
    record.update(
        {  # before any good epoch (the first one diverged), zeros
            "best_accuracy": run.best.get("accuracy", 0.0),
            "best_epoch": run.best.get("epoch", 0),
            "best_score": run.best.get("score", 0.0),
            "monitor": run.monitor,
        }
    )
    return record


def _run_epoch(
    run: _Run,
    loaders: tuple[DataLoader, DataLoader],
    generator: torch.Generator,
    should_stop,
    on_batch,
    log_every: int,
) -> Record:
    config, criterion = run.config, build_criterion(run.config.multi_label)
    # Reseeding from (seed, epoch) makes a resumed run shuffle, drop out and augment as an unbroken one;
    # each rank gets its own stream so that ranks do not augment their shards alike.
    torch.manual_seed(config.seed + run.epoch + 7919 * run.rank)
    generator.manual_seed(config.seed + run.epoch)
    distributed.set_epoch(loaders[0], run.epoch)
    if run.fallback is None:
        run.fallback = _snapshot(run)
    train = train_one_epoch(
        run.model,
        loaders[0],
        criterion,
        run.optimizer,
        run.device,
        run.scaler,
        config.multi_label,
        should_stop,
        on_batch,
        log_every,
        config.clip_grad_norm,
        config.warmup_steps if run.warm_up else 0,
        getattr(loaders[0].dataset, "augmentation", None),
        torch.Generator().manual_seed(config.seed + run.epoch + 7919 * run.rank),
    )
    run.warm_up = False
    started = time.perf_counter()
    test = evaluate(_unwrap(run.model), loaders[1], criterion, run.device, config.multi_label)
    test["seconds"] = time.perf_counter() - started
    if run.world_size > 1:
        train, test = _whole_dataset_figures(train, test, config.multi_label)
    event = _recover_if_diverged(run, train, test)
    record = _close_epoch(run, train, test, event)
    if record["improved"]:
        run.fallback = _snapshot(run)
        run.save("best")
    run.save("last")
    return record


# A training loss this far above the lowest of the run (or not a number) means the run diverged.
DIVERGED_FACTOR, DIVERGED_MARGIN, RECOVERY_LR_FACTOR = 2.0, 0.5, 0.1
# So does a test loss this many times the starting weights' (the weights died), or a test accuracy (percent) that
# fell this many points and whose error more than doubled since the best epoch (the weights jump about).
DEAD_FACTOR, FALL_POINTS = 10.0, 10.0


def _snapshot(run: _Run) -> dict[str, Any]:
    return {"epoch": run.epoch, "model": copy.deepcopy(_unwrap(run.model).state_dict()),
            "optimizer": copy.deepcopy(run.optimizer.state_dict())}


def _jumped(value: float, seen: list[float]) -> tuple[bool, float | None]:
    """Whether ``value`` is not a number or far above the lowest finite value of ``seen``; and that lowest."""
    lowest = min((x for x in seen if math.isfinite(x)), default=None)
    if math.isfinite(value) and (lowest is None or value <= max(DIVERGED_FACTOR * lowest, lowest + DIVERGED_MARGIN)):
        return False, lowest
    return True, lowest


def _recover_if_diverged(run: _Run, train: Record, test: Record) -> str | None:
    """When the epoch says the run diverged, go back to the best epoch's weights (or the start's), lower every
    learning rate tenfold, warm up again, and return what happened (else None).

    Diverged: the training loss is not a number, or far above the lowest of the run so far (counting the loss of
    the run's first batch before its first update, what the starting weights score); or the test loss is not a
    number or :data:`DEAD_FACTOR` times the starting weights'; or the test accuracy fell :data:`FALL_POINTS` points
    and more than doubled its error since the best epoch. The test side is how a rate that is too high shows when
    the training loss does not blow up: one wild epoch kills the weights (60x the tuned rate), or they jump about
    (10x). A test loss that jumps while the accuracy holds (a network with batch norm early on, its running
    statistics unsettled) is no sign: lowering the rate there cost convnetj 4 points on photo patches.

    Every rank of a distributed run decides alike: the epoch's losses are the whole dataset's, and a rank's own
    first batch is left out there.
    """
    # The first batch's loss before the run's first update: what the starting weights score (one batch, so left
    # out across ranks, where every rank must decide alike). Later epochs' first batches are lucky or unlucky
    # draws of one batch under trained weights: no reference.
    if run.starting_loss is None and run.world_size == 1:
        run.starting_loss = train["first_loss"]
    untrained = [run.starting_loss] if run.starting_loss is not None else []
    diverged, lowest = _jumped(train["loss"], [r["train_loss"] for r in run.history] + untrained)
    said = f"training loss {train['loss']:.3g}" + (f" (lowest so far {lowest:.3g})" if lowest is not None else "")
    if not diverged and not math.isfinite(test["loss"]):
        diverged, said = True, f"test loss {test['loss']}"
    if not diverged and untrained and test["loss"] > DEAD_FACTOR * untrained[0]:
        diverged, said = True, (f"test loss {test['loss']:.3g}, over {DEAD_FACTOR:g}x the starting weights' "
                                f"{untrained[0]:.3g}")
    score, best = test["accuracy"], run.best.get("accuracy", -1.0)
    if not diverged and best >= 0 and best - score >= FALL_POINTS and 100 - score > 2 * (100 - best):
        diverged, said = True, f"test accuracy fell to {score:.1f} % from {best:.1f} %"
    if not diverged:
        return None
    rates = [group["lr"] * RECOVERY_LR_FACTOR for group in run.optimizer.param_groups]
    _unwrap(run.model).load_state_dict(run.fallback["model"])
    run.optimizer.load_state_dict(run.fallback["optimizer"])
    for group, rate in zip(run.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    run.warm_up = True
    where = f"epoch {run.fallback['epoch']}'s weights" if run.fallback["epoch"] else "the starting weights"
    return f"diverged: {said}; went back to {where} and lowered the learning rate to {rates[0]:.3g}"


def _after_epoch(run: _Run, record: Record, on_epoch: Callable[[Record], None] | None,
                 should_stop: Callable[[], bool] | None) -> bool:
    """Report the epoch; True when patience ran out. Raises Cancelled when a stop was asked for."""
    if on_epoch is not None:
        on_epoch(dict(record))
    if run.config.patience is not None and run.bad_epochs >= run.config.patience:
        return True
    if run.epoch < run.config.epochs and should_stop is not None and should_stop():
        raise Cancelled(f"stopped after epoch {run.epoch}; resume from {run.directory / 'last.pt'}")
    return False


def _close_epoch(run: _Run, train: Record, test: Record, event: str | None = None) -> Record:
    """The epoch's record; the scheduler, patience, history and best evaluation moved on by it."""
    record = _epoch_record(run, train, test, event)
    if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.scheduler.step(record[run.monitor])
    elif run.scheduler is not None:
        run.scheduler.step()
    run.bad_epochs = 0 if record["improved"] else run.bad_epochs + 1
    run.epoch += 1
    run.history.append(record)
    if record["improved"]:
        run.evaluation = final_evaluation(*test["outputs"], run.config.multi_label, run.class_names, run.item_id)
    return record


def _whole_dataset_figures(train: Record, test: Record, multi_label: bool) -> tuple[Record, Record]:
    """One epoch's figures over every rank's share, identical on every rank."""
    train = distributed.reduce_train_figures(train)
    logits, targets = test["outputs"]
    loss_sum, logits, targets = distributed.gather_outputs(test["loss"] * len(targets), logits, targets)
    gathered = outputs_record(logits, targets, loss_sum, multi_label)
    gathered["seconds"] = distributed.slowest(test["seconds"])
    return train, gathered


def _check_inputs(
    config: TrainConfig, train_ds: Dataset, test_ds: Dataset, class_names: Sequence[str]
) -> None:
    if len(class_names) != config.num_classes:
        raise InvalidInput(
            f"num_classes is {config.num_classes} but the data has {len(class_names)} classes",
            field="num_classes",
        )
    if getattr(train_ds, "multi_label", config.multi_label) != config.multi_label:
        raise InvalidInput(
            f"multi_label is {config.multi_label} but the data is "
            f"{'multi' if not config.multi_label else 'single'}-label",
            field="multi_label",
        )
    if len(train_ds) == 0 or len(test_ds) == 0:
        raise InvalidInput("the training and the test set must both hold images", field="dataset")
    assert getattr(train_ds, "preprocessing", config.preprocessing()) == config.preprocessing(), (
        "build the datasets with config.preprocessing()"
    )


def fit(
    config: TrainConfig,
    train_ds: Dataset,
    test_ds: Dataset,
    class_names: Sequence[str],
    checkpoint_dir: str | os.PathLike,
    on_epoch: Callable[[Record], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume_from: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    *,
    start_epoch: int | None = None,
    on_batch: Callable[[Record], None] | None = None,
    log_every: int = 20,
    sync_batchnorm: bool = False,
) -> FitResult:
    """Train ``config.model_name`` on ``train_ds``, evaluating on ``test_ds`` after every epoch.

    Args:
        config: the run's configuration.
        train_ds: training data, built with ``config.preprocessing()``.
        test_ds: test (validation) data; it chooses the best checkpoint.
        class_names: names of the classes (labels), in output order.
        checkpoint_dir: receives ``best.pt`` and ``last.pt``.
        on_epoch: called after each epoch with ``{epoch (1-based), epochs, train_loss, train_accuracy,
            test_loss, test_accuracy, best_accuracy, best_epoch, best_score, monitor, improved, lr,
            epoch_seconds, train_samples_per_s}`` plus, multi-label, ``test_map``, ``test_micro_f1``,
            ``test_macro_f1``; the same dicts make up ``FitResult.history``.
        should_stop: polled between epochs and every ``log_every`` batches.
        resume_from: a ``last.pt`` (or ``best.pt``) to continue from, at its next epoch, with its history.
        device: torch device; default CUDA when available, else CPU.
        start_epoch: continue counting from this epoch (0-based) instead of the checkpoint's.
        on_batch: called every ``log_every`` batches with ``{batch, batches, loss}``.
        log_every: batches between ``on_batch`` calls and ``should_stop`` polls.
        sync_batchnorm: in a distributed run (see :mod:`engine.launch`, which launches one),
            compute batch-norm statistics over every rank's batch.

    Raises:
        InvalidInput: data and configuration disagree (field named), or the resume checkpoint does not fit.
        Cancelled: ``should_stop()`` turned true; ``last.pt`` holds the last completed epoch.
    """
    _check_inputs(config, train_ds, test_ds, class_names)
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    run = _make_run(
        config, class_names, config.preprocessing(), resolve_device(device), directory, sync_batchnorm
    )
    run.item_id = getattr(test_ds, "item_id", None)
    if resume_from is not None:
        _restore(run, resume_from)
    else:
        run.save("last")  # so that even a run killed in its first epoch can be resumed
    run.epoch = run.epoch if start_epoch is None else start_epoch
    run.warm_up = run.epoch == 0  # a resumed run goes on as the unbroken one would have
    generator = torch.Generator()
    loaders = (
        _loader(train_ds, config, run.device, True, generator),
        _loader(test_ds, config, run.device, False),
    )
    stopped_early = False
    while run.epoch < config.epochs:
        record = _run_epoch(run, loaders, generator, should_stop, on_batch, log_every)
        stopped_early = _after_epoch(run, record, on_epoch, should_stop)
        if stopped_early:
            break
    return FitResult(
        directory / "best.pt",
        directory / "last.pt",
        run.best.get("epoch", 0),
        run.best.get("score", float("nan")),
        run.monitor,
        run.epoch,
        stopped_early,
        list(run.history),
        run.evaluation,
        list(class_names),
    )


# -------------------------------------------------------------------------- head-only transfer learning


def fit_head(
    config: TrainConfig,
    train_ds: Dataset,
    test_ds: Dataset,
    class_names: Sequence[str],
    checkpoint_dir: str | os.PathLike,
    feature_cache: str | os.PathLike,
    on_epoch: Callable[[Record], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume_from: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    *,
    start_epoch: int | None = None,
    on_batch: Callable[[Record], None] | None = None,
    log_every: int = 20,
) -> FitResult:
    """Train only the classifier of a pretrained model, on backbone features cached in ``feature_cache``.

    The backbone runs once per dataset, preprocessing and weights (:mod:`engine.features`); every epoch
    after that touches only the classifier, so a run takes seconds on a CPU. With ``augment`` the
    training features are ``augment_copies`` augmented passes. Checkpoints, records and the result are
    those of :func:`fit`: the saved model is the whole network, and inference never knows the difference.

    Args:
        on_progress: ``(images done, images total)`` while features are computed.
        Other arguments: as :func:`fit` (``config.head_only`` must be set; ``on_batch`` counts batches
            of features).
    """
    assert config.head_only, "fit_head trains head-only configurations"
    _check_inputs(config, train_ds, test_ds, class_names)
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    run = _make_run(config, class_names, config.preprocessing(), resolve_device(device), directory, None)
    run.item_id = getattr(test_ds, "item_id", None)
    features = _head_features(run, train_ds, test_ds, feature_cache, on_progress, should_stop)
    if resume_from is not None:
        _restore(run, resume_from)
    else:
        run.save("last")
    run.epoch = run.epoch if start_epoch is None else start_epoch
    generator = torch.Generator()
    loaders = (
        DataLoader(features[0], batch_size=config.batch_size, shuffle=True, generator=generator),
        DataLoader(features[1], batch_size=max(config.batch_size, 256)),
    )
    stopped_early, best = False, None
    try:
        while run.epoch < config.epochs:
            record = _run_head_epoch(run, loaders, generator, should_stop, on_batch, log_every)
            # Epochs of a head take milliseconds: checkpoints are written when the run ends, not per epoch.
            best = copy.deepcopy(run.checkpoint("best")) if record["improved"] else best
            stopped_early = _after_epoch(run, record, on_epoch, should_stop)
            if stopped_early:
                break
    finally:
        if best is not None:
            checkpoints.save(best, directory / "best.pt")
        run.save("last")
    return FitResult(
        directory / "best.pt", directory / "last.pt", run.best.get("epoch", 0), run.best.get("score", float("nan")),
        run.monitor, run.epoch, stopped_early, list(run.history), run.evaluation, list(class_names),
    )


def _head_features(
    run: _Run, train_ds: Dataset, test_ds: Dataset, cache: str | os.PathLike, on_progress, should_stop
) -> tuple[torch.utils.data.TensorDataset, torch.utils.data.TensorDataset]:
    # Imported here: engine.features imports the model registry, as this module does, and nothing else.
    from engine.features import cached_features

    config = run.config
    copies = config.augment_copies if config.preprocessing()["augment"] else 1
    sets = []
    for dataset, n in ((train_ds, copies), (test_ds, 1)):
        found = cached_features(
            config.model_name, run.model, dataset, cache, n, config.seed, max(config.batch_size, 32),
            run.device, on_progress, should_stop,
        )
        targets = torch.as_tensor(found.targets)
        targets = targets.float() if config.multi_label else targets.long()
        sets.append(torch.utils.data.TensorDataset(torch.from_numpy(found.features), targets))
    return sets[0], sets[1]


def _run_head_epoch(
    run: _Run, loaders: tuple[DataLoader, DataLoader], generator: torch.Generator, should_stop, on_batch, log_every
) -> Record:
    config, criterion, head = run.config, build_criterion(run.config.multi_label), run.model.get_classifier()
    torch.manual_seed(config.seed + run.epoch)
    generator.manual_seed(config.seed + run.epoch)
    train = train_one_epoch(
        head, loaders[0], criterion, run.optimizer, run.device, None, config.multi_label, should_stop,
        on_batch, log_every,
    )
    started = time.perf_counter()
    test = evaluate(head, loaders[1], criterion, run.device, config.multi_label)
    test["seconds"] = time.perf_counter() - started
    return _close_epoch(run, train, test)

