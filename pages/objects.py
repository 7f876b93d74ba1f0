"""Objects: browse the cut-out library by class, see each object's source and box, delete or re-file it."""

import numpy as np
import streamlit as st
from PIL import Image, ImageDraw

from engine.exceptions import InvalidInput, StudioError
from services.app import annotated_images, library, rules, segment
from services.app.rules import Forbidden
from services.ui.page import actor, fail, get_config, get_store, page_message, require_page

THUMB_CAP = 160  # px: small cut-outs show at their own size, big ones shrink to this
SOURCE_CAP = 480
PER_ROW = 6
SHOWN = 60
LABELS = {"class_name": "Move to class"}

user = require_page(__file__)
config, store = get_config(), get_store()
st.title("Objects")
st.caption("The cut-outs saved on the Segment page, by class. Pick one to see where it came from, delete it, "
           "or move it to the class it belongs to.")


@st.cache_data(show_spinner=False, max_entries=1024)
def thumbnail(path: str, mtime: float) -> np.ndarray:
    """A cut-out over a checkerboard, at its natural size up to THUMB_CAP (``mtime`` keys the cache)."""
    rgba = np.asarray(Image.open(path).convert("RGBA"))
    return segment.cutout_preview(rgba, THUMB_CAP)


def show_thumb(column, row: dict) -> None:
    path = segment.object_file(config, row)
    try:
        picture = thumbnail(str(path), path.stat().st_mtime)
    except OSError:
        column.caption(f"{row['id'][:8]}: file missing")
        return
    column.image(picture, width=int(picture.shape[1]), caption=f"{row['id'][:8]} · {row['width']}×{row['height']}")


def gallery(rows: list[dict]) -> None:
    for start in range(0, min(len(rows), SHOWN), PER_ROW):
        for column, row in zip(st.columns(PER_ROW), rows[start:start + PER_ROW], strict=False):
            show_thumb(column, row)
    if len(rows) > SHOWN:
        st.caption(f"The newest {SHOWN} of {len(rows)} objects are shown.")


def source_view(row: dict) -> None:
    """The uploaded image the object was cut from, with its box; or why it cannot be shown."""
    box = row["bbox"]
    image = store.get_image(row["source"]) if row["source"] else None
    if image is None:
        st.caption(f"Source: {row['source'] or 'unknown'} (a photo uploaded on the Segment page is not kept)"
                   + (f" · box x1={box[0]}, y1={box[1]}, x2={box[2]}, y2={box[3]}" if box else ""))
        return
    try:
        picture = Image.open(annotated_images.image_file(config, image)).convert("RGB")
    except OSError:
        st.caption(f"Source '{row['source']}': file missing")
        return
    if box:
        ImageDraw.Draw(picture).rectangle(box, outline=(255, 152, 0), width=max(2, picture.width // 200))
    picture.thumbnail((SOURCE_CAP, SOURCE_CAP))
    st.image(picture, width=picture.width, caption=f"Source '{row['source']}' with the object's box")


def curate(row: dict, classes: list[str]) -> None:
    """Delete the object (for the roles that may), or move it to another class."""
    left, right = st.columns(2)
    with left:
        delete_section(row)
    with right:
        target = st.selectbox("Move to class", [c for c in classes if c != row["class_name"]], index=None,
                              accept_new_options=True, placeholder="Pick or type a class",
                              key=f"objects_target_{row['id']}")
        if st.button("Move", key="objects_move", disabled=not target):
            try:
                moved = library.move(actor(), row["id"], target.strip())
            except (InvalidInput, Forbidden) as exc:
                st.error(page_message(exc, LABELS))
                return
            st.session_state["objects_done"] = f"Moved object {row['id'][:8]} to '{moved['class_name']}'."
            st.rerun()


def delete_section(row: dict) -> None:
    """A confirmed Delete; a role that may not delete objects is told so instead of shown a button."""
    if not rules.may("objects.delete", user):
        st.caption(f"Deleting objects is for {', '.join(rules.rule_of('objects.delete').allowed)}.")
        return
    confirm = st.checkbox("Yes, delete this object", key=f"objects_confirm_{row['id']}")
    if st.button("Delete object", key="objects_delete", disabled=not confirm):
        try:
            segment.remove_object(actor(), row["id"])
        except Forbidden as exc:
            st.error(page_message(exc, LABELS))
            return
        st.session_state["objects_done"] = f"Deleted object {row['id'][:8]}."
        st.rerun()


def main() -> None:
    if "objects_done" in st.session_state:
        st.success(st.session_state.pop("objects_done"))
    counts = segment.class_counts(store)
    if not counts:
        st.info("The object library is empty: cut objects out on the Segment page.")
        return
    classes = list(counts)
    chosen = st.selectbox("Class", classes, key="objects_class",
                          format_func=lambda c: f"{c} ({counts.get(c, 0)} objects)")
    rows = segment.read_objects(actor(), segment.ObjectsQuery(class_name=chosen, limit=10_000))
    gallery(rows)
    if not rows:
        return
    st.divider()
    by_id = {r["id"]: r for r in rows}
    picked = st.selectbox("Object", list(by_id), key="objects_pick",
                          format_func=lambda i: f"{i[:8]} · {by_id[i]['width']}×{by_id[i]['height']} px · "
                                                f"by {by_id[i]['created_by'] or '—'}")
    row = by_id[picked]
    show_thumb(st, row)
    source_view(row)
    curate(row, classes)


try:
    main()
except StudioError as exc:  # a broken file or catalog: say what, never a traceback
    fail(f"The object library cannot be read: {page_message(exc, LABELS)}")
