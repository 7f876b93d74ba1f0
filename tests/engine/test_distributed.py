"""One run over two processes (DDP on gloo, CPU) on real digits: same accuracy as one process, a killed
rank fails the run quickly, cancel stops every rank, and ``last.pt`` resumes with another process count."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from engine.datasets import ArrayDataset
from engine.exceptions import Cancelled, InvalidInput, RankFailed
from engine.launch import fit_distributed
from engine.run_config import MAX_PROCESSES, Rendezvous, check_world_size
from engine.training import TrainConfig, fit

pytestmark = [pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two processes need two cores"),
              pytest.mark.usefixtures("processes")]
torch.set_num_threads(1)
CLASSES = [str(d) for d in range(10)]
# Two runs with one seed differ only in the order samples meet and in float summation order.
ACCURACY_MARGIN = 3.0


def config(**changes) -> TrainConfig:
    base = dict(model_name="convnetb", num_classes=10, epochs=3, batch_size=64, learning_rate=0.05,
                image_size=16, grey=True, seed=3)
    return TrainConfig(**{**base, **changes})


def digits(cfg: TrainConfig, n_train: int = 1400, n_test: int | None = None):
    data = load_digits()
    images = (data.images * (255 / 16)).round().astype(np.uint8)
    end = None if n_test is None else n_train + n_test
    pre = cfg.preprocessing()
    return (ArrayDataset(images[:n_train], data.target[:n_train], pre, train=True),
            ArrayDataset(images[n_train:end], data.target[n_train:end], pre))


def ranks_alive() -> list:
    return [p for p in multiprocessing.active_children() if p.name.startswith("rank-")]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    cfg = config()
    train, test = digits(cfg)
    records = []
    directory = tmp_path_factory.mktemp("ddp")
    result = fit_distributed(2, cfg, train, test, CLASSES, directory, on_epoch=records.append)
    return cfg, test, records, result, directory


def test_two_processes_reach_the_accuracy_of_one(two_process_run, tmp_path):
    cfg, test, records, result, _ = two_process_run
    single = fit(cfg, *digits(cfg), CLASSES, tmp_path)
    assert single.best_score >= 85.0
    assert abs(result.best_score - single.best_score) <= ACCURACY_MARGIN, (result.best_score, single.best_score)
    assert [r["epoch"] for r in records] == [1, 2, 3] and records == result.history
    # The figures are the whole test set's, not one rank's half.
    matrix = np.array(result.evaluation["confusion_matrix"])
    assert matrix.sum() == len(test)
    assert 100 * np.trace(matrix) / len(test) == pytest.approx(result.best_score)
    assert not ranks_alive()


def test_only_rank_zero_writes_and_checkpoints_hold_the_plain_model(two_process_run):
    _, _, _, result, directory = two_process_run
    assert sorted(p.name for p in directory.iterdir()) == ["best.pt", "last.pt"]
    ckpt = torch.load(result.last_path, weights_only=True)
    assert ckpt["epoch"] == 3 and len(ckpt["history"]) == 3
    assert not any(k.startswith(("module.", "net.")) for k in ckpt["state_dict"])


def test_last_of_two_processes_resumes_with_one(two_process_run, tmp_path):
    cfg, _, records, result, _ = two_process_run
    longer = config(epochs=4)
    resumed = fit_distributed(1, longer, *digits(longer), CLASSES, tmp_path, resume_from=result.last_path)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[:3] == records
    assert resumed.history[-1]["test_accuracy"] >= 85.0


def test_a_killed_rank_fails_the_run_with_a_clear_error_quickly(tmp_path):
    cfg = config(epochs=50, batch_size=32)
    killed = {}

    def kill_rank_one(record):
        if record["epoch"] == 1:
            victim = next(p for p in ranks_alive() if p.name == "rank-1")
            os.kill(victim.pid, signal.SIGKILL)
            killed["at"] = time.monotonic()

    with pytest.raises(RankFailed, match=r"process 1 of 2 .* killed by SIGKILL after 1 completed epochs"):
        fit_distributed(2, cfg, *digits(cfg, 400, 200), CLASSES, tmp_path, on_epoch=kill_rank_one,
                        timeout_s=30)
    assert time.monotonic() - killed["at"] < 30
    assert not ranks_alive(), "rank 0 is stopped too, not left waiting for its peer"
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] >= 1


def test_cancel_stops_every_rank_after_the_epoch_it_lands_in(tmp_path):
    cfg = config(epochs=50, batch_size=32)
    records = []
    with pytest.raises(Cancelled):
        fit_distributed(2, cfg, *digits(cfg, 400, 200), CLASSES, tmp_path, on_epoch=records.append,
                        should_stop=lambda: bool(records), log_every=2)
    assert not ranks_alive()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["epoch"]
    # Asked after the first reported epoch; the epochs reach this process through a queue, so on a busy or
    # an idle machine the ranks may finish one or two more before they agree to stop, never the whole run.
    assert 1 <= saved < 10 and saved == len(records)


@pytest.mark.parametrize("world_size", [0, MAX_PROCESSES + 1, True, 2.0])
def test_a_process_count_out_of_bounds_is_refused_naming_the_field(world_size):
    with pytest.raises(InvalidInput) as info:
        check_world_size(world_size, 64)
    assert info.value.field == "world_size"


def test_a_batch_the_processes_cannot_share_evenly_is_refused():
    with pytest.raises(InvalidInput, match="multiple of world_size") as info:
        check_world_size(2, 33)
    assert info.value.field == "batch_size"


def test_more_processes_than_cores_is_refused(tmp_path):
    cfg = config(batch_size=(os.cpu_count() + 1) * 2)
    with pytest.raises(InvalidInput, match="cores") as info:
        fit_distributed(os.cpu_count() + 1, cfg, *digits(cfg, 100, 50), CLASSES, tmp_path, device="cpu")
    assert info.value.field == "world_size"


def test_sync_batchnorm_on_cpu_processes_is_refused_naming_the_field(tmp_path):
    cfg = config()
    with pytest.raises(InvalidInput, match="GPU") as info:
        fit_distributed(2, cfg, *digits(cfg, 100, 50), CLASSES, tmp_path, device="cpu", sync_batchnorm=True)
    assert info.value.field == "sync_batchnorm"


def _publish_to(path: Path):
    def publish(host: str, port: int) -> None:
        path.with_suffix(".tmp").write_text(f"{host} {port}")
        path.with_suffix(".tmp").replace(path)
    return publish


def _lookup_in(path: Path):
    def lookup() -> tuple[str, int]:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert time.monotonic() < deadline, "machine 0 never published its address"
            time.sleep(0.1)
        host, port = path.read_text().split()
        return host, int(port)
    return lookup


def _second_machine(address: str, directory: str) -> None:
    """Machine 1 of a two-machine run, in a process of its own (as it would be on another host)."""
    cfg = config(epochs=2)
    result = fit_distributed(1, cfg, *digits(cfg, 600, 200), CLASSES, directory,
                             rendezvous=Rendezvous(2, 1, lookup=_lookup_in(Path(address))))
    assert result is None


def test_two_launchers_meet_through_a_published_address_as_two_machines_would(tmp_path):
    address = tmp_path / "address"
    other = multiprocessing.get_context("spawn").Process(
        target=_second_machine, args=(str(address), str(tmp_path / "machine1")))
    other.start()
    try:
        cfg = config(epochs=2)
        train, test = digits(cfg, 600, 200)
        result = fit_distributed(1, cfg, train, test, CLASSES, tmp_path / "machine0",
                                 rendezvous=Rendezvous(2, 0, publish=_publish_to(address)))
        other.join(60)
    finally:
        if other.is_alive():
            other.kill()
    assert other.exitcode == 0
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert np.array(result.evaluation["confusion_matrix"]).sum() == len(test), "both machines' shards"
    assert sorted(p.name for p in (tmp_path / "machine0").iterdir()) == ["best.pt", "last.pt"]
    assert not any((tmp_path / "machine1").glob("*.pt")), "only the run's rank 0 writes"
