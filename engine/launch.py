"""One training run over several processes with ``torch.distributed`` (DistributedDataParallel).

:func:`fit_distributed` is :func:`engine.training.fit` for ``world_size`` processes on this machine: one
process per GPU with NCCL when the machine has that many CUDA devices, otherwise CPU processes with gloo.
The calling process is the launcher: it hosts the rendezvous store, spawns the ranks, relays rank 0's
epochs and batches to the callbacks, turns ``should_stop()`` into a stop flag every rank agrees on, and
stops every rank as soon as one of them dies.

Semantics that keep runs comparable with a single process:

* ``batch_size`` is the effective batch: each rank takes ``batch_size // world_size`` samples per step,
  and DDP averages the gradients, so a step sees the same number of samples at the same learning rate.
* The training split goes through a seeded ``DistributedSampler`` (``set_epoch`` every epoch); the test
  split is cut into disjoint shards whose outputs are gathered, so the epoch's figures are the whole
  test set's, exactly as one process computes them.
* Only rank 0 writes checkpoints; they hold the unwrapped model, so ``last.pt`` resumes with any
  number of processes.

The helpers that ``engine.training`` calls inside each rank (``rank_and_world``, ``wrap``, ``shard``, ...)
live in :mod:`engine.distributed`; this module imports both, so neither imports the other back.
"""

from __future__ import annotations

import ctypes
import os
import queue as queue_module
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from engine.distributed import AgreedStop
from engine.exceptions import Cancelled, InvalidInput, RankFailed
from engine.run_config import Rendezvous, check_world_size
from engine.training import fit

__all__ = ["fit_distributed", "plan_devices"]

DEFAULT_TIMEOUT_S = 60.0
STOP_POLL_S = 0.5  # how often the launcher asks should_stop() (it may cost a Redis round trip)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


# ------------------------------------------------------------------------------------ the launcher


@dataclass(frozen=True)
class _Plan:
    """What every rank needs to join the group (plain, picklable values)."""

    world_size: int  # processes on this machine
    port: int
    backend: str
    devices: tuple[str, ...]
    timeout_s: float
    threads: int
    parent_pid: int
    host: str = "127.0.0.1"  # where the run's store listens
    rank_offset: int = 0  # this machine's first global rank
    global_world: int = 0  # processes on every machine (0: world_size)


def plan_devices(
    world_size: int, device: str | torch.device | None, device_ids: Sequence[int] | None
) -> tuple[str, tuple[str, ...]]:
    """``(backend, one device per rank)``: NCCL over distinct GPUs when there are enough, else gloo on CPUs.

    Raises:
        InvalidInput: more processes than this machine has GPUs (asked for CUDA) or CPU cores.
    """
    wants_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if wants_cuda:
        ids = list(device_ids) if device_ids else list(range(torch.cuda.device_count()))
        if world_size > len(ids):
            raise InvalidInput(f"world_size {world_size} asks for more GPUs than this worker has ({len(ids)})",
                               "world_size")
        return "nccl", tuple(f"cuda:{i}" for i in ids[:world_size])
    cores = os.cpu_count() or 1
    if world_size > cores:
        raise InvalidInput(f"world_size {world_size} asks for more processes than this worker has cores "
                           f"({cores})", "world_size")
    return "gloo", ("cpu",) * world_size


