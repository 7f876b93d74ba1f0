"""The checks a training request meets: the request's (bounded: listings, declared shapes) before it is queued,
the same again in the job on the data it reads whole, and the duplicate check that only the job makes."""

from __future__ import annotations

import shutil

import pytest

from engine.exceptions import InvalidInput
from services.app import train_folders, train_request, train_run
from services.platform.config import Config
from tests.shapes import write_folder_dataset


@pytest.fixture
def config(tmp_path):
    cfg = Config(data_dir=tmp_path)
    cfg.ensure_dirs()
    return cfg


# The request's checks and the job's: the same refusals, in the same words.
CHECKS = pytest.mark.parametrize("check", [train_request.check_request, train_run.prepare], ids=["request", "job"])


def request(**fields) -> train_request.TrainRequest:
    return train_request.TrainRequest.model_validate({"model_name": "lenet5", "dataset": "custom", "image_size": 32,
                                                 "trainset_dir": "A_train", "testset_dir": "A_test", **fields})


@CHECKS
def test_the_studios_own_folders_are_never_offered_as_datasets(config, check):
    write_folder_dataset(config.data_dir, "A_train", "A_test")
    for own in ("newdata", "objects", ".hidden"):
        write_folder_dataset(config.data_dir / own, "x", "y")
    (config.path("objects", "cup")).mkdir(parents=True)
    (config.path("objects", "cup", "1.png")).write_bytes((config.data_dir / "A_train/circle/0.png").read_bytes())
    assert train_folders.image_folder_candidates(config) == ["A_test", "A_train"]
    with pytest.raises(InvalidInput, match="studio's own folders") as err:
        check(config, request(trainset_dir="objects"))
    assert err.value.field == "trainset_dir"


@CHECKS
def test_train_and_test_in_the_same_folder_are_refused(config, check):
    write_folder_dataset(config.data_dir, "A_train", "A_test")
    with pytest.raises(InvalidInput, match="is the training folder") as err:
        check(config, request(testset_dir="A_train"))
    assert err.value.field == "testset_dir"


def test_the_same_images_in_both_splits_are_counted_and_refused(config):
    write_folder_dataset(config.data_dir, "A_train", "A_test")
    for name in ("0.png", "1.png"):  # a copy under another name is still the same image
        shutil.copy(config.data_dir / "A_train/square" / name, config.data_dir / "A_test/square" / f"copy-{name}")
    train_request.check_request(config, request())  # the request's checks pass
    train_run.prepare(config, request())  # and so do the job's on the whole data, but for
    with pytest.raises(InvalidInput, match="2 images are in both") as err:
        train_run.check_distinct_splits(config, request())
    assert err.value.field == "testset_dir"


@CHECKS
def test_one_class_or_too_few_test_images_per_class_is_refused(config, check):
    write_folder_dataset(config.data_dir, "A_train", "A_test")
    (config.data_dir / "A_test/circle/1.png").unlink()
    with pytest.raises(InvalidInput, match=r"at least 2 images of every class; too few: circle \(1\)"):
        check(config, request())
    for shape in ("square", "triangle"):
        shutil.rmtree(config.data_dir / "A_train" / shape)
        shutil.rmtree(config.data_dir / "A_test" / shape)
    with pytest.raises(InvalidInput, match="1 class .*at least 2 are needed") as err:
        check(config, request())
    assert err.value.field == "dataset"


def test_a_link_in_data_dir_leading_outside_is_never_offered_and_breaks_nothing(config, tmp_path_factory):
    """Found when a hostile-path test left such a link in a shared DATA_DIR: the Train page's folder list
    raised instead of listing."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    write_folder_dataset(elsewhere, "OUT_train", "OUT_test")
    write_folder_dataset(config.data_dir, "A_train", "A_test")
    (config.data_dir / "escape_link").symlink_to(elsewhere)
    (config.data_dir / "OUT_train").symlink_to(elsewhere / "OUT_train")
    assert train_folders.image_folder_candidates(config) == ["A_test", "A_train"]
