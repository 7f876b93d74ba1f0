"""Segment: draw a box around an object, let GrabCut cut it out, check it, save it to the object library."""

import base64
import hashlib
import io
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image
from pydantic import ValidationError
from streamlit_drawable_canvas import st_canvas

from engine.exceptions import InvalidInput, StudioError
from engine.segmentation import DEFAULT_ITERATIONS, MAX_ITERATIONS, MAX_STROKE_WIDTH
from services.app import annotated_images, annotation, segment
from services.app.rules import Forbidden
from services.ui.page import actor, fail, get_config, get_store, page_message, require_page

CANVAS_MAX_WIDTH, CANVAS_MAX_HEIGHT = 800, 640  # the photo is shown downscaled; GrabCut runs on every pixel
# The canvas gets its background as a ready JPEG data URL: handed a PIL image, the canvas re-encodes it as
# an RGBA PNG on every rerun (~1 MB at 800x600, sent to the browser each time); a JPEG is ~10x smaller.
DISPLAY_JPEG_QUALITY = 90
BOX, FOREGROUND, BACKGROUND = "Box", "Mark object", "Mark background"
STROKE_COLOURS = {FOREGROUND: "#00c853", BACKGROUND: "#ff1744"}
BOX_COLOUR = "#ff9800"
HINTS = {BOX: "Drag a box around the object (the last box drawn counts).",
         FOREGROUND: "Paint green strokes over parts of the object that the cut-out missed.",
         BACKGROUND: "Paint red strokes over background that the cut-out kept."}
NEW_CLASS = "(new class)"
UPLOAD, LIBRARY = "Upload a photo", "An uploaded image"
RECENT_SHOWN = 8
LABELS = {"ean": "New class name", "class_name": "New class name", "file": "Photo", "image": "Photo", "box": "Box",
          "iterations": "GrabCut iterations", "stroke_width": "Brush", "fg_strokes": "Object strokes",
          "bg_strokes": "Background strokes"}

user = require_page(__file__)
config, store = get_config(), get_store()
st.title("Segment")
st.caption("Draw a box around one object, optionally mark object and background with strokes, cut it out "
           "with GrabCut, and save it under its class. Augment turns saved objects into datasets.")


@dataclass(frozen=True)
class Photo:
    """A decoded photo: full-resolution pixels for GrabCut and the canvas's downscaled copy."""

    rgb: np.ndarray
    display_url: str  # JPEG data URL of the display copy
    display_size: tuple[int, int]  # (width, height) of the display copy
    scale: float  # display size / full size


