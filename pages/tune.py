"""Tune: search learning rate, batch size, weight decay, optimizer and model with Optuna; train the best."""

import functools

import altair as alt
import pandas as pd
import streamlit as st
from pydantic import ValidationError
from redis.exceptions import RedisError

from engine.exceptions import StudioError
from engine.models import list_models
from engine.run_config import AUGMENT_NAMES, OPTIMIZERS
from services.app import tuning
from services.ui.live import action_button, is_live, job_state, live_panel, queue_action, queue_down
from services.ui.page import (
    DATASET_FIELD_LABELS,
    actor,
    dataset_picker,
    fail,
    field_limits,
    get_config,
    get_store,
    page_message,
    require_page,
)

BATCH_SIZES = (8, 16, 32, 64, 128, 256)

require_page(__file__)
config, store = get_config(), get_store()
st.title("Tune")
MODELS = [info.name for info in list_models()]
# Request fields in the words of this page's widgets.
LABELS = {**DATASET_FIELD_LABELS, "space.model_name": "Models", "space.optimizer": "Optimizers",
          "space.batch_size": "Batch sizes", "space.learning_rate": "Learning rate",
          "space.weight_decay": "Weight decay",
          "n_trials": "Trials", "epochs_per_trial": "Epochs per trial", "parallel": "Trials at once (workers)",
          "seed": "Seed", "num_epochs": "Epochs of the best's full training", "image_size": "Image size",
          "convert_grey": "Grey images", "augment": "Augmentation"}


def space_fields() -> dict:
    """The search space widgets; returns ``space``."""
    left, right = st.columns(2)
    models = left.multiselect("Models", MODELS, default=["lenet5"], key="tune_models")
    optimizers = right.multiselect("Optimizers", OPTIMIZERS, default=list(OPTIMIZERS), key="tune_optimizers")
    batch_sizes = left.multiselect("Batch sizes", BATCH_SIZES, default=[16, 32, 64], key="tune_batch_sizes")
    c1, c2, c3, c4 = st.columns(4)
    # The widgets' floors and ceilings are the /train fields' own (an open floor of 0 starts at 1e-6).
    lr_max = float(field_limits(tuning.TrainRequest, "learning_rate")[1])
    wd_min, wd_max, _ = (float(v) for v in field_limits(tuning.TrainRequest, "l2_reg"))
    lr = [c1.number_input("Learning rate from", 1e-6, lr_max, 1e-3, format="%.6f", key="tune_lr_low"),
          c2.number_input("to (log scale)", 1e-6, lr_max, 1e-1, format="%.6f", key="tune_lr_high")]
    wd = [c3.number_input("Weight decay from", wd_min, wd_max, 0.0, format="%.6f", key="tune_wd_low"),
          c4.number_input("to", wd_min, wd_max, 1e-3, format="%.6f", key="tune_wd_high")]
    return {"model_name": models, "optimizer": optimizers, "batch_size": batch_sizes, "learning_rate": lr,
            "weight_decay": wd}


def budget_fields() -> dict:
    """Trials, epochs, parallelism and the fixed training settings."""
    c1, c2, c3, c4 = st.columns(4)
    limits = functools.partial(field_limits, tuning.TuneRequest)
    epochs_low, epochs_high, _ = limits("num_epochs")
    values = {
        "n_trials": c1.number_input("Trials", *limits("n_trials"), key="tune_trials"),
        "epochs_per_trial": c2.number_input("Epochs per trial", *limits("epochs_per_trial"), key="tune_trial_epochs"),
        "parallel": c3.number_input("Trials at once (workers)", *limits("parallel"), key="tune_parallel"),
        "seed": c4.number_input("Seed", *limits("seed"), key="tune_seed"),
        # A study's winner earns a longer run than a single /train request's default.
        "num_epochs": c1.number_input("Epochs of the best's full training", epochs_low, epochs_high, 20,
                                      key="tune_full_epochs"),
        "image_size": c2.number_input("Image size (0: each model's default)", 0, limits("image_size")[1], 0,
                                      key="tune_size"),
        "convert_grey": c3.checkbox("Grey images", limits("convert_grey")[2], key="tune_grey"),
        "augment": c4.selectbox("Augmentation", AUGMENT_NAMES, key="tune_augment"),
    }
    return {**values, "image_size": values["image_size"] or None}


def launch_form() -> None:
    """The study's data, space and budget, and the Launch button (which selects the new study below)."""
    fields = dataset_picker("tune")
    with st.expander("Search space", expanded=True):
        fields["space"] = space_fields()
    with st.expander("Budget and fixed settings", expanded=True):
        fields.update(budget_fields())
    if not st.button("Launch study", type="primary", key="tune_launch"):
        return
    try:
        req = tuning.TuneRequest.model_validate(fields)
    except ValidationError as exc:
        fail(page_message(exc, LABELS))
    launched, started = queue_action(lambda: tuning.launch(actor(), req), LABELS)
    if not launched:
        st.stop()
    st.session_state["tune_next"] = started["study_id"]
    st.rerun()


