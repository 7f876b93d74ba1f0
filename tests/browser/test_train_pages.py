"""Train, Models and Predict in a real browser: launch a run and watch its chart grow; predict an upload."""

from __future__ import annotations

import time

import numpy as np
import pytest
from playwright.sync_api import expect

from engine.datasets import ArrayDataset
from engine.inference import Predictor
from engine.training import TrainConfig, fit
from services.app import training
from services.storage.store import open_store
from tests.browser.conftest import (
    assert_no_traceback,
    choose_option,
    login,
    select_box,
    set_number,
    shot,
    wait_idle,
    watch_run,
)
from tests.digits import DIGITS_FILE, ensure_digits_hdf5
from tests.shapes import SHAPES, png_bytes, shape_image, write_folder_dataset


def open_page(page, stack, role: str, title: str) -> None:
    login(page, stack, role)
    page.locator("[data-testid='stSidebarNav'] a", has_text=title).click()
    page.locator("h1", has_text=title).wait_for()


def pick_folders(page, train: str, test: str) -> None:
    """Class folders as the dataset (HDF5 files, when any exist, are the default), then both trees; each
    pick reruns the page, so every step waits for the run to end before the next."""
    page.locator("[data-testid='stRadio']").filter(has_text="Dataset").get_by_text("Class folders", exact=True).click()
    wait_idle(page)
    choose_option(page, select_box(page, "Training folder"), train)
    wait_idle(page)
    choose_option(page, select_box(page, "Test folder"), test)
    wait_idle(page)


def test_train_page_launches_a_run_whose_chart_grows_while_it_runs(page, stack):
    # Enough images at convnetj's 128 px that an epoch takes a couple of seconds: the page polls every 2 s.
    write_folder_dataset(stack.data_dir, "BROWSER_train", "BROWSER_test", n_train=24, n_test=4)
    open_page(page, stack, "operator", "Train")
    choose_option(page, select_box(page, "Model"), "convnetj")
    wait_idle(page)
    pick_folders(page, "BROWSER_train", "BROWSER_test")
    page.get_by_text("3 classes: circle, square, triangle").wait_for()
    set_number(page, "Epochs", 6)
    set_number(page, "Image size (0: the data's, at most 128)", 128)
    page.get_by_role("button", name="Launch training").click()
    seen = watch_run(page, timeout=150)
    running = sorted({n for status, n in seen if status == "started"})
    assert len(running) >= 2, f"the chart never grew while the run was live: {seen}"
    assert seen[-1] == ("finished", 6)
    page.get_by_text("Confusion matrix (best epoch, test set)").wait_for()
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)  # a finished run has nothing to cancel
    assert page.locator("[data-testid='stVegaLiteChart']").count() >= 3  # loss, accuracy, confusion matrix
    assert_no_traceback(page)
    page.get_by_text("Confusion matrix (best epoch, test set)").scroll_into_view_if_needed()
    shot(page, "train-finished")


def test_train_page_explains_its_default_draws_the_rate_curve_and_reports_the_run(page, stack):
    """Real digits (8 px, an HDF5 file written with h5py), every model setting left to the page: it says which
    model it chose and why; "Find the learning rate" draws the range test's curve with the rate it chose; the
    finished run shows per-class precision and recall, the most confused pairs and its worst images."""
    ensure_digits_hdf5(stack.data_dir)
    open_page(page, stack, "operator", "Train")
    page.locator("[data-testid='stRadio']").filter(has_text="Dataset").get_by_text("HDF5 file", exact=True).click()
    wait_idle(page)
    choose_option(page, select_box(page, "HDF5 file (DATA_DIR/datasets)"), DIGITS_FILE)
    wait_idle(page)
    reason = page.locator("[data-testid='stAlert']").filter(has_text="Model chosen for this data")
    expect(reason).to_contain_text("convnetj")
    expect(reason).to_contain_text("8 px")  # why: smaller than the pretrained backbone's smallest input
    reason.scroll_into_view_if_needed()
    shot(page, "train-default-reason")
    set_number(page, "Epochs", 3)
    page.locator("[data-testid='stCheckbox']").filter(has_text="Find the learning rate").locator("label").click()
    wait_idle(page)
    page.get_by_role("button", name="Launch training").click()
    seen = watch_run(page, timeout=150)
    assert seen and seen[-1] == ("finished", 3), seen
    page.get_by_text("Chosen learning rate").wait_for()
    page.get_by_text("Per-class precision and recall (best epoch, %)").wait_for()
    expect(page.get_by_text("Most confused:")).to_be_visible()
    expect(page.get_by_text("Most confidently wrong")).to_be_visible()
    expect(page.locator("[data-testid='stImage'] img").first).to_be_visible()  # the worst images' thumbnails
    assert_no_traceback(page)
    page.get_by_text("Chosen learning rate").scroll_into_view_if_needed()
    shot(page, "train-auto-rate")
    page.get_by_text("Most confidently wrong").scroll_into_view_if_needed()
    shot(page, "train-report")


