"""The helpers that ``engine.training`` calls inside each rank of a run over several processes.

A run over several processes (DistributedDataParallel) is launched by :func:`engine.launch.fit_distributed`;
its semantics are described there. Outside a process group these helpers are no-ops.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler, Subset

__all__ = [
    "AgreedStop",
    "DistributedDataParallel",
    "rank_and_world",
]


# ------------------------------------------------------------------------------ inside each rank


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process's group; ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _LossForward(nn.Module):
    """The network and its loss as one forward, so DDP sees models that compute their own loss too."""

    def __init__(self, net: nn.Module, criterion: nn.Module):
        super().__init__()
        self.net, self.criterion = net, criterion

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hook = getattr(self.net, "compute_loss", None)
        if hook is not None:
            return hook(images, targets)
        logits = self.net(images)
        return self.criterion(logits, targets), logits


def wrap(model: nn.Module, criterion: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``model`` (already on ``device``) and its loss under DistributedDataParallel."""
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(_LossForward(model, criterion), device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The network itself, without its DDP wrapper (what checkpoints hold)."""
    if isinstance(model, DistributedDataParallel):
        return model.module.net
    return model


def train_sampler(dataset: Dataset, seed: int) -> DistributedSampler:
    """This rank's seeded share of the training split (reshuffled by :func:`set_epoch`)."""
    return DistributedSampler(dataset, shuffle=True, seed=seed)


def shard(dataset: Dataset) -> Dataset:
    """This rank's disjoint slice of an evaluation split (no padding, so nothing is counted twice)."""
    rank, world_size = rank_and_world()
    return Subset(dataset, range(rank, len(dataset), world_size))


def set_epoch(loader, epoch: int) -> None:
    """Reshuffle a distributed loader for ``epoch`` (no-op for other loaders)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)


def _device_of_group() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_train_figures(train: dict[str, Any]) -> dict[str, Any]:
    """A training epoch's loss and accuracy over every rank's samples (weighted by their counts)."""
    n = float(train["samples"])
    sums = torch.tensor([train["loss"] * n, train["accuracy"] * n, n], dtype=torch.float64,
                        device=_device_of_group())
    dist.all_reduce(sums)
    total = max(sums[2].item(), 1.0)
    return {**train, "loss": sums[0].item() / total, "accuracy": sums[1].item() / total,
            "samples": int(sums[2].item()), "seconds": slowest(train["seconds"])}


def slowest(seconds: float) -> float:
    """The longest of the ranks' durations (the epoch lasts as long as its slowest rank)."""
    value = torch.tensor([seconds], dtype=torch.float64, device=_device_of_group())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item()


def gather_outputs(
    loss_sum: float, logits: torch.Tensor, targets: torch.Tensor
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Every rank's evaluation outputs, in the evaluation set's order (each rank held every world_size-th item,
    from its rank on: :func:`shard`)."""
    world_size = dist.get_world_size()
    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, (loss_sum, logits.cpu(), targets.cpu()))
    logits, targets = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
    # Position k of the concatenation holds item order[k]; put each item back at its place.
    order = torch.cat([torch.arange(rank, len(targets), world_size) for rank in range(world_size)])
    place = torch.empty_like(order)
    place[order] = torch.arange(len(order))
    return sum(p[0] for p in parts), logits[place], targets[place]


class AgreedStop:
    """``should_stop`` for a rank: true on every rank at the same poll once the launcher set the event."""

    def __init__(self, event):
        self.event = event

    def __call__(self) -> bool:
        flag = torch.tensor([1.0 if self.event.is_set() else 0.0], device=_device_of_group())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
