"""Transfer learning command line (the legacy pipeline's ``main_coco.py``): a pretrained backbone, multi-label.

Usage: ``python -m engine.transfer [OPTIONS]``. The backbone is ResNet-18 when ``--weights`` (a local
ResNet-18 file, as the legacy pipeline's) is given, the model of the ``--resume`` checkpoint when that is, else
EfficientNet-Lite0 with the ImageNet weights installed with the package: the legacy pipeline's example runs on a
fresh, offline install. With ``--lrp 0`` (the default) only the output layer trains, on backbone
features computed once and cached in ``<data-dir>/features``; with ``--lrp`` > 0 the pretrained layers
train too, at that rate. It trains on the annotated images of
``<data-dir>/newdata`` (labels from its label set, a stratified train/validation split) with the same
:func:`engine.training.fit` as the API's jobs, keeps the best-on-validation checkpoint in
``<data-dir>/checkpoints/transfer/``, and with ``--result`` writes the validation predictions as CSV:
``Id, Tag, Predict_tag`` and one 0/1 column per label (tags are joined with ``;``).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from engine import labels as labelsets
from engine.datasets import DatasetSpec, build_datasets, read_image_file
from engine.exceptions import Cancelled, StudioError
from engine.inference import Predictor
from engine.launch import fit_distributed
from engine.training import TrainConfig, fit_head

WEIGHTS_MODEL = "resnet18"  # what the legacy pipeline's --weights / --resume files hold
BUNDLED_MODEL = "efficientnet-lite0"
TAG_SEPARATOR = ";"


def build_parser() -> argparse.ArgumentParser:
    """Return the parser: the legacy pipeline's options with their meanings, plus data and weights locations."""
    p = argparse.ArgumentParser(
        prog="python -m engine.transfer",
        description=(
            "Transfer learning: train the output layer (and, with --lrp > 0, the pretrained layers) "
            "of a pretrained network on the multi-label images of newdata/"
        ),
    )
    p.add_argument(
        "--workers", type=int, default=4, metavar="N", help="number of data loading workers (default: 4)"
    )
    p.add_argument(
        "--epochs", type=int, default=20, metavar="N", help="number of total epochs to run (default: 20)"
    )
    p.add_argument(
        "--epoch_step",
        type=int,
        default=None,
        help="number of epochs to change learning rate (multiplied by 0.1; default: constant)",
    )
    p.add_argument(
        "--device_ids",
        type=int,
        nargs="+",
        default=None,
        help="ids of GPU (several: one DistributedDataParallel process each, sharing the batch)",
    )
    p.add_argument(
        "--start-epoch", type=int, default=None, metavar="N", help="manual epoch number (useful on restarts)"
    )
    p.add_argument(
        "-b", "--batch-size", type=int, default=32, metavar="N", help="mini-batch size (default: 32)"
    )
    p.add_argument(
        "--lr", "--learning-rate", type=float, default=0.01, metavar="LR", help="initial learning rate"
    )
    p.add_argument(
        "--lrp",
        "--learning-rate-pretrained",
        type=float,
        default=0.0,
        metavar="LR",
        help="learning rate for pre-trained layers (0 freezes them; default: 0)",
    )
    p.add_argument("--momentum", type=float, default=0.9, metavar="M", help="momentum")
    p.add_argument(
        "--weight-decay", "--wd", type=float, default=1e-4, metavar="W", help="weight decay (default: 1e-4)"
    )
    p.add_argument(
        "--print-freq", "-p", type=int, default=10, metavar="N", help="print frequency (default: 10)"
    )
    p.add_argument("--resume", default=None, metavar="PATH", help="path to latest checkpoint (default: none)")
    p.add_argument(
        "--result", default=None, metavar="PATH", help="path to save prediction results (default: none)"
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="folder holding newdata/ and checkpoints/ (default: $DATA_DIR, else the current folder)",
    )
    p.add_argument(
        "--weights",
        default=None,
        metavar="PATH",
        help="local pretrained state_dict of --model (.pth/.safetensors; default: ImageNet weights)",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help=f"registered model (default: {WEIGHTS_MODEL} with --weights, the checkpoint's with --resume, "
        f"else {BUNDLED_MODEL}, whose ImageNet weights are installed)",
    )
    p.add_argument("--no-pretrained", action="store_true", help="start from random weights")
    p.add_argument(
        "--image-size", type=int, default=224, metavar="N", help="input side in pixels (default: 224)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of initialisation, split and shuffling (default: 0)"
    )
    return p


def choose_model(args: argparse.Namespace) -> str:
    """``--model``, else the --resume checkpoint's model, else ResNet-18 for --weights, else the bundled one."""
    if args.model:
        return args.model
    if args.resume:
        from engine import checkpoints

        return checkpoints.load(args.resume).model_name
    return WEIGHTS_MODEL if args.weights else BUNDLED_MODEL


