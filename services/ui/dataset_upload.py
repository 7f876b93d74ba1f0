"""The "Upload a dataset" widget: any page calls :func:`upload_dataset_widget` (Datasets, Train).

It takes the same action as ``POST /api/v1/datasets`` (:func:`services.app.datasets.submit_import`, as the
page's actor), offers the formats of the registry (``engine.formats``), and shows the import job's progress
until the dataset is ready.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePath

import streamlit as st
from pydantic import ValidationError

from engine import formats
from services.app import datasets
from services.app.validation import invalid_input_from
from services.platform.config import Config
from services.storage.store import Store
from services.ui.guard import UI_DATASET_UPLOAD_MB as UI_UPLOAD_LIMIT_MB  # the UI server's guard enforces it
from services.ui.live import job_state, live_panel, progress_bar, queue_action, status_line
from services.ui.page import actor

MIRROR_LABEL = "Classes look the same mirrored"


def _suggested_name(filename: str) -> str:
    stem = PurePath(filename).stem
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in stem).lstrip("._-")[:100] or "dataset"


def _save_upload(config: Config, upload) -> Path:
    """Copy the browser's file to a hidden file in DATA_DIR/uploads (``submit_import`` moves or removes it)."""
    folder = config.path("uploads")
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".part")
    with os.fdopen(fd, "wb") as fh:
        upload.seek(0)
        shutil.copyfileobj(upload, fh, 1024 * 1024)
    return Path(name)


def _annotated_help() -> str:
    """Which uploads the label options apply to: the formats that make annotations (the registry's)."""
    return "Annotated images only: " + "; ".join(f.description for f in formats.list_formats()
                                                 if f.makes == "annotations") + "."


def _form(key: str, filename: str) -> dict:
    a, b, c = st.columns(3)
    return {
        "name": a.text_input("Dataset name", _suggested_name(filename), key=f"{key}_name",
                             help="The file becomes datasets/<name>.hdf5 (not used for annotated images)."),
        "test_fraction": b.number_input("Test fraction", 0.05, 0.95, 0.2, 0.05, key=f"{key}_test_fraction",
                                        help="Share of each class held out, for <class>/<image> zips."),
        "seed": c.number_input("Seed", 0, 2**31 - 1, 0, key=f"{key}_seed"),
        "skip_bad_images": a.checkbox("Skip images that do not decode", False, key=f"{key}_skip"),
        "unknown_labels": b.selectbox("Labels not in the label set", ["refuse", "drop", "add"],
                                      key=f"{key}_unknown", help=_annotated_help()),
        "mirror_symmetric": c.checkbox(MIRROR_LABEL, False, key=f"{key}_mirror",
                                       help=datasets.MIRROR_SYMMETRIC_HELP.capitalize() + "."),
    }


def _submit(config: Config, upload, values: dict, key: str) -> None:
    try:
        form = datasets.UploadForm.model_validate(values)
    except ValidationError as exc:
        st.error(str(invalid_input_from(exc)))
        return
    path = _save_upload(config, upload)
    try:
        submitted, answer = queue_action(lambda: datasets.submit_import(actor(), path, form, upload.name))
    finally:
        path.unlink(missing_ok=True)  # moved by the action when it took the file; refused, it is removed here
    if not submitted:
        return
    job_id, found = answer
    st.session_state[f"{key}_job"] = job_id
    st.session_state[f"{key}_found"] = found


def _progress(config: Config, store: Store, job_id: str) -> str:
    """The import's progress, then its outcome; returns the status shown."""
    record = job_state(config, store, job_id)
    progress_bar(record, status_line("Import", record, "images"))
    if record["status"] == "failed":
        st.error(f"The import failed: {record['error']}")
    elif record["status"] == "finished":
        result = record["result"] or {}
        if "dataset_id" in result:
            st.success(f"Dataset **{result['dataset_id']}** is ready: {', '.join(result['class_names'])}.")
        else:
            st.success(f"Imported {result.get('imported', 0)} annotated images.")
        for label, values in (("Skipped images", result.get("skipped_images")),
                              ("Labels not imported", result.get("unknown_labels")),
                              ("Rows without an image in the zip", result.get("missing_images"))):
            if values:
                st.warning(f"{label}: {', '.join(map(str, values[:30]))}")
    return record["status"]


def _formats_help() -> str:
    """The known formats, one per line (the registry's descriptions)."""
    return "Any of:\n" + "\n".join(f"- {fmt.description}" for fmt in formats.list_formats())


def upload_dataset_widget(config: Config, store: Store, key: str = "dataset_upload") -> str | None:
    """Upload a file in any registered format and import it (as the signed-in user of the page).

    Returns:
        The name of the dataset the last import made, once it is ready; None before.
    """
    limit = min(config.max_dataset_mb, UI_UPLOAD_LIMIT_MB)
    upload = st.file_uploader("Upload a dataset", type=formats.upload_suffixes(), key=f"{key}_file",
                              max_upload_size=limit, help=_formats_help())
    if upload is not None:
        values = _form(key, upload.name)
        if st.button("Import dataset", key=f"{key}_submit", type="primary"):
            _submit(config, upload, values, key)
    job_id = st.session_state.get(f"{key}_job")
    if not job_id or store.get_job(job_id) is None:
        return None
    # Once the import ends the whole page re-runs, so its dataset lists show the new one.
    status = job_state(config, store, job_id, warn=False)["status"]
    live_panel(f"{key}_progress", status, lambda: _progress(config, store, job_id), every=1)
    record = store.get_job(job_id)
    return (record["result"] or {}).get("dataset_id") if record["status"] == "finished" else None
