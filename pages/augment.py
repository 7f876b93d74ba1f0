"""Augment: turn the object library into an HDF5 dataset, previewing samples before the job runs.

Its buttons call the actions the API's routes call (``services.app.generate``, ``services.app.datasets``), as the
page's actor.
"""

import json
import re

import pandas as pd
import streamlit as st
from pydantic import ValidationError

from engine.augment import list_transforms
from engine.augment.generate import GenerationConfig
from engine.exceptions import InvalidInput, StudioError
from services.app import datasets, generate, segment
from services.ui.live import cancel_button, is_live, job_state, live_panel, progress_bar, queue_action, status_line
from services.ui.page import actor, fail, field_limits, get_config, get_store, page_message, require_page

PREVIEW_COUNT = 12
HUGE_PLAN = 50_000  # samples: past this a plan takes hours and gigabytes, so it is confirmed first
# Request fields (the legacy API's spellings and the engine's) in the words of this page's widgets.
LABELS = {"classes": "Classes", "image_size": "Image size (px)", "number_backgrounds": "Backgrounds per variant",
          "seed": "Seed", "training_transforms": "Training transforms", "testing_transforms": "Test transforms",
          "scales": "Object sizes", "angels": "Training angles (°)", "angles": "Training angles (°)",
          "test_angels": "Test angles (°)", "test_angles": "Test angles (°)", "apply_center_crop": "Centre crops",
          "center_crop_windows": "Centre crop windows (px)", "apply_occulsion": "Sliding-window crops",
          "apply_occlusion": "Sliding-window crops", "occulsion_window": "Window (px)",
          "occlusion_window": "Window (px)",
          "occulsion_stride": "Stride (px)", "occlusion_stride": "Stride (px)", "test_fraction": "Test share",
          "name": "Dataset name", "export_folders": "Also export image folders"}
GRID_COLUMNS = 6
SAMPLE_COUNT = 12
AUTO = "smaller set"

require_page(__file__)
config, store = get_config(), get_store()
DEFAULTS = GenerationConfig()  # the engine's defaults are the page's defaults: one source
# ...and the request model's bounds are the widgets' bounds (a window never exceeds the image side).
SIZE_MIN, SIZE_MAX, _ = field_limits(generate.GenerateBody, "image_size")
BACKGROUNDS_MIN, BACKGROUNDS_MAX, _ = field_limits(generate.GenerateBody, "number_backgrounds")
WINDOW_MIN = field_limits(generate.GenerateBody, "occlusion_window")[0]
st.title("Augment")


def numbers(text: str) -> list[str]:
    """Split "15, -15 30" into ["15", "-15", "30"]; the request model turns them into numbers and checks them."""
    return [part for part in re.split(r"[,\s;]+", text.strip()) if part]


def joined(values) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def backgrounds_section() -> None:
    """The train and test backgrounds, and an uploader for more."""
    counts = generate.read_backgrounds(actor()).counts
    st.caption(f"{counts['train']} training and {counts['test']} test backgrounds (a picture is only ever in "
               "one set, so test samples are drawn on backgrounds never seen in training).")
    upload = st.file_uploader("Add a background", type=generate.BACKGROUND_UPLOAD_TYPES,
                              key="augment_bg_upload", max_upload_size=config.max_upload_mb)
    split = st.radio("Into", [AUTO, "train", "test"], horizontal=True, key="augment_bg_split")
    if upload is not None and st.button("Add background", key="augment_bg_add"):
        try:
            bg = generate.add_background(actor(), upload.getvalue(), None if split == AUTO else split)
        except StudioError as exc:
            st.error(page_message(exc))
            return
        st.success(f"Added {upload.name} to the {bg.split} backgrounds.")


