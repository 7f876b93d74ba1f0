"""``python -m engine.transfer``: the legacy pipeline's transfer-learning command line on a tiny newdata/ folder."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from engine import checkpoints
from engine import labels as labelsets
from engine.transfer import build_parser, main
from tests.engine.conftest import LABELS

torch.set_num_threads(1)
@pytest.fixture()
def weights(tmp_path):
    """A local ResNet-18 state_dict in torchvision's layout (standing in for the ImageNet file)."""
    torch.manual_seed(7)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def _args(data_dir, weights, *extra):
    return [
        "--data-dir",
        str(data_dir),
        "--weights",
        str(weights),
        "--workers",
        "0",
        "-b",
        "4",
        "--image-size",
        "32",
        *extra,
    ]


def test_trains_keeps_best_and_writes_the_result_csv(data_dir, weights, capsys):
    out = data_dir / "out" / "result.csv"
    assert (
        main(
            _args(
                data_dir,
                weights,
                "--epochs",
                "2",
                "--lr",
                "0.05",
                "--lrp",
                "0",
                "-p",
                "1",
                "--result",
                str(out),
            )
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Epoch [2/2]" in printed and "mAP" in printed and "[1/" in printed  # -p 1: every batch
    best = torch.load(data_dir / "checkpoints" / "transfer" / "best.pt", weights_only=True)
    assert best["model"]["name"] == "resnet18" and best["class_names"] == LABELS
    assert checkpoints.load(data_dir / "checkpoints" / "transfer" / "best.pt").multi_label
    # --lrp 0 freezes the pretrained layers: they are still exactly the weights file's.
    assert torch.equal(
        best["state_dict"]["layer2.0.conv1.weight"], torch.load(weights)["layer2.0.conv1.weight"]
    )
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["Id", "Tag", "Predict_tag", *LABELS]
    assert 1 <= len(rows) - 1 < 12
    for row in rows[1:]:
        assert row[0].startswith("img_") and set(row[3:]) <= {"0", "1"}
        predicted = set(filter(None, row[2].split(";")))
        assert predicted == {label for label, flag in zip(LABELS, row[3:], strict=True) if flag == "1"}
        assert row[1] == ";".join(labelsets.read_annotation(data_dir / "newdata", row[0])["labels"])


def test_lrp_trains_pretrained_layers_and_epoch_step_decays_lr(data_dir, weights):
    assert (
        main(
            _args(
                data_dir,
                weights,
                "--epochs",
                "2",
                "--lr",
                "0.1",
                "--lrp",
                "0.01",
                "--epoch_step",
                "1",
                "--momentum",
                "0.5",
                "--wd",
                "0.001",
            )
        )
        == 0
    )
    last = torch.load(data_dir / "checkpoints" / "transfer" / "last.pt", weights_only=True)
    assert not torch.equal(
        last["state_dict"]["layer2.0.conv1.weight"], torch.load(weights)["layer2.0.conv1.weight"]
    )
    assert [r["lr"] for r in last["history"]] == pytest.approx([0.1, 0.01])
    groups = last["optimizer"]["param_groups"]
    assert [g["momentum"] for g in groups] == [0.5, 0.5] and groups[0]["weight_decay"] == 0.001
    assert sorted(g["initial_lr"] for g in groups) == [0.01, 0.1]
    assert last["config"]["batch_size"] == 4 and last["config"]["image_size"] == 32


def test_resume_and_start_epoch(data_dir, weights):
    assert main(_args(data_dir, weights, "--epochs", "1")) == 0
    last = data_dir / "checkpoints" / "transfer" / "last.pt"
    assert main(_args(data_dir, weights, "--epochs", "2", "--resume", str(last))) == 0
    assert [r["epoch"] for r in torch.load(last, weights_only=True)["history"]] == [1, 2]
    assert main(_args(data_dir, weights, "--epochs", "4", "--resume", str(last), "--start-epoch", "3")) == 0
    assert [r["epoch"] for r in torch.load(last, weights_only=True)["history"]] == [1, 2, 4]


def test_missing_pretrained_weights_is_a_clear_error(data_dir, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(data_dir / "empty-torch-home"))
    assert main(["--data-dir", str(data_dir), "--model", "resnet18", "--workers", "0", "--epochs", "1"]) == 2
    assert "not available offline" in capsys.readouterr().err


def test_runs_as_a_module_with_data_dir_from_the_environment(data_dir, weights, processes):
    env = {"DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.transfer",
            "--weights",
            str(weights),
            "--workers",
            "0",
            "--epochs",
            "1",
            "--image-size",
            "32",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (data_dir / "checkpoints" / "transfer" / "best.pt").is_file()
    assert "Epoch [1/1]" in done.stdout


def test_help_lists_the_legacy_options():
    text = build_parser().format_help()
    for option in (
        "--workers",
        "--epochs",
        "--epoch_step",
        "--device_ids",
        "--start-epoch",
        "-b N, --batch-size",
        "--lr LR, --learning-rate",
        "--lrp LR, --learning-rate-pretrained",
        "--momentum",
        "--weight-decay W, --wd",
        "--print-freq N, -p",
        "--resume",
        "--result",
        "--data-dir",
        "--weights",
    ):
        assert option in text
