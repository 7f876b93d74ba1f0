"""The Datasets page in a real browser: upload a zip, watch the import, see the balance and samples, delete."""

import secrets

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import assert_no_traceback, choose_option, login, select_box, shot
from tests.engine.test_archives import class_images, file_manager_zip

pytestmark = pytest.mark.browser


def test_operator_uploads_a_zip_sees_its_classes_and_samples_then_deletes_it(page, stack, tmp_path):
    name = f"browser_{secrets.token_hex(3)}"
    path = file_manager_zip(tmp_path / f"{name}.zip", class_images({"apple": 6, "pear": 4}))
    login(page, stack, "operator")
    page.locator("[data-testid='stSidebarNav'] a", has_text="Datasets").click()
    page.locator("h1", has_text="Datasets").wait_for()
    uploader = page.locator("[data-testid='stFileUploader']")
    uploader.locator("input[type='file']").set_input_files(str(path))
    name_box = page.get_by_label("Dataset name", exact=True)
    expect(name_box).to_have_value(name)  # suggested from the file's name
    page.get_by_role("button", name="Import dataset").click()
    page.get_by_text(f"Dataset {name} is ready", exact=False).wait_for(timeout=90_000)
    assert_no_traceback(page)
    choose_option(page, select_box(page, "Dataset"), name)
    page.locator("h3", has_text=name).wait_for()
    expect(page.get_by_text("apple, pear").first).to_be_visible()
    page.locator("[data-testid='stVegaLiteChart'], [data-testid='stArrowVegaLiteChart']").first.wait_for()
    expect(page.locator("[data-testid='stImage']").first).to_be_visible()
    # up to four training samples per class: apple has 5 training images, pear 3
    assert page.locator("[data-testid='stImage'] img").count() == 7
    assert page.get_by_role("button", name="Download HDF5").count() == 1
    shot(page, "datasets-uploaded")
    assert (stack.data_dir / "datasets" / f"{name}.hdf5").is_file()
    page.get_by_text(f"Yes, delete {name} and its file").click()
    page.get_by_role("button", name="Delete dataset").click()
    page.wait_for_timeout(1500)
    expect(page.locator("h3", has_text=name)).to_have_count(0)
    assert not (stack.data_dir / "datasets" / f"{name}.hdf5").exists()
    assert_no_traceback(page)
