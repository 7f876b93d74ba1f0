"""Datasets: every dataset with its class balance and samples; upload, export and delete.

Each button calls the action the API's route calls (``services.app.datasets``), as the page's actor.
"""

import time

import pandas as pd
import streamlit as st

from engine import formats
from engine.exceptions import StudioError
from services.app import datasets
from services.ui.dataset_upload import MIRROR_LABEL, upload_dataset_widget
from services.ui.page import actor, fail, get_config, get_store, page_message, require_page

THUMB_WIDTH = 96

require_page(__file__)
config, store = get_config(), get_store()
st.title("Datasets")


def overview(rows: list[dict]) -> None:
    table = pd.DataFrame([{
        "name": r["id"], "kind": r.get("kind"), "origin": r.get("origin"), "classes": len(r["class_names"] or []),
        "train": (r["totals"] or {}).get("train", 0), "test": (r["totals"] or {}).get("test", 0),
        "size (MB)": round((r.get("size_bytes") or 0) / 1e6, 2), "by": r["created_by"],
        "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"])),
    } for r in rows])
    st.dataframe(table, hide_index=True, key="datasets_table")


def balance(row: dict) -> None:
    """Images per class and split, as a bar chart and as numbers."""
    counts = pd.DataFrame(row["counts"] or {}).fillna(0).astype(int).rename_axis("class")
    st.bar_chart(counts, stack=True)
    st.caption(" · ".join(f"{split}: {total}" for split, total in (row["totals"] or {}).items()))


def samples(row: dict) -> None:
    """A grid of a few training images per class."""
    try:
        per_class = datasets.thumbnails(config, row)
    except (OSError, KeyError, ValueError) as exc:
        st.error(f"The dataset file cannot be read: {exc}")
        return
    for name, images in per_class.items():
        if images:
            st.image(images, caption=[name] * len(images), width=THUMB_WIDTH)


def downloads(row: dict) -> None:
    """One download per format that exports (the registry's); each file is made only when clicked."""
    exports = formats.export_formats()
    for column, (word, fmt) in zip(st.columns(len(exports)), exports.items(), strict=True):
        column.download_button(f"Download {fmt.export_label}", data=lambda word=word: exported(row["id"], word),
                               file_name=f"{row['id']}{fmt.suffixes[0]}", mime="application/octet-stream",
                               key=f"datasets_dl_{word}_{row['id']}")


def exported(name: str, word: str) -> bytes:
    path, _ = datasets.export_dataset(actor(), name, word)
    return path.read_bytes()


def properties(row: dict) -> None:
    """Whether the dataset's classes look the same mirrored, which is what lets its runs flip images."""
    key = f"datasets_mirror_{row['id']}"
    wanted = st.checkbox(MIRROR_LABEL, row["mirror_symmetric"], key=key,
                         help=datasets.MIRROR_SYMMETRIC_HELP.capitalize() + ".")
    if wanted != row["mirror_symmetric"]:
        try:
            datasets.change_dataset(actor(), row["id"], datasets.DatasetChange(mirror_symmetric=wanted))
        except StudioError as exc:
            st.error(page_message(exc))
            return
        st.toast(f"{row['id']}: {'may' if wanted else 'may no longer'} be flipped in training")
        st.rerun()


def delete(row: dict) -> None:
    needed = datasets.references(config, store, row["id"])
    if needed:
        st.caption(f"Cannot be deleted while needed by: {', '.join(needed[:5])}")
        return
    sure = st.checkbox(f"Yes, delete {row['id']} and its file", key=f"datasets_sure_{row['id']}")
    if st.button("Delete dataset", key=f"datasets_delete_{row['id']}", disabled=not sure):
        try:
            datasets.delete_dataset(actor(), row["id"])
        except StudioError as exc:
            st.error(page_message(exc))
            return
        st.rerun()


def main() -> None:
    st.subheader("Upload a dataset")
    made = upload_dataset_widget(config, store, key="datasets_upload")
    rows = datasets.read_datasets(actor())  # read after the widget, so an import that just ended is listed
    if not rows:
        st.info("No datasets yet: upload one, or generate one on the Augment page.")
        return
    st.subheader("All datasets")
    overview(rows)
    ids = [r["id"] for r in rows]
    picked = st.selectbox("Dataset", ids, index=ids.index(made) if made in ids else 0, key="datasets_pick")
    row = next(r for r in rows if r["id"] == picked)
    st.subheader(picked)
    source = (row.get("config") or {}).get("source")
    st.caption(f"{row['path']} · {row.get('kind')} · {row.get('origin')}" + (f" from {source}" if source else "")
               + f" · classes: {', '.join(row['class_names'] or [])}")
    properties(row)
    balance(row)
    samples(row)
    downloads(row)
    delete(row)


try:
    main()
except StudioError as exc:
    fail(f"Datasets: {exc}")
