"""The torch side of a training run: the full checks on the data, and the ``train`` job's work.

Imported by the jobs of ``services.app.training`` when they run on a worker (and by the studies' trials), never
by the web process. The job repeats the request's checks (``services.app.train_request``) on the data it
really reads, and then makes the checks that grow with the data: the duplicate check over both splits and the
quota on the exact number of training images. A run that fails them fails its job with the same message that
a request would have answered.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.dataset_kinds import class_folders, image_files, list_dataset_kinds
from engine.datasets import DatasetBundle, DatasetSpec, build_datasets, inspect_hdf5
from engine.exceptions import Cancelled, InvalidInput, StudioError
from engine.hdf5 import open_hdf5
from engine.launch import fit_distributed
from engine.lr_finder import find_learning_rate
from engine.models.build import download_pretrained
from engine.run_config import Rendezvous, TrainConfig, check_world_size
from engine.training import build_model, fit_head
from services.app.model_catalog import register_model
from services.app.quotas import check_training_size
from services.app.train_request import (
    DataFacts,
    TrainRequest,
    check_against,
    check_separate_folders,
    checkpoint_dir,
    client_words,
    locate,
    read_facts,
    request_params,
    to_train_config,
)
from services.jobs.runtime import JobContext
from services.platform.config import Config
from services.storage.store import Store


@dataclass(frozen=True)
class PreparedRun:
    """A request checked against DATA_DIR: the engine's config and the (lazily read) datasets."""

    request: TrainRequest
    config: TrainConfig
    data: DatasetBundle


def prepare(config: Config, req: TrainRequest) -> PreparedRun:
    """Check ``req`` against its datasets, as built for training, and build the engine's config.

    Raises:
        InvalidInput: as :func:`services.app.train_request.check_request`, judged on the whole data.
    """
    check_world_size(req.world_size * req.nodes, req.batch_size)
    side = read_facts(config, req).image_side  # the request's own look: the size the checks before chose
    data = open_data(config, req, side)
    return PreparedRun(req, check_against(config, req, facts_of(data, side)), data)


def facts_of(data: DatasetBundle, image_side: int | None = None) -> DataFacts:
    """What the built datasets hold, in the terms of the request's checks (``image_side`` as the request's look
    found it)."""
    counts = Counter(int(t) for t in getattr(data.test, "targets", ()))
    by_name = {name: counts.get(i, 0) for i, name in enumerate(data.class_names)}
    return DataFacts(list(data.class_names), data.multi_label, len(data.train), {} if data.multi_label else by_name,
                     image_side)


def checked_run(config: Config, store: Store, params: dict, username: str | None, done: int = 0) -> PreparedRun:
    """The job's first step: the request's checks on the whole data, the run's size on the exact image count,
    the weights file against the model, and the duplicate check over both splits.

    Args:
        done: epochs a resumed run already completed (the quota counts the rest).
    """
    run = prepare(config, TrainRequest.model_validate(request_params(params)))
    check_training_size(config, store, username, run.request.num_epochs - done, len(run.data.train))
    if run.config.weights_path:
        check_weights_fit(run.config)
    check_distinct_splits(config, run.request)
    return run


def check_weights_fit(config: TrainConfig) -> None:
    """Build the run's model from its weights file now, naming the keys that do not fit (field ``weights``)."""
    try:
        build_model(config, config.preprocessing()["channels"])
    except InvalidInput as exc:
        raise InvalidInput(f"weights: {exc}", "weights") from None


def check_distinct_splits(config: Config, req: TrainRequest) -> None:
    """Refuse a test split that is the training split, or that repeats its images (found by content hash).

    Raises:
        InvalidInput: field ``testset_dir`` (or ``hdf5_path``), with the number of shared images.
    """
    if req.dataset == "custom":
        train, test = check_separate_folders(config, req)
        shared, field = _file_hashes(train) & _file_hashes(test), "testset_dir"
    elif req.dataset == "hdf5":
        path = locate(config, req, "hdf5_path")
        sources = inspect_hdf5(path).sources  # X_val stands in for X_test in files made elsewhere
        shared, field = _hdf5_hashes(path, sources["train"]) & _hdf5_hashes(path, sources["test"]), "hdf5_path"
    else:
        return
    if shared:
        raise InvalidInput(f"{field}: {len(shared)} image{'s are' if len(shared) != 1 else ' is'} in both the "
                           "training and the test split; a test image must be one the model never saw", field)


def _file_hashes(root: Path) -> set[str]:
    return {hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
            for folder in class_folders(root) for path in image_files(root / folder)}