def study_label(row: dict) -> str:
    when = pd.to_datetime(row["created_at"], unit="s").strftime("%Y-%m-%d %H:%M:%S")
    # No status or progress: a select box keeps the labels of its first rendering, which would go stale.
    return f"{when} · by {row['created_by'] or '—'} · {row['study_id'][:8]}"


def rounded(value):
    """A hyperparameter as a person reads it: floats to 4 significant digits."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


def trials_table(view: dict) -> None:
    rows = [{"trial": t["number"], "state": t["state"], "value": rounded(t["value"]),
             "epochs": len(t["intermediate"]), **{k: rounded(v) for k, v in t["params"].items()},
             "job": t["job_id"][:8]} for t in view["trials"]]
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="tune_table")


def charts(view: dict) -> None:
    """Objective per trial (pruned ones at their last epoch) and the learning curves the pruner saw."""
    points = [{"trial": t["index"], "state": t["state"], "objective": t["value"] if t["value"] is not None
               else t["intermediate"][-1], **t["params"]} for t in view["trials"] if t["intermediate"]]
    if not points:
        return
    frame = pd.DataFrame(points)
    complete = frame["objective"].where(frame["state"] == "complete")
    frame["best so far"] = complete.cummax().ffill()
    left, right = st.columns(2)
    dots = alt.Chart(frame, title="Objective per trial").mark_circle(size=90).encode(
        x=alt.X("trial:Q", axis=alt.Axis(tickMinStep=1)), y=alt.Y("objective:Q", title=view["objective"][:40]),
        color="state:N", tooltip=list(frame.columns))
    best = alt.Chart(frame).mark_line(color="gray").encode(x="trial:Q", y="best so far:Q")
    left.altair_chart(dots + best, key="tune_chart_objective")
    epochs = pd.DataFrame([{"trial": str(t["index"]), "epoch": e + 1, "value": v}
                           for t in view["trials"] for e, v in enumerate(t["intermediate"])])
    curves = alt.Chart(epochs, title="Test metric per epoch").mark_line(point=True).encode(
        x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1)), y="value:Q", color="trial:N")
    right.altair_chart(curves, key="tune_chart_epochs")


def controls(view: dict) -> None:
    """Stop a running study; train the best configuration found so far."""
    left, right = st.columns(2)
    study = view["study_id"]
    if is_live(view["status"]):
        stopped, _ = action_button("Stop study", "tune_stop", lambda: tuning.stop(actor(), study), about=study,
                                   where=left)
        if stopped:
            st.rerun(scope="app")
    if view["best"]:
        trained, started = action_button("Train best in full", "tune_train_best", about=study, where=right,
                                         action=lambda: tuning.train_best(actor(), study),
                                         type="primary")
        if trained:
            st.session_state.setdefault("tune_trained", {})[study] = started["job_id"]
    trained = st.session_state.get("tune_trained", {}).get(study)
    if trained:
        st.success(f"Training job {trained} queued with the best parameters: follow it on the Train page.")


def live_study(study_id: str) -> str:
    """Progress, best, table, charts and controls; returns the status shown."""
    try:
        view = tuning.read_study(actor(), study_id)
    except StudioError as exc:
        fail(f"The study cannot be read: {exc}")
    except RedisError:
        fail(queue_down("the study cannot be read now"))
    progress = view["progress"] or {}
    st.markdown(f"**Status:** {view['status']} · **{progress.get('done', 0)} of {view.get('n_trials')} trials "
                f"ended** · {progress.get('running', 0)} running")
    if view["error"]:
        st.error(view["error"])
    if view.get("best"):
        best = view["best"]
        st.markdown(f"**Best:** trial {best['trial']} · {best['value']:.4g} · "
                    + ", ".join(f"{k} = {rounded(v)}" for k, v in best["params"].items()))
    trials_table(view)
    charts(view)
    controls(view)
    return view["status"]


launch_form()
st.divider()
st.subheader("Studies")
try:
    studies = tuning.read_studies(actor())
except StudioError as exc:
    fail(page_message(exc))
if not studies:
    st.info("No studies yet.")
    st.stop()
if "tune_next" in st.session_state:  # a study launched on the last pass: show it
    st.session_state["tune_study"] = st.session_state.pop("tune_next")
by_id = {s["study_id"]: s for s in studies}
study_id = st.selectbox("Study", list(by_id), format_func=lambda i: study_label(by_id[i]), key="tune_study")
live_panel("tune_panel", job_state(config, store, study_id, warn=False)["status"], lambda: live_study(study_id))