def options(classes: dict[str, int]) -> dict:
    """Every option of the legacy API's /generate body, as the request body the API would receive."""
    chosen = st.multiselect("Classes", list(classes), default=list(classes), key="augment_classes",
                            format_func=lambda c: f"{c} ({classes[c]})")
    a, b, c = st.columns(3)
    body = {
        "classes": chosen,
        "image_size": a.number_input("Image size (px)", SIZE_MIN, SIZE_MAX, DEFAULTS.image_size, 16,
                                     key="augment_size"),
        "number_backgrounds": b.number_input("Backgrounds per variant", BACKGROUNDS_MIN, BACKGROUNDS_MAX,
                                             DEFAULTS.number_backgrounds, key="augment_backgrounds"),
        "seed": c.number_input("Seed", field_limits(generate.GenerateBody, "seed")[0], 2**31 - 1, DEFAULTS.seed,
                                 key="augment_seed"),
    }
    known = list_transforms()
    body["training_transforms"] = a.multiselect("Training transforms", known, list(DEFAULTS.training_transforms),
                                                key="augment_train_transforms")
    body["testing_transforms"] = b.multiselect("Test transforms", known, list(DEFAULTS.testing_transforms),
                                               key="augment_test_transforms")
    body["scales"] = numbers(c.text_input("Object sizes on a 512 px frame", joined(DEFAULTS.scales),
                                          key="augment_scales", help="Empty: a random size (50-95 %) each time."))
    body["angels"] = numbers(a.text_input("Training angles (°)", joined(DEFAULTS.angles), key="augment_angles"))
    body["test_angels"] = numbers(b.text_input("Test angles (°)", joined(DEFAULTS.test_angles),
                                               key="augment_test_angles"))
    with c:
        body["flip_horizontally"] = st.checkbox("Flip horizontally", DEFAULTS.flip_horizontally, key="augment_flip_h")
        body["flip_vertically"] = st.checkbox("Flip vertically", DEFAULTS.flip_vertically, key="augment_flip_v")
        body["flip_both"] = st.checkbox("Flip both (180°)", DEFAULTS.flip_both, key="augment_flip_both")
    body.update(crop_options(a, b, c))
    return body


def crop_options(a, b, c) -> dict:
    """Centre crops, sliding windows (the legacy API's "occlusion"), random erasing, test share, name, export."""
    body = {"apply_center_crop": a.checkbox("Centre crops", DEFAULTS.apply_center_crop, key="augment_center")}
    body["center_crop_windows"] = numbers(a.text_input("Centre crop windows (px)",
                                                       joined(DEFAULTS.center_crop_windows) or "112, 56",
                                                       key="augment_center_windows",
                                                       disabled=not body["apply_center_crop"]))
    body["apply_occulsion"] = b.checkbox("Sliding-window crops", DEFAULTS.apply_occlusion, key="augment_occlusion")
    body["occulsion_window"] = b.number_input("Window (px)", WINDOW_MIN, SIZE_MAX, DEFAULTS.occlusion_window or 112,
                                              key="augment_occlusion_window", disabled=not body["apply_occulsion"])
    body["occulsion_stride"] = b.number_input("Stride (px)", WINDOW_MIN, SIZE_MAX, DEFAULTS.occlusion_stride or 56,
                                              key="augment_occlusion_stride", disabled=not body["apply_occulsion"])
    body["apply_random_erasing"] = c.checkbox("Random erasing (training)", DEFAULTS.apply_random_erasing,
                                              key="augment_erasing")
    if c.checkbox("Limit the test share", DEFAULTS.test_fraction is not None, key="augment_limit_test"):
        body["test_fraction"] = c.slider("Test share", 0.05, 0.95, DEFAULTS.test_fraction or 0.2, 0.05,
                                         key="augment_test_fraction")
    body["name"] = c.text_input("Dataset name (optional)", key="augment_name") or None
    body["export_folders"] = c.checkbox("Also export image folders", key="augment_export",
                                        help="<name>_train/<class>/*.png and <name>_test/..., for 'custom' training")
    return body


def parse(body: dict) -> generate.GenerateBody:
    """The same validation the API applies; a problem is shown, never raised."""
    try:
        parsed = generate.GenerateBody.model_validate(body)
        generate.generation_config(parsed)
    except ValidationError as exc:
        fail(page_message(exc, LABELS))
    except InvalidInput as exc:
        fail(page_message(exc, LABELS))
    return parsed


@st.cache_data(show_spinner="Rendering samples…", max_entries=16)
def render_preview(body_json: str, library_key: tuple, backgrounds_key: tuple, split: str):
    """Samples drawn by the job's own code; the keys make an edited library or background set re-render."""
    body = generate.GenerateBody.model_validate(json.loads(body_json))
    return generate.preview(config, store, body, split, PREVIEW_COUNT)


def image_grid(samples) -> None:
    for start in range(0, len(samples), GRID_COLUMNS):
        for column, (image, name) in zip(st.columns(GRID_COLUMNS), samples[start : start + GRID_COLUMNS],
                                         strict=False):
            column.image(image, caption=name, width="stretch")