@st.cache_resource(show_spinner="Reading the photo…", max_entries=4)
def load_photo(digest: str, _data: bytes) -> Photo:
    """Decode once per photo (reruns reuse it): the pixels, the canvas's background and its scale.

    The pixels are those the segment action keeps for the photo (one decoded copy serves both)."""
    image = base64.b64encode(_data).decode("ascii")
    rgb = segment.decode_kept(config, image, segment.image_digest(image))
    height, width = rgb.shape[:2]
    scale = min(1.0, CANVAS_MAX_WIDTH / width, CANVAS_MAX_HEIGHT / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    display = Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    display.save(buf, format="JPEG", quality=DISPLAY_JPEG_QUALITY)
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return Photo(rgb, url, size, scale)


def choose_photo() -> tuple[str, bytes] | None:
    """The photo to work on: a fresh upload or an image already uploaded on the Annotate page."""
    source = st.radio("Image", [UPLOAD, LIBRARY], horizontal=True, key="segment_source")
    if source == UPLOAD:
        upload = st.file_uploader("Photo", type=["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"],
                                  key="segment_upload", max_upload_size=config.max_upload_mb)
        return (upload.name, upload.getvalue()) if upload is not None else None
    rows = annotation.read_annotations(actor(), annotation.ImagesQuery(limit=500))
    if not rows:
        st.info("No images have been uploaded yet; upload a photo instead.")
        return None
    picked = st.selectbox("Uploaded image", [r["id_name"] for r in rows], key="segment_pick")
    row = next(r for r in rows if r["id_name"] == picked)
    try:
        return picked, annotated_images.image_file(config, row).read_bytes()
    except OSError as exc:
        fail(f"The file of '{picked}' cannot be read: {exc}")


@dataclass(frozen=True)
class CanvasMapping:
    """Canvas pixels -> full-resolution photo pixels: ``image = (canvas - offset) / scale``."""

    scale_x: float
    scale_y: float
    offset_x: float = 0.0
    offset_y: float = 0.0

    @classmethod
    def of(cls, fit: dict | None, display_scale: float) -> "CanvasMapping":
        """From the canvas's reported background fit (if any) and the display copy's downscale."""
        if not fit:  # stretch fit of a background exactly the canvas's size: only the downscale
            return cls(display_scale, display_scale)
        return cls(fit["scale_x"] * display_scale, fit["scale_y"] * display_scale, fit["offset_x"], fit["offset_y"])

    def point(self, x: float, y: float) -> list[float]:
        return [(x - self.offset_x) / self.scale_x, (y - self.offset_y) / self.scale_y]


def read_drawing(json_data: dict | None, mapping: CanvasMapping, shape: tuple[int, ...]):
    """The last box and the strokes drawn on the canvas, in full-resolution image pixels.

    Returns:
        ``(box or None, foreground polylines, background polylines)``.
    """
    box, fg, bg = None, [], []
    for obj in (json_data or {}).get("objects", []):
        kind = str(obj.get("type", "")).lower()
        if kind == "rect":
            box = rect_box(obj, mapping, shape)
        elif kind == "path":  # freedraw: commands like ["Q", cx, cy, x, y]; the last pair is on the stroke
            points = [mapping.point(p[-2], p[-1]) for p in obj.get("path", []) if len(p) >= 3]
            if points:
                (fg if obj.get("stroke") == STROKE_COLOURS[FOREGROUND] else bg).append(points)
    return box, fg, bg


def rect_box(obj: dict, mapping: CanvasMapping, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """A Fabric.js rect as ``(x1, y1, x2, y2)`` image pixels, clipped to the image (boxes may overhang)."""
    width = obj.get("width", 0) * obj.get("scaleX", 1)
    height = obj.get("height", 0) * obj.get("scaleY", 1)
    left = obj.get("left", 0) - (width if obj.get("originX") == "right" else 0)
    top = obj.get("top", 0) - (height if obj.get("originY") == "bottom" else 0)
    x1, y1 = mapping.point(min(left, left + width), min(top, top + height))
    x2, y2 = mapping.point(max(left, left + width), max(top, top + height))
    box = (max(0, math.floor(x1)), max(0, math.floor(y1)), min(shape[1], math.ceil(x2)), min(shape[0], math.ceil(y2)))
    return box if box[2] - box[0] >= 2 and box[3] - box[1] >= 2 else None


def draw(photo: Photo, digest: str):
    """The canvas: a box tool and two brushes over the downscaled photo."""
    left, middle, right = st.columns([2, 1, 1])
    mode = left.radio("Draw", [BOX, FOREGROUND, BACKGROUND], horizontal=True, key="segment_mode",
                      help="Draw the box first; then paint strokes where GrabCut got it wrong and cut again.")
    brush = middle.slider("Brush (px on screen)", 2, 40, 10, key="segment_brush")
    iterations = right.slider("GrabCut iterations", 1, MAX_ITERATIONS, DEFAULT_ITERATIONS, key="segment_iterations")
    st.caption(HINTS[mode])
    result = st_canvas(
        fill_color="rgba(255, 152, 0, 0.12)", stroke_width=2 if mode == BOX else brush,
        stroke_color=BOX_COLOUR if mode == BOX else STROKE_COLOURS[mode], background_image=photo.display_url,
        drawing_mode="rect" if mode == BOX else "freedraw", width=photo.display_size[0],
        height=photo.display_size[1],
        key=f"segment_canvas_{digest[:16]}")  # a new photo gets a new canvas: old boxes clear
    return result, brush, iterations


def cut(data: bytes, key: tuple, box, fg, bg, brush: int, iterations: int, scale: float) -> None:
    """Cut the object out at full resolution (the action the API's segment takes, without saving) and keep
    the result, and the request that made it, for this photo and box.

    Strokes that only add to those of the last cut of this photo and box, with the same iterations, refine
    that cut (only the pixels near them are cut again): a stroke's effect shows at once. A stroke undone,
    or other iterations, cut again from the start.
    """
    drawn = {"box": box, "fg": list(fg or []), "bg": list(bg or []), "iterations": iterations,
             "stroke_width": min(MAX_STROKE_WIDTH, max(1, round(brush / scale)))}
    started = time.perf_counter()
    try:
        with st.spinner("Cutting out…"):
            done = segment.segment(actor(), segment.CutRequest.of_photo(data, **drawn))
    except (InvalidInput, ValidationError, Forbidden) as exc:
        st.session_state.pop("segment_result", None)
        st.error(f"GrabCut could not cut this out: {page_message(exc, LABELS)}")
        return
    keep_cut(key, drawn, done, time.perf_counter() - started)


def keep_cut(key: tuple, drawn: dict, done: segment.Cut, seconds: float) -> None:
    """Remember the shown cut for this photo and box: its request (what Save sends again) and its preview."""
    preview = segment.cutout_preview(done.result.cutout)
    st.session_state["segment_result"] = {"key": key, "drawn": drawn, "result": done.result,
                                          "refined": done.how == "refined", "seconds": seconds,
                                          "preview": preview_png(preview), "preview_width": int(preview.shape[1])}


def preview_png(preview: np.ndarray) -> bytes:
    """The preview as PNG once per cut: ``st.image`` given an array would encode it on every rerun."""
    buf = io.BytesIO()
    Image.fromarray(preview).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def save_section(data: bytes, source: str) -> None:
    """Pick or type the class (nothing is preselected: a wrong default files objects wrongly), then save."""
    counts = segment.class_counts(store)
    left, right = st.columns(2)
    choice = left.selectbox("Class", [*counts, NEW_CLASS], index=None if counts else len(counts),
                            placeholder="Choose a class", key="segment_class",
                            format_func=lambda c: c if c == NEW_CLASS else f"{c} ({counts[c]} objects)")
    name = right.text_input("New class name", key="segment_new_class", disabled=choice != NEW_CLASS,
                            help="Letters, digits, '_', '-', '.' and spaces (the legacy API's EAN codes fit).")
    class_name = name.strip() if choice == NEW_CLASS else choice
    if st.button("Save object", key="segment_save", type="primary", disabled=not class_name):
        save(data, source, class_name)


def save(data: bytes, source: str, class_name: str) -> None:
    """Save the shown cut: the same request as the cut plus the class, as ``POST /api/v1/segment`` sends it."""
    kept = st.session_state["segment_result"]
    try:
        body = segment.SegmentBody.of_photo(data, **kept["drawn"], ean=class_name, source=source)
        done = segment.segment(actor(), body)
    except (InvalidInput, ValidationError, Forbidden) as exc:
        st.error(f"Not saved: {page_message(exc, LABELS)}")
        return
    if done.how != "kept":  # the kept cut had expired: what was saved was cut again, so show that
        keep_cut(kept["key"], kept["drawn"], done, kept["seconds"])
    row = done.row
    if done.created:
        st.success(f"Saved object {row['id'][:8]} as '{row['class_name']}'.")
    else:
        st.info(f"This cut is already saved as object {row['id'][:8]} in '{row['class_name']}'; nothing changed.")


def library_section() -> None:
    """What the library holds: objects per class and the latest cut-outs."""
    counts = segment.class_counts(store)
    if not counts:
        st.caption("The object library is empty.")
        return
    st.dataframe(pd.DataFrame({"class": list(counts), "objects": list(counts.values())}), hide_index=True,
                 key="segment_library_table")
    recent = segment.read_objects(actor(), segment.ObjectsQuery(limit=RECENT_SHOWN))
    columns = st.columns(RECENT_SHOWN)
    for column, row in zip(columns, recent, strict=False):
        try:
            column.image(thumbnail(str(segment.object_file(config, row)), row["id"]), caption=row["class_name"])
        except OSError:
            column.caption(f"{row['class_name']}: file missing")


@st.cache_data(show_spinner=False, max_entries=64)
def thumbnail(path: str, object_id: str) -> np.ndarray:
    """A library object's small preview; objects never change, so each is read and shrunk once."""
    return segment.cutout_preview(np.asarray(Image.open(path).convert("RGBA")), 160)


def main() -> None:
    picked = choose_photo()
    if picked is None:
        with st.expander("Object library", expanded=True):
            library_section()
        return
    source, data = picked
    digest = hashlib.sha1(data).hexdigest()
    try:
        photo = load_photo(digest, data)
    except InvalidInput as exc:
        fail(f"This file cannot be used: {page_message(exc, LABELS)}")
    rgb, scale = photo.rgb, photo.scale
    st.caption(f"{source}: {rgb.shape[1]}×{rgb.shape[0]} px" + (f", shown at {scale:.0%}" if scale < 1 else ""))
    canvas, brush, iterations = draw(photo, digest)
    box, fg, bg = read_drawing(canvas.json_data, CanvasMapping.of(canvas.background_fit, scale), rgb.shape)
    if box is None:
        st.info("Draw a box around the object on the photo.")
        return
    st.caption(f"Box: x1={box[0]}, y1={box[1]}, x2={box[2]}, y2={box[3]} · {len(fg)} object strokes · "
               f"{len(bg)} background strokes")
    if st.button("Run GrabCut", key="segment_run", type="primary"):
        cut(data, (digest, box), box, fg, bg, brush, iterations, scale)
    kept = st.session_state.get("segment_result")
    if kept is None or kept["key"] != (digest, box):  # a result belongs to one photo and one box
        return
    result = kept["result"]
    # At its own size (shrunk only when large): a small cut-out blown up to the page width looks broken.
    how = "strokes applied to the last cut" if kept.get("refined") else "cut"
    st.image(kept["preview"], width=kept["preview_width"], caption=f"Cut-out {result.cutout.shape[1]}×"
             f"{result.cutout.shape[0]} px (checkerboard = transparent; outline = mask edge) · {how} in "
             f"{kept.get('seconds', 0):.2f} s")
    save_section(data, source)


try:
    main()
except StudioError as exc:  # a broken file or catalog: say what, never a traceback
    fail(f"Segmentation failed: {page_message(exc, LABELS)}")
