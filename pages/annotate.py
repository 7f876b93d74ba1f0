"""Annotate: drop many images, confirm the suggested tags, work through the unlabelled queue, see them on a map."""

import pandas as pd
import streamlit as st

from engine import labels as labelsets
from engine.exceptions import InvalidInput, StudioError
from engine.exif import exif_summary
from services.app import annotated_images, annotation
from services.app.rules import Forbidden
from services.app.suggestions import annotation_model
from services.ui.page import actor, fail, get_config, get_store, page_message, require_page

QUEUE_SHOWN = 10  # one screen of cards; the rest wait their turn
ALL, UNLABELLED = "(all)", "(unlabelled)"
SCORES_SHOWN = 5
LABELS = {"id_name": "Image id", "file": "Image", "labels": "Labels"}

user = require_page(__file__)
config, store = get_config(), get_store()
st.title("Annotate")
try:
    label_set = annotation.read_labels(config)
except StudioError as exc:
    fail(f"The label set cannot be read: {exc}")


@st.cache_data(show_spinner=False, max_entries=256, ttl=600)
def inspect_upload(data: bytes, model_id: str | None, _config, _store) -> tuple[annotation.Inspection, bytes]:
    """Decode once per file and annotation model (``model_id``), not on every rerun (suggesting is the slow part)."""
    return annotation.inspect_image(_config, _store, data), annotation.thumbnail_png(data, _config)


@st.cache_data(show_spinner=False, max_entries=512)
def stored_thumbnail(path: str, mtime: float, _config) -> bytes:
    """Thumbnail of a stored image; ``mtime`` makes an overwritten image show its new pixels."""
    with open(path, "rb") as handle:
        return annotation.thumbnail_png(handle.read(), _config)


def thumbnail_of(row: dict) -> bytes | None:
    path = annotated_images.image_file(config, row)
    try:
        return stored_thumbnail(str(path), path.stat().st_mtime, config)
    except (OSError, InvalidInput):
        return None


def model_id() -> str | None:
    row, _why = annotation_model(config, store)
    return row["id"] if row else None


def known(tags) -> list[str]:
    """Keep the tags still in the label set (a multiselect refuses a default outside its options)."""
    return [tag for tag in tags or () if tag in label_set]


def save_upload(upload, id_name: str, labels: list[str], inspection, overwrite: bool) -> str | None:
    """Store one dropped file (and its labels when some are chosen); the error text, or None."""
    try:
        annotation.upload_image(actor(), annotation.Upload(id_name, upload.getvalue(), overwrite, inspection))
        if labels:
            annotation.save_labels(actor(), id_name, labels)
    except annotation.ImageExists:
        return f"{upload.name}: an image with id '{id_name}' exists; change the id or tick 'Replace images'."
    except annotation.NotYourImage:
        return f"{upload.name}: the image '{id_name}' was uploaded by another user; you may replace only your own."
    except (InvalidInput, Forbidden) as exc:
        return f"{upload.name}: {exc}"
    st.session_state["annotate_saved"][upload.file_id] = id_name
    return None


def suggestion_caption(inspection) -> str:
    """The model's best scores, the preselected ones marked, so a person sees what the model thinks and how sure."""
    best = sorted(inspection.predict_scores.items(), key=lambda kv: -kv[1])[:SCORES_SHOWN]
    marked = [f"**{name} {score:.0%} ✓**" if name in inspection.predict_tags else f"{name} {score:.0%}"
              for name, score in best]
    return "Suggested (✓ preselected, over the model's threshold for the label): " + ", ".join(marked)


def upload_card(upload, overwrite: bool) -> tuple | None:
    """One dropped file: thumbnail, id, suggested tags, EXIF date, Save.

    Returns:
        What "Save all" needs and whether the card's suggested tags went unreviewed; None once saved.
    """
    saved = st.session_state["annotate_saved"]
    with st.container(border=True):
        try:
            inspection, thumb = inspect_upload(upload.getvalue(), model_id(), config, store)
        except InvalidInput as exc:
            st.error(f"{upload.name}: {page_message(exc, LABELS)}")
            return None
        left, right = st.columns([1, 3])
        left.image(thumb, caption=upload.name)
        key = upload.file_id
        id_name = right.text_input("Image id", annotation.default_id_name(upload.name), key=f"annotate_id_{key}")
        suggested = known(inspection.predict_tags)
        labels_key = f"annotate_labels_{key}"
        labels = right.multiselect("Labels (suggested tags preselected)" if suggested else "Labels", label_set,
                                   default=suggested, key=labels_key, on_change=mark_reviewed, args=(labels_key,),
                                   help="Leave empty to label it later in the queue.")
        if inspection.predict_scores:
            right.caption(suggestion_caption(inspection))
        right.caption(f"EXIF: {exif_summary(inspection.exif)}")
        if key in saved:
            right.success(f"Saved as '{saved[key]}'.")
            return None
        if right.button("Save", key=f"annotate_save_{key}"):
            error = save_upload(upload, id_name, labels, inspection, overwrite)
            if error:
                right.error(error)
            else:
                right.success(f"Saved as '{id_name}'.")
            return None
        unreviewed = bool(suggested) and labels_key not in st.session_state.get("annotate_reviewed", set())
        return (upload, id_name, labels, inspection), unreviewed


def mark_reviewed(key: str) -> None:
    """A person changed the card's labels: its suggestions were looked at."""
    st.session_state.setdefault("annotate_reviewed", set()).add(key)


def save_all(pending: list[tuple], overwrite: bool) -> None:
    errors = [e for e in (save_upload(*card, overwrite) for card in pending) if e]
    for error in errors:
        st.error(error)
    st.success(f"Saved {len(pending) - len(errors)} of {len(pending)} images.")