def fit_distributed(
    world_size: int,
    config,
    train_ds: Dataset,
    test_ds: Dataset,
    class_names: Sequence[str],
    checkpoint_dir: str | os.PathLike,
    on_epoch: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume_from: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    *,
    device_ids: Sequence[int] | None = None,
    start_epoch: int | None = None,
    on_batch: Callable[[dict], None] | None = None,
    log_every: int = 20,
    sync_batchnorm: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    rendezvous: Rendezvous | None = None,
):
    """:func:`engine.training.fit` over ``world_size`` processes; the arguments mean the same.

    ``world_size == 1`` runs ``fit`` in this process. Otherwise the datasets are pickled to each rank
    (they must be picklable: the project's datasets are). The callbacks run in this process, with rank 0's
    records, which are the whole dataset's figures.

    Args:
        device_ids: the CUDA devices to use, one per rank (default: the first ``world_size``).
        sync_batchnorm: synchronise batch-norm statistics across ranks.
        timeout_s: how long a collective waits for a missing rank before the run fails.
        rendezvous: this machine's part of a run over several machines; ``world_size`` is then the
            processes of this machine, and the result is None on every machine but machine 0.

    Raises:
        InvalidInput: as ``fit``, or a ``world_size`` this machine or ``batch_size`` cannot serve.
        Cancelled: ``should_stop()`` turned true; every rank stopped at the same point.
        RankFailed: a rank died or failed; the others were stopped.
    """
    check_world_size(world_size * (rendezvous.nnodes if rendezvous else 1), config.batch_size)
    kwargs = dict(resume_from=resume_from, start_epoch=start_epoch, log_every=log_every,
                  sync_batchnorm=sync_batchnorm)
    if world_size == 1 and rendezvous is None:
        return fit(config, train_ds, test_ds, class_names, checkpoint_dir, on_epoch, should_stop,
                   device=device if device is not None or not device_ids else f"cuda:{device_ids[0]}",
                   on_batch=on_batch, **kwargs)
    backend, devices = plan_devices(world_size, device, device_ids)
    if sync_batchnorm and backend != "nccl":
        # torch's SyncBatchNorm computes on accelerators only.
        raise InvalidInput("sync_batchnorm needs one GPU per process; this run's processes are on CPUs",
                           "sync_batchnorm")
    store, host, port = _meeting_point(rendezvous, timeout_s)
    node = rendezvous.node_rank if rendezvous else 0
    plan = _Plan(world_size, port, backend, devices, timeout_s, max(1, (os.cpu_count() or 1) // world_size),
                 os.getpid(), host, node * world_size, world_size * (rendezvous.nnodes if rendezvous else 1))
    job = (config, train_ds, test_ds, list(class_names), str(checkpoint_dir), kwargs)
    try:
        return _Launch(plan, job).run(on_epoch, should_stop, on_batch)
    finally:
        del store  # machine 0's store lives as long as its launcher waits for the run


def _meeting_point(rendezvous: Rendezvous | None, timeout_s: float):
    """``(store or None, host, port)``: host the run's store here, or find machine 0's."""
    if rendezvous is not None and rendezvous.node_rank > 0:
        host, port = rendezvous.lookup()
        return None, host, port
    store = dist.TCPStore("0.0.0.0" if rendezvous else "127.0.0.1", 0, None, True,
                          timedelta(seconds=timeout_s), wait_for_workers=False)
    if rendezvous is not None:
        rendezvous.publish(rendezvous.host, store.port)
        return store, rendezvous.host, store.port
    return store, "127.0.0.1", store.port


class _Launch:
    """The spawned ranks of one run, and the launcher's loop that relays and supervises them."""

    def __init__(self, plan: _Plan, job: tuple):
        context = mp.get_context("spawn")  # a fork of a process that already ran torch is not safe
        self.plan, self.queue, self.stop = plan, context.Queue(), context.Event()
        self.procs = [
            context.Process(target=_rank_main, args=(rank, plan, job, self.queue, self.stop), daemon=True,
                            name=f"rank-{rank}")
            for rank in range(plan.world_size)
        ]
        self.epochs_done = 0

    def run(self, on_epoch, should_stop, on_batch):
        try:
            for proc in self.procs:
                proc.start()
            return self._supervise(on_epoch, should_stop, on_batch)
        finally:
            self._end_all()

    def _supervise(self, on_epoch, should_stop, on_batch):
        outcome, polled = None, 0.0
        while True:
            message = self._next_message()
            if message is not None:
                kind, payload = message
                if kind == "epoch":
                    self.epochs_done = payload["epoch"]
                    if on_epoch is not None:
                        on_epoch(payload)
                elif kind == "batch" and on_batch is not None:
                    on_batch(payload)
                elif kind in ("result", "error", "cancelled") and outcome is None:
                    outcome = message
            if should_stop is not None and time.monotonic() - polled > STOP_POLL_S:
                polled = time.monotonic()
                if not self.stop.is_set() and should_stop():
                    self.stop.set()
            if outcome is not None and outcome[0] == "error":
                self._raise_death_first()
            if outcome is not None and outcome[0] != "result":
                return _raise(outcome)
            dead = [(r, p) for r, p in enumerate(self.procs) if p.exitcode not in (None, 0)]
            if dead:
                outcome = outcome or self._drain_outcome()
                self._raise_death_first()
                if outcome is not None and outcome[0] != "result":
                    return _raise(outcome)
                raise RankFailed(self._death_message(*dead[0]))
            if all(p.exitcode == 0 for p in self.procs):
                outcome = outcome or self._drain_outcome()
                if outcome is None:
                    raise RankFailed("every rank exited without a result")
                return outcome[1]

    def _raise_death_first(self) -> None:
        # A rank killed from outside makes its peers fail on a reset connection: name the cause.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for rank, proc in enumerate(self.procs):
                if proc.exitcode is not None and proc.exitcode < 0:
                    raise RankFailed(self._death_message(rank, proc))
            time.sleep(0.05)

    def _next_message(self):
        try:
            return self.queue.get(timeout=0.1)
        except queue_module.Empty:
            return None

    def _drain_outcome(self):
        # A rank's last messages may still be in the pipe when the launcher sees it exit.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            message = self._next_message()
            if message is not None and message[0] in ("result", "error", "cancelled"):
                return message
        return None

    def _death_message(self, rank: int, proc) -> str:
        code = proc.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        return (f"process {rank} of {self.plan.world_size} (pid {proc.pid}) {how} after "
                f"{self.epochs_done} completed epochs; the other processes were stopped. "
                "Resume the run from its last.pt.")

    def _end_all(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        for proc in self.procs:
            if proc.pid is not None:  # a start that failed part-way leaves the later ranks unstarted
                proc.join(timeout=10)
        self.queue.close()


def _raise(outcome):
    kind, payload = outcome
    if kind == "cancelled":
        raise Cancelled(payload)
    rank, name, message, field, trace = payload
    if name == "InvalidInput":
        raise InvalidInput(message, field)
    raise RankFailed(f"{name} in training process {rank}: {message}\n{trace}")


def _die_with_parent(parent_pid: int) -> None:
    # A rank must not outlive its launcher (a cancelled or killed job), and keep writing checkpoints.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def _rank_main(rank: int, plan: _Plan, job: tuple, messages, stop_event) -> None:
    """Entry point of one spawned rank: join the group, run ``fit``, report to the launcher."""
    _die_with_parent(plan.parent_pid)
    torch.set_num_threads(plan.threads)
    device = torch.device(plan.devices[rank])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = dist.TCPStore(plan.host, plan.port, None, False, timedelta(seconds=plan.timeout_s))
    dist.init_process_group(plan.backend, store=store, rank=plan.rank_offset + rank,
                            world_size=plan.global_world or plan.world_size,
                            timeout=timedelta(seconds=plan.timeout_s))
    config, train_ds, test_ds, class_names, directory, kwargs = job
    lead = plan.rank_offset + rank == 0  # the run's rank 0 reports; other machines' first ranks end quietly
    try:
        result = fit(config, train_ds, test_ds, class_names, Path(directory),
                     on_epoch=(lambda r: messages.put(("epoch", r))) if lead else None,
                     should_stop=AgreedStop(stop_event), device=device,
                     on_batch=(lambda b: messages.put(("batch", b))) if lead else None, **kwargs)
        if rank == 0:
            messages.put(("result", result if lead else None))
    except Cancelled as exc:
        if rank == 0:
            messages.put(("cancelled", str(exc)))
    except BaseException as exc:
        messages.put(("error", (rank, type(exc).__name__, str(exc), getattr(exc, "field", None),
                                traceback.format_exc(limit=-8))))
        messages.close()
        messages.join_thread()
        os._exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    messages.close()
    messages.join_thread()
