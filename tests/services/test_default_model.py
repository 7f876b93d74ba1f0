"""A run that names no model gets one chosen from its data, with the reason kept in the job; a body that names a
model keeps it. Small pictures (digits) train from scratch at their own size; photos get the bundled ImageNet
backbone with a new head."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from skimage import data as photos

from engine.run_config import default_input_side, default_model
from tests.digits import digits_body, write_digits_hdf5
from tests.harness import LocalStudio

SCENES = ["coffee", "chelsea", "astronaut", "rocket"]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    studio = LocalStudio.in_own_folder(tmp_path_factory, "default-model")
    write_digits_hdf5(studio.data_dir / "datasets" / "digits-8x8.hdf5")
    rng = np.random.default_rng(0)  # 64 px patches of scikit-image's photos, one class per photo
    images, labels = [], []
    for label, name in enumerate(SCENES):
        picture = getattr(photos, name)()
        for _ in range(12):
            y, x = rng.integers(0, picture.shape[0] - 64), rng.integers(0, picture.shape[1] - 64)
            images.append(picture[y:y + 64, x:x + 64])
            labels.append(label)
    with h5py.File(studio.data_dir / "datasets" / "scenes.h5", "w") as f:
        f["X_train"], f["y_train"] = np.stack(images[::2]), np.array(labels[::2])
        f["X_test"], f["y_test"] = np.stack(images[1::2]), np.array(labels[1::2])
    return studio


def submitted_params(studio, body: dict) -> dict:
    r = studio.client().post("/api/v1/train", json=body, headers=studio.headers("operator"))
    assert r.status_code == 202, r.json
    return studio.actor("operator").store.get_job(r.json["job_id"])["params"]


def unnamed(**change) -> dict:
    body = digits_body(**change)
    del body["model_name"], body["image_size"]
    return body


def test_digits_of_8_px_train_convnetj_from_scratch_at_their_own_size(studio):
    params = submitted_params(studio, unnamed())
    assert params["model_name"] == "convnetj" and params["transfer_mode"] == "scratch"
    assert params["image_size"] == 16  # the model's smallest, kept for a resume and for every machine
    choice = params["model_choice"]
    assert choice["model_name"] == "convnetj" and "8 px" in choice["reason"] and "scratch" in choice["reason"]


def test_photos_of_64_px_train_a_head_on_the_bundled_backbone(studio):
    params = submitted_params(studio, unnamed(hdf5_path="scenes.h5", num_classes="4", convert_grey="0"))
    assert params["model_name"] == "efficientnet-lite0" and params["transfer_mode"] == "head-only"
    assert "24 training images" in params["model_choice"]["reason"]


def test_a_run_over_two_processes_fine_tunes_the_backbone_instead(studio):
    body = unnamed(hdf5_path="scenes.h5", num_classes="4", world_size="2", batch_size="8")
    params = submitted_params(studio, body)
    assert params["model_name"] == "efficientnet-lite0" and params["transfer_mode"] == "fine-tune"
    assert "spread over processes" in params["model_choice"]["reason"]


def test_the_train_page_s_pretrained_box_does_not_stop_the_switch_to_fine_tuning(studio):
    body = unnamed(hdf5_path="scenes.h5", num_classes="4", world_size="2", batch_size="8", pretrained="1")
    params = submitted_params(studio, body)
    assert params["model_name"] == "efficientnet-lite0" and params["transfer_mode"] == "fine-tune"
    scratch = submitted_params(studio, unnamed(hdf5_path="scenes.h5", num_classes="4", pretrained="0"))
    assert scratch["model_name"] == "efficientnet-lite0" and scratch["transfer_mode"] is None  # as asked: scratch


def test_an_auto_rate_fine_tunes_the_backbone_instead(studio):
    params = submitted_params(studio, unnamed(hdf5_path="scenes.h5", num_classes="4", learning_rate="auto"))
    assert params["model_name"] == "efficientnet-lite0" and params["transfer_mode"] == "fine-tune"
    assert "found by a test" in params["model_choice"]["reason"] and params["image_size"] == 64


def test_a_body_that_names_its_model_keeps_it(studio):
    params = submitted_params(studio, digits_body(model_name="convnetj"))
    assert params["model_name"] == "convnetj" and "model_choice" not in params


def test_a_start_the_body_asks_for_is_kept_with_the_chosen_model(studio):
    params = submitted_params(studio, unnamed(hdf5_path="scenes.h5", num_classes="4", transfer_mode="fine-tune"))
    assert params["model_name"] == "efficientnet-lite0" and params["transfer_mode"] == "fine-tune"


@pytest.mark.parametrize(("side", "model"), [(8, "convnetj"), (31, "convnetj"), (32, "efficientnet-lite0"),
                                             (512, "efficientnet-lite0"), (None, "efficientnet-lite0")])
def test_the_rule_follows_the_backbone_s_smallest_input(side, model):
    assert default_model(side, 100).model_name == model


@pytest.mark.parametrize(("model", "side", "used"), [("convnetj", 8, 16), ("convnetj", 64, 64), ("convnetj", 128, None),
                                                      ("convnetj", 300, None), ("efficientnet-lite0", 64, 64),
                                                      ("efficientnet-lite0", 8, 32), ("convnetj", None, None)])
def test_smaller_images_train_at_their_own_size_within_the_model_s_bounds(model, side, used):
    assert default_input_side(model, side) == used


def test_a_fifo_or_a_link_in_a_class_folder_is_never_opened_to_read_the_image_size(studio):
    """Reading the images' size opens headers of regular files only: a FIFO would block the request for ever."""
    import os

    from PIL import Image

    root = studio.data_dir / "odd"
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (200 * (name == "a"), 0, 0)).save(root / split / name / f"{i}.png")
    os.mkfifo(root / "train" / "a" / "0000.png")  # sorts first
    (root / "train" / "b" / "0000.jpg").symlink_to("/dev/zero")
    body = {"dataset": "custom", "trainset_dir": "odd/train", "testset_dir": "odd/test", "num_epochs": 1}
    params = submitted_params(studio, body)  # answered at all: nothing blocked
    assert params["image_size"] == 40 and params["model_name"] == "efficientnet-lite0"
