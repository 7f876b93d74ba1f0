"""Predict: upload an image, see the label(s) a trained model gives it, with probabilities as a bar chart."""

import altair as alt
import pandas as pd
import streamlit as st

from engine.exceptions import InvalidInput
from services.app import model_catalog, predictions
from services.ui.page import actor, fail, get_store, page_message, require_page

IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"]
TINY_SIDE = 32  # px: below this a photo holds too little for any of the registry's models
PREVIEW_CAP = 480
LABELS = {"image": "Image", "model": "Model"}

require_page(__file__)
store = get_store()
st.title("Predict")


def model_label(row: dict) -> str:
    accuracy = (row["metrics"] or {}).get("best_accuracy")
    return (f"{row['model_name']} · {row['id'][:8]} · {'multi-label' if row['multi_label'] else 'single-label'}"
            + (f" · {accuracy:.1f} %" if accuracy is not None else "") + (" · active" if row["active"] else ""))


def probability_chart(scores: dict[str, float], chosen: set[str]) -> alt.Chart:
    frame = pd.DataFrame({"label": list(scores), "probability": list(scores.values()),
                          "chosen": [label in chosen for label in scores]})
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1])), y=alt.Y("label:N", sort="-x"),
        color=alt.Color("chosen:N", legend=None), tooltip=["label", alt.Tooltip("probability:Q", format=".3f")])


rows = model_catalog.trained_models(actor())
if not rows:
    st.info("No trained model yet: an operator trains one on the Train page.")
    st.stop()
by_id = {r["id"]: r for r in rows}
default = predictions.choose_model(store)  # the active model, else the best one
ids = list(by_id)
model_id = st.selectbox("Model", ids, index=ids.index(default["id"]) if default else 0,
                        format_func=lambda i: model_label(by_id[i]), key="predict_model")
upload = st.file_uploader("Image", type=IMAGE_TYPES, key="predict_upload")
if upload is None:
    st.stop()
row = by_id[model_id]
try:
    with st.spinner("Loading the model and predicting ..."):
        # The API's action and cache: one loaded model per checkpoint file version, shared by every session.
        prediction = predictions.predict_image(actor(), upload.getvalue(), model_id)
except InvalidInput as exc:  # an image that does not decode or is too large, a missing or foreign checkpoint
    where = upload.name if exc.field == "image" else "This model cannot be used"
    fail(f"{where}: {page_message(exc, LABELS)}")
answer, image = prediction.answer, prediction.image

height, width = image.shape[:2]
if min(height, width) < TINY_SIDE:
    size = (row["metrics"] or {}).get("image_size")
    shown = "×".join(str(v) for v in size) if isinstance(size, list) else size or "its input size"
    st.warning(f"This image is only {width}×{height} px. The model enlarges it to {shown} px first, so the "
               f"answer below says little about what it shows: use a photo at least {TINY_SIDE} px on each side.")

left, right = st.columns([1, 2])
left.image(image, caption=f"{upload.name} · {width}×{height} px", width=min(width, PREVIEW_CAP))
with right:
    if "tags" in answer:
        st.subheader(", ".join(answer["tags"]) or "no label over its threshold")
        st.altair_chart(probability_chart(answer["scores"], set(answer["tags"])), key="predict_chart")
    else:
        st.subheader(answer["label"])
        st.metric("Confidence", f"{answer['confidence']:.1f} %")
        st.altair_chart(probability_chart(answer["probabilities"], {answer["label"]}), key="predict_chart")