def confirm_unreviewed(pending: list[tuple], unreviewed: int, overwrite: bool) -> None:
    """Ask before storing suggested tags nobody looked at."""
    st.warning(f"{unreviewed} image(s) carry suggested tags that nobody changed or confirmed. Save them as they are?")
    yes, no = st.columns(2)
    if yes.button("Yes, save with the suggested tags", key="annotate_confirm_yes", type="primary"):
        st.session_state.pop("annotate_confirm", None)
        save_all(pending, overwrite)
    elif no.button("No, let me review them", key="annotate_confirm_no"):
        st.session_state.pop("annotate_confirm", None)
        st.rerun()


def upload_section() -> None:
    st.session_state.setdefault("annotate_saved", {})
    st.caption(annotation_model(config, store)[1])
    files = st.file_uploader("Drop images here", type=list(labelsets.IMAGE_EXTENSIONS), accept_multiple_files=True,
                             key="annotate_files", max_upload_size=config.max_upload_mb)
    overwrite = st.checkbox("Replace images that have the same id (their labels are cleared)",
                            key="annotate_overwrite")
    cards = [card for card in (upload_card(f, overwrite) for f in files or []) if card is not None]
    pending = [card for card, _ in cards]
    unreviewed = sum(1 for _, flag in cards if flag)
    if not pending:
        return
    if st.session_state.get("annotate_confirm") and unreviewed:
        confirm_unreviewed(pending, unreviewed, overwrite)
    elif st.button(f"Save all ({len(pending)})", key="annotate_save_all", type="primary"):
        if unreviewed:
            st.session_state["annotate_confirm"] = True
            st.rerun()
        save_all(pending, overwrite)


def label_editor(row: dict, prefix: str) -> None:
    """Thumbnail, labels (confirmed, else suggested) and a Save button for a stored image."""
    with st.container(border=True):
        left, right = st.columns([1, 3])
        thumb = thumbnail_of(row)
        if thumb is None:
            left.warning("file missing")
        else:
            left.image(thumb, caption=row["id_name"])
        suggested = row["labels"] is None and bool(known(row["predict_tags"]))
        current = row["labels"] if row["labels"] is not None else row["predict_tags"]
        chosen = right.multiselect("Labels (suggested tags preselected)" if suggested else "Labels", label_set,
                                   default=known(current), key=f"{prefix}_labels_{row['id_name']}")
        right.caption(f"{row['id_name']} · uploaded by {row['uploaded_by']} · EXIF date {row['exif_date'] or '—'}")
        if right.button("Save labels", key=f"{prefix}_save_{row['id_name']}"):
            try:
                annotation.save_labels(actor(), row["id_name"], chosen)
            except (InvalidInput, annotation.UnknownImage, Forbidden) as exc:
                right.error(str(exc))
                return
            st.rerun()


def queue_section() -> None:
    queue = annotation.read_annotations(actor(), annotation.ImagesQuery(unlabelled=True, oldest_first=True,
                                                                         limit=QUEUE_SHOWN))
    if not queue:
        st.info("Every image is labelled.")
        return
    waiting = annotation.count_images(store, unlabelled=True)
    st.caption(f"{waiting} images wait for labels, oldest first. Saving an empty list means none apply.")
    for row in queue:
        label_editor(row, "annotate_queue")


def where_taken(placed: list, shown: int = 5) -> str:
    """A sentence naming where the first ``shown`` located photos were taken (the map's dots, in words)."""
    spots = "; ".join(f"{r['id_name']} at {r['latitude']:.4f}, {r['longitude']:.4f}" for r in placed[:shown])
    more = f" and {len(placed) - shown} more" if len(placed) > shown else ""
    return f"{len(placed)} of these photos carry a GPS position: {spots}{more}."


def browse_section() -> None:
    choice = st.selectbox("Filter by label", [ALL, UNLABELLED, *label_set], key="annotate_filter")
    label = None if choice in (ALL, UNLABELLED) else choice
    rows = annotation.read_annotations(actor(), annotation.ImagesQuery(unlabelled=choice == UNLABELLED, label=label))
    if not rows:
        st.info("No images match.")
        return
    table = pd.DataFrame([{"id_name": r["id_name"], "labels": ", ".join(r["labels"] or []),
                           "labelled": r["labels"] is not None, "exif date": r["exif_date"],
                           "uploaded by": r["uploaded_by"]} for r in rows])
    st.dataframe(table, key="annotate_table", hide_index=True)
    placed = [r for r in rows if r["latitude"] is not None and r["longitude"] is not None]
    if not placed:
        st.caption("None of these images carries a GPS position.")
    else:
        st.map(pd.DataFrame([{"lat": r["latitude"], "lon": r["longitude"]} for r in placed]),
               latitude="lat", longitude="lon")
        st.caption(f"{where_taken(placed)} The map's background is fetched from the internet (CARTO); "
                   "offline, only the dots show.")
    picked = st.selectbox("Edit the labels of", [r["id_name"] for r in rows], key="annotate_pick")
    label_editor(next(r for r in rows if r["id_name"] == picked), "annotate_edit")


upload_tab, queue_tab, browse_tab = st.tabs(["Upload", "Unlabelled queue", "Browse & map"])
try:
    with upload_tab:
        upload_section()
    with queue_tab:
        queue_section()
    with browse_tab:
        browse_section()
except StudioError as exc:  # e.g. a hand-edited label file: say which, never a traceback
    fail(f"The annotation data cannot be read: {exc}")
