"""The learning-rate range test (L. Smith, "Cyclical Learning Rates", 2017; fastai's ``lr_find``): train a copy
of the run's model for a few dozen batches while the rate grows exponentially, watch the smoothed loss, and pick
the rate a decade below the one where the loss was lowest, before it blows up.

The run itself starts afterwards from its own fresh weights: the test never touches them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from engine.datasets import augment_batch
from engine.exceptions import Cancelled, InvalidInput
from engine.run_config import AUTO_RATE_NEEDS_A_NETWORK, MAX_LEARNING_RATE, TrainConfig
from engine.training import (
    build_criterion,
    build_model,
    build_optimizer,
    optimizer_step,
    resolve_device,
    seed_everything,
)

START_LR, END_LR = 1e-6, 1.0
MAX_STEPS = 100
SMOOTHING = 0.9  # of the loss's moving average (bias-corrected)
BLOWN_UP = 4.0  # the test stops once the smoothed loss is this many times its lowest
# The choice: a decade below the rate at the lowest loss, where the loss still falls steadily.
BELOW_THE_VALLEY = 10.0


def find_learning_rate(
    config: TrainConfig,
    train_ds: Dataset,
    device: str | torch.device | None = None,
    steps: int = MAX_STEPS,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the range test for ``config`` on ``train_ds`` and return the curve and the chosen rate.

    The rate rises from ``START_LR`` to ``END_LR`` over ``steps`` batches (cycling through the data when it has
    fewer), with the run's optimizer, augmentation, gradient clipping and layer groups (a fine-tune's pretrained
    layers keep their ratio to the head's rate). The test ends early once the loss diverges.

    Returns:
        ``{"lrs", "losses"}`` (the smoothed loss at each tested rate), ``"chosen"`` (the rate the run should
        use), ``"lowest_at"`` (the rate of the lowest loss) and ``"steps"`` (batches run).

    Raises:
        InvalidInput: a head-only run (field ``learning_rate``), or data without a batch.
        Cancelled: ``should_stop()`` turned true (polled every 10 batches, when ``on_progress`` hears
            ``(batches done, steps)``).
    """
    if config.head_only:
        raise InvalidInput(AUTO_RATE_NEEDS_A_NETWORK, "learning_rate")
    device = resolve_device(device)
    seed_everything(config.seed)
    trial = dataclasses.replace(config, learning_rate=START_LR,
                                lr_pretrained=None if config.lr_pretrained is None
                                else config.lr_pretrained / config.learning_rate * START_LR)
    model = build_model(trial, config.preprocessing()["channels"]).to(device).train()
    optimizer = build_optimizer(trial, model)
    ratios = [group["lr"] / START_LR for group in optimizer.param_groups]
    criterion, augmentation = build_criterion(config.multi_label), getattr(train_ds, "augmentation", None)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")  # as the run's (mixed precision)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_ds, batch_size=config.batch_size, shuffle=True, generator=generator,
                        num_workers=config.num_workers)
    if len(loader) == 0:
        raise InvalidInput("learning_rate: the training set has no batch to test rates on", "learning_rate")
    growth = (END_LR / START_LR) ** (1 / max(steps - 1, 1))
    lrs: list[float] = []
    losses: list[float] = []
    average, lowest = 0.0, math.inf
    batches = _endless(loader)
    for step in range(steps):
        if step % 10 == 0:
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped while finding the learning rate, after {step} batches")
            if on_progress is not None:
                on_progress(step, steps)
        rate = START_LR * growth**step
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = rate * ratio
        images, targets = next(batches)
        images, targets = images.to(device), targets.to(device)
        if augmentation:
            images = augment_batch(images, augmentation, generator)
        loss, _ = optimizer_step(model, images, targets, criterion, optimizer, scaler, config.clip_grad_norm)
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        lrs.append(rate)
        losses.append(smoothed)
        lowest = min(lowest, smoothed)
        if smoothed > BLOWN_UP * lowest:
            break
    return {"lrs": lrs, "losses": losses, "steps": len(lrs), **choose(lrs, losses)}


def choose(lrs: list[float], losses: list[float]) -> dict[str, float]:
    """The rate a decade below the lowest smoothed loss (bounded to the tested range and the run's limits)."""
    if not lrs:
        return {"chosen": START_LR * BELOW_THE_VALLEY, "lowest_at": START_LR}
    lowest_at = lrs[min(range(len(losses)), key=losses.__getitem__)]
    chosen = min(max(lowest_at / BELOW_THE_VALLEY, lrs[0]), MAX_LEARNING_RATE)
    return {"chosen": float(chosen), "lowest_at": float(lowest_at)}


def _endless(loader: DataLoader):
    while True:
        yield from loader