def preview_section(body: generate.GenerateBody) -> int:
    """The plan's size and sample images of both splits; returns how many samples the job would write."""
    planned = generate.planned_counts(config, store, body)
    st.caption(f"The job will write {planned['train']:,} training and {planned['test']:,} test samples "
               f"of {body.image_size or DEFAULTS.image_size} px.")
    library_key = tuple(r["id"] for r in segment.list_objects(store, limit=1_000_000))
    backgrounds_key = tuple(sorted(str(p) for p in generate.list_background_files(config)))
    payload = body.model_dump_json(by_alias=False, exclude={"name", "export_folders"})
    train_tab, test_tab = st.tabs(["Training samples", "Test samples"])
    with train_tab:
        image_grid(render_preview(payload, library_key, backgrounds_key, "train"))
    with test_tab:
        image_grid(render_preview(payload, library_key, backgrounds_key, "test"))
    return planned["train"] + planned["test"]


def confirm_big_plan(total: int, image_size: int) -> bool:
    """Whether the plan may go ahead: a huge one needs a tick, after its size on disk is shown."""
    if total <= HUGE_PLAN:
        return True
    megabytes = total * image_size * image_size * 3 / 1e6
    st.warning(f"This plan writes {total:,} samples (about {megabytes:,.0f} MB of pixels) and will keep a worker "
               "busy for a long time. Fewer angles, sizes or backgrounds make it smaller.")
    return st.checkbox(f"Yes, generate all {total:,} samples", key="augment_confirm_big")


def launch(body: generate.GenerateBody) -> None:
    submitted, job_id = queue_action(lambda: generate.submit_generation(actor(), body), LABELS)
    if submitted:
        st.session_state["augment_job"] = job_id


def job_panel(job_id: str) -> str:
    """Progress and Cancel of the generation job; returns the status shown."""
    record = job_state(config, store, job_id)
    progress_bar(record, status_line("Job", record, "samples"))
    if is_live(record["status"]):
        cancel_button(config, store, job_id, key="augment_cancel")
    if record["status"] == "failed":
        st.error(f"The job failed: {record['error']}")
    return record["status"]


def datasets_section(latest_job: str | None) -> None:
    """A written dataset: its counts per class and split, and a sample of its images."""
    rows = datasets.read_datasets(actor())
    if not rows:
        st.caption("No datasets yet.")
        return
    ids = [r["id"] for r in rows]
    mine = next((r["id"] for r in rows if latest_job and r["job_id"] == latest_job), ids[0])
    picked = st.selectbox("Dataset", ids, index=ids.index(mine), key=f"augment_dataset_{mine}")
    row = next(r for r in rows if r["id"] == picked)
    table = pd.DataFrame(row["counts"]).rename_axis("class").reset_index()
    st.dataframe(table, hide_index=True, key="augment_counts")
    st.caption(f"{row['path']} · {row['image_size']} px · train {row['totals'].get('train', 0)} · "
               f"test {row['totals'].get('test', 0)}" + (f" · folders {row['folders']}" if row["folders"] else ""))
    split = st.radio("Split", ["train", "test"], horizontal=True, key="augment_sample_split")
    shuffle = st.session_state.setdefault("augment_shuffle", 0)
    if st.button("Other samples", key="augment_reshuffle"):
        st.session_state["augment_shuffle"] = shuffle = shuffle + 1
    try:
        image_grid(generate.dataset_sample(config, row, split, SAMPLE_COUNT, seed=shuffle))
    except (OSError, KeyError) as exc:
        st.error(f"The dataset file cannot be read: {exc}")


def main() -> None:
    classes = segment.class_counts(store)
    with st.expander("Backgrounds", expanded=False):
        backgrounds_section()
    if not classes:
        st.info("The object library is empty: cut out objects on the Segment page first.")
        return
    body = parse(options(classes))
    try:
        total = preview_section(body)
    except InvalidInput as exc:
        fail(f"No preview: {page_message(exc, LABELS)}")
    allowed = confirm_big_plan(total, body.image_size or DEFAULTS.image_size)
    if st.button("Generate dataset", key="augment_launch", type="primary", disabled=not allowed):
        launch(body)
    job_id = st.session_state.get("augment_job")
    if job_id and store.get_job(job_id):
        status = job_state(config, store, job_id, warn=False)["status"]
        live_panel("augment_job_panel", status, lambda: job_panel(job_id), every=1)
    st.subheader("Datasets")
    datasets_section(job_id)


try:
    main()
except StudioError as exc:
    fail(f"Augmentation failed: {page_message(exc, LABELS)}")
