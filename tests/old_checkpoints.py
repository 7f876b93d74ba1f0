"""Checkpoints in the layouts earlier versions of the project wrote, so tests can prove they still load."""

from __future__ import annotations

import torch

from engine import checkpoints


def write_version_1(raw: dict, path) -> None:
    """Save ``raw`` (a current checkpoint's dict) in the layout the first format version wrote, key for key."""
    kind = raw["kind"]
    torch.save(
        {
            "format": checkpoints.FORMAT,
            "format_version": 1,
            "kind": kind,
            "model": raw["model"],
            "state_dict": raw["state_dict"],
            "class_names": raw["class_names"],
            "multi_label": raw["model"]["kwargs"]["multi_label"],
            "preprocessing": raw["preprocessing"],
            "config": raw["config"],
            "epoch": raw["epoch"],
            "metrics": dict(raw["history"][-1]) if raw["history"] else {},
            "history": raw["history"],
            "best": raw["best"],
            "epochs_without_improvement": raw["epochs_without_improvement"],
            "evaluation": raw["evaluation"] if kind == "best" else {},
            "thresholds": raw["evaluation"].get("thresholds") if kind == "best" else None,
            "optimizer": raw["optimizer"],
            "scheduler": raw["scheduler"],
            "scaler": raw["scaler"],
            "seed": raw["config"]["seed"],
            "rng": raw["rng"],
            "versions": raw["versions"],
        },
        path,
    )