def test_train_page_runs_one_training_over_two_processes_with_its_live_chart(page, stack):
    write_folder_dataset(stack.data_dir, "DDP_train", "DDP_test", n_train=16, n_test=4)
    open_page(page, stack, "operator", "Train")
    choose_option(page, select_box(page, "Model"), "convnetj")
    wait_idle(page)
    pick_folders(page, "DDP_train", "DDP_test")
    page.get_by_text("3 classes: circle, square, triangle").wait_for()
    set_number(page, "Epochs", 4)
    set_number(page, "Processes", 2)
    page.get_by_role("button", name="Launch training").click()
    wait_idle(page)  # the launch's rerun selects the new run (until then the page shows the previous one)
    seen = watch_run(page, timeout=240)
    assert seen[-1] == ("finished", 4), seen
    assert_no_traceback(page)
    run = open_store(stack.data_dir).list_jobs(kind="train", limit=1)[0]
    assert run["params"]["world_size"] == 2 and run["status"] == "finished"
    assert [h["epoch"] for h in run["history"]] == [1, 2, 3, 4]  # rank 0's epochs, each once


@pytest.fixture
def shapes_model(stack):
    """A small single-label model of the shapes, trained here and catalogued as a job would, then removed."""
    config = TrainConfig("convnetb", num_classes=3, epochs=3, batch_size=16, learning_rate=0.05, image_size=32)
    images = np.stack([shape_image(s, 500 + 10 * c + i) for c, s in enumerate(SHAPES) for i in range(10)])
    targets = np.repeat(np.arange(3), 10)
    job_id = f"browser-{time.time_ns()}"
    data = ArrayDataset(images, targets, config.preprocessing())
    fit(config, data, data, list(SHAPES), stack.data_dir / "checkpoints" / job_id)
    store = open_store(stack.data_dir)
    row = training.register_model(stack.config, store, job_id, "operator")
    store.set_active_model(row["id"])  # the page's default choice
    yield row
    training.delete_model(stack.config, store, row["id"])


def test_predict_page_labels_an_upload_with_a_probability_chart(page, stack, shapes_model, tmp_path):
    picture = shape_image("square", 42, side=48)
    image = tmp_path / "square.png"
    image.write_bytes(png_bytes(picture))
    expected = Predictor(stack.data_dir / shapes_model["path"]).predict(picture)  # the model itself, no page
    open_page(page, stack, "client", "Predict")
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(image))
    page.get_by_text("Confidence").wait_for()
    # The page shows the active model's own answer for these pixels: its label and its confidence.
    assert page.locator("h3").first.inner_text().strip() == expected["label"]
    confidence = page.locator("[data-testid='stMetricValue']").first.inner_text().strip()
    assert confidence == f"{expected['confidence']:.1f} %"
    page.locator("[data-testid='stVegaLiteChart']").wait_for()
    assert_no_traceback(page)
    shot(page, "predict-upload")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_models_page_lists_the_model_and_downloads_torchscript(page, stack, shapes_model, tmp_path):
    import torch

    open_page(page, stack, "operator", "Models")
    page.locator("[data-testid='stDataFrame']").first.wait_for()
    page.get_by_text(shapes_model["job_id"]).first.wait_for()  # the newest model is preselected
    with page.expect_download() as download:
        page.get_by_role("button", name="Download torchscript").click()
    target = tmp_path / download.value.suggested_filename
    download.value.save_as(target)
    assert target.suffix == ".pt"
    assert torch.jit.load(str(target))(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    assert_no_traceback(page)
    shot(page, "models-page")


def test_train_page_refuses_the_training_folder_as_test_folder_and_says_why(page, stack):
    write_folder_dataset(stack.data_dir, "SAME_train", "SAME_test", n_train=3, n_test=2)
    open_page(page, stack, "operator", "Train")
    page.locator("[data-testid='stRadio']").filter(has_text="Dataset").get_by_text("Class folders", exact=True).click()
    wait_idle(page)
    choose_option(page, select_box(page, "Training folder"), "SAME_train")
    wait_idle(page)
    test_box = select_box(page, "Test folder")
    page.get_by_text("3 classes: circle, square, triangle").wait_for()
    shown = test_box.inner_text() + " " + test_box.locator("input").input_value()
    assert "SAME_test" in shown, shown  # the default test folder is never the training folder
    test_box.locator("input").click()
    offered = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    assert "SAME_test" in offered and not {"newdata", "objects", "bgs", "checkpoints"} & set(offered), offered
    choose_option(page, test_box, "SAME_train")
    page.get_by_text("Test folder: the test folder 'SAME_train' is the training folder").wait_for()
    expect(page.get_by_role("button", name="Launch training")).to_be_disabled()
    assert_no_traceback(page)
    shot(page, "train-refuses-same-folder")


def test_predict_page_warns_about_a_one_pixel_image(page, stack, shapes_model, tmp_path):
    image = tmp_path / "dot.png"
    image.write_bytes(png_bytes(np.full((1, 1, 3), 200, dtype=np.uint8)))
    open_page(page, stack, "client", "Predict")
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(image))
    warning = page.locator("[data-testid='stAlertContentWarning']")
    warning.wait_for()
    assert "only 1×1 px" in warning.inner_text() and "at least 32 px" in warning.inner_text()
    assert_no_traceback(page)
    shot(page, "predict-tiny-image")
