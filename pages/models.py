"""Models: the trained models with their metrics; activate one, download it as TorchScript or ONNX, delete.
Upload a weights file (.pth/.safetensors) for runs to start from."""

import pandas as pd
import streamlit as st

from engine.exceptions import InvalidInput, NotFound
from services.app import model_catalog
from services.app.train_request import WEIGHTS_SUFFIXES
from services.ui.page import actor, get_config, require_page

require_page(__file__)
config = get_config()
st.title("Models")

with st.expander("Upload weights to start a run from (.pth, .safetensors)"):
    upload = st.file_uploader("Weights file", type=[s.lstrip(".") for s in WEIGHTS_SUFFIXES],
                              key="models_weights_upload")
    if upload is not None and st.button("Keep this weights file", key="models_weights_save"):
        try:
            kept = model_catalog.upload_weights(actor(), upload.name, upload.getvalue())
        except InvalidInput as exc:
            st.error(str(exc))
        else:
            st.success(f"Saved as `{kept}`: name it as `weights` in a training request.")

rows = model_catalog.trained_models(actor())
if not rows:
    st.info("No trained models yet: launch a run on the Train page.")
    st.stop()


def summary(row: dict) -> dict:
    metrics = row["metrics"] or {}
    return {"id": row["id"][:8], "model": row["model_name"], "active": row["active"],
            "kind": "multi-label" if row["multi_label"] else "single-label",
            "best test accuracy %": metrics.get("best_accuracy"), "test mAP %": metrics.get("test_map"),
            "epochs": metrics.get("epochs_completed"), "classes": len(row["class_names"] or []),
            "by": row["created_by"], "created": pd.to_datetime(row["created_at"], unit="s")}


st.dataframe(pd.DataFrame([summary(r) for r in rows]), hide_index=True, key="models_table",
             column_config={"best test accuracy %": st.column_config.NumberColumn(format="%.1f"),
                            "test mAP %": st.column_config.NumberColumn(format="%.1f")})
by_id = {r["id"]: r for r in rows}
chosen = st.selectbox("Model", list(by_id), key="models_pick", format_func=lambda i: (
    f"{by_id[i]['model_name']} · {i[:8]} · {(by_id[i]['metrics'] or {}).get('best_accuracy', 0):.1f} %"
    + (" · active" if by_id[i]["active"] else "")))
row = by_id[chosen]
left, right = st.columns(2)
with left:
    st.markdown(f"**Classes:** {', '.join(row['class_names'] or [])}")
    st.markdown(f"**Training job:** `{row['job_id']}` · **checkpoint:** `{row['path']}`")
with right:
    metrics = row["metrics"] or {}
    st.dataframe(pd.DataFrame({"metric": list(metrics), "value": [
        f"{v:.4g}" if isinstance(v, float) else str(v) for v in metrics.values()]}),
        hide_index=True, key="models_metrics")

actions = st.columns(4)
if actions[0].button("Activate", key="models_activate", disabled=row["active"],
                     help="Predictions use this model unless another one is asked for."):
    model_catalog.manage(actor(), model_catalog.ModelChange(model_id=chosen, op="activate"))
    st.rerun()
# The download runs after this script, outside the page's session: its actor is the one of this run.
exporter = actor()
for column, fmt in zip(actions[1:3], model_catalog.EXPORT_SUFFIXES, strict=False):
    def export(fmt=fmt) -> bytes:
        """Made on click (an ONNX export takes seconds) and cached on disk per checkpoint."""
        change = model_catalog.ModelChange(model_id=chosen, op="export", format=fmt)
        return model_catalog.manage(exporter, change)["file"].read_bytes()

    column.download_button(f"Download {fmt}", export, key=f"models_export_{fmt}",
                           file_name=f"{row['model_name']}-{chosen[:8]}{model_catalog.EXPORT_SUFFIXES[fmt]}",
                           mime="application/octet-stream", on_click="ignore",
                           disabled=not config.path(row["path"]).is_file())
with actions[3]:
    # Keyed per model: after a deletion the next model's box starts unticked.
    sure = st.checkbox("Yes, delete it", key=f"models_confirm_delete_{chosen}")
    if st.button("Delete", key="models_delete", disabled=not sure):
        try:
            model_catalog.manage(actor(), model_catalog.ModelChange(model_id=chosen, op="delete"))
        except (NotFound, InvalidInput) as exc:
            st.error(str(exc))
        else:
            st.rerun()