def _hdf5_hashes(path: Path, images_name: str, chunk: int = 1024) -> set[str]:
    found: set[str] = set()
    with open_hdf5(path) as f:
        images = f[images_name]
        for start in range(0, len(images), chunk):
            found.update(hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest()
                         for row in images[start:start + chunk])
    return found


def open_data(config: Config, req: TrainRequest, data_side: int | None = None) -> DatasetBundle:
    """The training and test datasets of ``req`` (lazily read), with DATA_DIR in the engine's messages;
    ``data_side`` as for :func:`services.app.train_request.to_train_config`."""
    if req.dataset == "custom":
        check_separate_folders(config, req)
    spec = dataset_spec(config, req)
    # The preprocessing depends on neither the class count nor the label kind, which the data tells.
    preprocessing = to_train_config(req, 2, False, req.weights, data_side).preprocessing()
    try:
        return build_datasets(spec, preprocessing)
    except InvalidInput as exc:  # the engine names absolute paths; clients know paths relative to DATA_DIR
        raise InvalidInput(client_words(config, exc), exc.field) from None
    except StudioError as exc:  # e.g. a hand-edited label set that no longer parses
        raise InvalidInput(client_words(config, exc), "dataset") from None


def dataset_spec(config: Config, req: TrainRequest) -> DatasetSpec:
    """The engine's dataset spec of ``req``: the fields its kind needs, resolved inside DATA_DIR."""
    paths = {field: str(locate(config, req, field)) for field in list_dataset_kinds()[req.dataset]}
    return DatasetSpec(req.dataset, **paths)


# --------------------------------------------------------------------------------------------- job
def train(ctx: JobContext, run: PreparedRun, resume_from: Path | None, rendezvous: Rendezvous | None) -> dict:
    """Train on the worker: per-epoch metrics to ``ctx.epoch``, checkpoints in ``checkpoints/<job_id>/``."""
    directory = checkpoint_dir(ctx.config, ctx.job_id)
    try:
        fetch_pretrained(ctx, run.config)
        run, on_epoch, found = find_rate(ctx, run)
        if run.config.head_only:
            result = fit_head_on_cached_features(ctx, run, directory, on_epoch, ctx.should_stop, resume_from)
        else:
            # Polling the stop flag every few batches lets a cancel land within the platform's grace period.
            # Several processes: this work horse launches them and relays rank 0's epochs to ctx.
            result = fit_distributed(run.request.world_size, run.config, run.data.train, run.data.test,
                                     run.data.class_names, directory, on_epoch=on_epoch,
                                     should_stop=ctx.should_stop, resume_from=resume_from, log_every=5,
                                     sync_batchnorm=run.request.sync_batchnorm, rendezvous=rendezvous)
    except Cancelled:
        register_model(ctx.config, ctx.store, ctx.job_id, ctx.record()["created_by"])
        raise
    row = register_model(ctx.config, ctx.store, ctx.job_id, ctx.record()["created_by"])
    return {**_summary(ctx.config, result, row), **({"lr_finder": found} if found else {})}


def find_rate(ctx: JobContext, run: PreparedRun) -> tuple[PreparedRun, Callable[[dict], None], dict | None]:
    """For ``learning_rate: "auto"``, run the range test (:func:`engine.lr_finder.find_learning_rate`) and return
    the run at the chosen rate, an ``on_epoch`` that puts the curve in the first epoch's record (the job's
    history keeps it), and the curve; otherwise the run as it is, ``ctx.epoch`` and None."""
    req = run.request
    if req.learning_rate != "auto":
        return run, ctx.epoch, None
    found = find_learning_rate(run.config, run.data.train, should_stop=ctx.should_stop, on_progress=lambda done, total:
                               ctx.progress(done, total, unit="batch", stage="finding the learning rate"))
    chosen = req.model_copy(update={"learning_rate": found["chosen"]})
    config = to_train_config(chosen, run.config.num_classes, run.config.multi_label, run.config.weights_path,
                             run.config.image_size)
    first = [found]

    def on_epoch(record: dict) -> None:
        ctx.epoch({**record, "lr_finder": first.pop()} if first else record)

    return PreparedRun(req, config, run.data), on_epoch, found


def train_node(ctx: JobContext, run: PreparedRun, run_id: str, resume_from: Path | None,
               rendezvous: Rendezvous | None) -> None:
    """This worker's processes of the run ``run_id`` over several machines; its machine 0 reports."""
    fit_distributed(run.request.world_size, run.config, run.data.train, run.data.test, run.data.class_names,
                    checkpoint_dir(ctx.config, run_id), should_stop=ctx.should_stop, resume_from=resume_from,
                    log_every=5, sync_batchnorm=run.request.sync_batchnorm, rendezvous=rendezvous)


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
