"""Tune in a real browser: launch a tiny study on real digits and watch it finish with a best trial."""


from tests.browser.conftest import assert_no_traceback, choose_option, login, select_box, set_number, shot, wait_idle
from tests.digits import DIGITS_FILE, write_digits_hdf5
from tests.harness import get


def test_launch_a_tiny_study_and_see_it_finish(page, stack):
    path = stack.data_dir / "datasets" / DIGITS_FILE
    if not path.exists():
        write_digits_hdf5(path)
    login(page, stack, "operator")
    page.locator("[data-testid='stSidebarNav'] a", has_text="Tune").click()
    page.locator("h1", has_text="Tune").wait_for()
    page.get_by_text("HDF5 file", exact=True).click()  # the default when a dataset file exists
    page.get_by_text("HDF5 file (DATA_DIR/datasets)").wait_for()
    wait_idle(page)
    # Other tests' datasets may sit in the same DATA_DIR: pick the digits by name, as a person would.
    choose_option(page, select_box(page, "HDF5 file"), DIGITS_FILE)
    wait_idle(page)
    set_number(page, "Trials", 2)
    set_number(page, "Epochs per trial", 1)
    set_number(page, "Trials at once (workers)", 1)
    set_number(page, "Image size (0: each model's default)", 16)
    wait_idle(page)
    earlier = {s["study_id"] for s in get(stack, "/api/v1/tune").json()["studies"]}  # the stack is shared
    page.get_by_role("button", name="Launch study").click()
    wait_idle(page)  # the launch's rerun selects the new study (until then the page shows the previous one)
    [study_id] = [s["study_id"] for s in get(stack, "/api/v1/tune").json()["studies"] if s["study_id"] not in earlier]
    assert stack.wait_job(study_id, role="operator", timeout=180)["status"] == "finished"
    page.get_by_text("2 of 2 trials ended").first.wait_for(timeout=60_000)
    page.get_by_text("Status: finished").first.wait_for(timeout=60_000)
    page.get_by_text("Best: trial").first.wait_for()
    page.locator("[data-testid='stDataFrame']").first.wait_for()
    # The page's best is the study's best as the API reports it: the same trial, value and parameters.
    study = get(stack, f"/api/v1/tune/{study_id}").json()
    assert study["status"] == "finished" and study["progress"]["done"] == 2
    best = study["best"]
    shown = page.get_by_text("Best: trial").first.inner_text()
    assert f"trial {best['trial']} · {best['value']:.4g} · " in shown, (shown, best)
    assert all(f"{name} = " in shown for name in best["params"]), (shown, best)
    assert_no_traceback(page)
    shot(page, "tune-finished")