def config_from_args(args: argparse.Namespace, num_labels: int) -> TrainConfig:
    """Map the command-line options onto the engine's training configuration."""
    starts_trained = not args.no_pretrained
    return TrainConfig(
        model_name=choose_model(args),
        num_classes=num_labels,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        optimizer="sgd",
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        lr_schedule="step" if args.epoch_step else "none",
        epoch_step=args.epoch_step,
        seed=args.seed,
        image_size=args.image_size,
        multi_label=True,
        pretrained=starts_trained and args.weights is None,
        weights_path=args.weights if starts_trained else None,
        lr_pretrained=args.lrp,
        num_workers=args.workers,
        head_only=starts_trained and args.lrp == 0,
    )


def choose_device(device_ids: Sequence[int] | None) -> torch.device:
    """The first of ``--device_ids`` when CUDA is available, else the CPU (with a note if ids were given)."""
    if not torch.cuda.is_available():
        if device_ids:
            print("note: no CUDA device; --device_ids ignored, training on the CPU", file=sys.stderr)
        return torch.device("cpu")
    return torch.device(f"cuda:{device_ids[0]}" if device_ids else "cuda")


def processes_for(device_ids: Sequence[int] | None) -> int:
    """One DDP process per listed GPU; a single process on a machine without CUDA."""
    return len(device_ids) if device_ids and torch.cuda.is_available() else 1


def print_epoch(record: dict) -> None:
    """One line per epoch, as the legacy pipeline printed its validation summary."""
    print(
        f"Epoch [{record['epoch']}/{record['epochs']}] train loss {record['train_loss']:.4f} "
        f"test loss {record['test_loss']:.4f} mAP {record['test_map']:.2f} "
        f"micro-F1 {record['test_micro_f1']:.2f} macro-F1 {record['test_macro_f1']:.2f} "
        f"(best mAP {record['best_score']:.2f} at epoch {record['best_epoch']}) lr {record['lr']:.2e}",
        flush=True,
    )


def write_result(
    path: str | os.PathLike,
    predictor: Predictor,
    items: Sequence[tuple[Path, Sequence[str]]],
    batch_size: int = 16,
) -> int:
    """Write ``Id, Tag, Predict_tag, <one 0/1 column per label>`` for ``items``; return the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = predictor.class_names
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Id", "Tag", "Predict_tag", *labels])
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            predictions = predictor.predict_batch([read_image_file(image) for image, _ in chunk])
            for (image, truth), prediction in zip(chunk, predictions, strict=True):
                tags = set(prediction["tags"])
                predicted = [label for label in labels if label in tags]  # label-set order, as Tag is
                writer.writerow(
                    [
                        image.stem,
                        TAG_SEPARATOR.join(truth),
                        TAG_SEPARATOR.join(predicted),
                        *(int(label in tags) for label in labels),
                    ]
                )
    return len(items)


def train(args: argparse.Namespace, config: TrainConfig, bundle, directory: Path, features: Path):
    """``fit_head`` on cached features for head-only runs (one process), else the full loop, with one
    DistributedDataParallel process per ``--device_ids`` GPU."""
    common = dict(
        on_epoch=print_epoch,
        resume_from=args.resume,
        device=choose_device(args.device_ids),
        start_epoch=args.start_epoch,
        log_every=max(args.print_freq, 1),
        on_batch=lambda b: print(f"  [{b['batch']}/{b['batches']}] loss {b['loss']:.4f}", flush=True),
    )
    if config.head_only:
        progress = lambda done, total: print(f"  features {done}/{total}", flush=True)  # noqa: E731
        return fit_head(config, bundle.train, bundle.test, bundle.class_names, directory, features,
                        on_progress=progress, **common)
    return fit_distributed(processes_for(args.device_ids), config, bundle.train, bundle.test, bundle.class_names,
                           directory, device_ids=args.device_ids if torch.cuda.is_available() else None, **common)


def run(args: argparse.Namespace) -> Path:
    """Train (or resume) and optionally write the result CSV; return the checkpoint folder."""
    data_dir = Path(args.data_dir or os.environ.get("DATA_DIR") or os.getcwd())
    newdata = data_dir / "newdata"
    label_set = labelsets.read_label_set(newdata)
    config = config_from_args(args, len(label_set))
    spec = DatasetSpec(kind="newdata", newdata_dir=str(newdata), split_seed=args.seed)
    bundle = build_datasets(spec, config.preprocessing())
    print(
        f"{len(bundle.train)} training and {len(bundle.test)} validation images, {len(label_set)} labels",
        flush=True,
    )
    directory = data_dir / "checkpoints" / "transfer"
    print(f"{config.model_name}, {'head only' if config.head_only else 'all layers'}", flush=True)
    result = train(args, config, bundle, directory, data_dir / "features")
    print(f"best mAP {result.best_score:.2f} at epoch {result.best_epoch}: {result.best_path}", flush=True)
    if args.result:
        best = result.best_path if result.best_path.is_file() else result.last_path
        rows = write_result(args.result, Predictor(best), bundle.test.items_with_labels())
        print(f"wrote {rows} predictions to {args.result}", flush=True)
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, 130 when interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (StudioError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Cancelled):
        print("interrupted; resume with --resume <checkpoints>/transfer/last.pt", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
