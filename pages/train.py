"""Train: choose a model, data and hyperparameters; launch; watch loss and accuracy live; cancel or resume."""

import functools

import altair as alt
import pandas as pd
import streamlit as st
from pydantic import ValidationError

from engine.dataset_kinds import list_dataset_kinds
from engine.exceptions import InvalidInput
from engine.models import list_models
from engine.run_config import AUGMENT_NAMES, OPTIMIZERS, SCRATCH_DEFAULT, ModelChoice
from services.app import train_request, training
from services.ui.dataset_upload import upload_dataset_widget
from services.ui.live import action_button, cancel_button, is_live, job_state, live_panel, queue_action
from services.ui.page import (
    DATASET_FIELD_LABELS,
    actor,
    dataset_picker,
    field_limits,
    get_config,
    get_store,
    page_message,
    require_page,
)

RUNS_SHOWN = 50
CHOSEN = "(chosen from the data)"  # the model box's first option: the request names no model
WORST_THUMB = 96  # px
CONFUSION_CELL, CONFUSION_MIN, CONFUSION_MAX = 48, 240, 720  # px: a cell per class, the chart's bounds

require_page(__file__)
config, store = get_config(), get_store()
st.title("Train")
MODELS = {info.name: info for info in list_models()}
# Request fields in the words of this page's widgets.
LABELS = {**DATASET_FIELD_LABELS, "model_name": "Model", "num_epochs": "Epochs", "batch_size": "Batch size",
          "learning_rate": "Learning rate", "optimizer": "Optimizer", "momentum": "Momentum (SGD)",
          "l2_reg": "L2 (weight decay)", "image_size": "Image size", "seed": "Seed",
          "epoch_step": "Step every n epochs",
          "patience": "Early stop after n flat epochs", "num_workers": "Loader processes",
          "augment": "Augmentation", "convert_grey": "Grey images", "pretrained": "Pretrained (ImageNet)",
          "world_size": "Processes"}


@st.cache_data(ttl=15, show_spinner=False)
def data_check(_config, request_json: str) -> train_request.DataFacts:
    """What the data holds once the checks a launch makes have passed (raises InvalidInput otherwise): the
    request's own (``train_request.check_request``), which list folders and read declared shapes only.

    Cached: reruns on every widget change need not list big folders each time.
    """
    req = train_request.TrainRequest.model_validate_json(request_json)
    return train_request.check_request(_config, req)[1]


def pick(label: str, options: list[str], preferred: str, key: str) -> str | None:
    """A select box that starts on ``preferred`` when it is one of the options."""
    index = options.index(preferred) if preferred in options else 0
    return st.selectbox(label, options, index=index, key=key) if options else None


def hyperparameters(info) -> dict:
    """The training settings, with the legacy API's defaults; returns request fields."""
    c1, c2, c3, c4 = st.columns(4)
    limits = functools.partial(field_limits, train_request.TrainRequest)
    # Fields whose "none" the page spells 0 keep the model's ceiling; floats keep one numeric type.
    lr_default, lr_max = limits("learning_rate")[2], limits("learning_rate")[1]
    momentum_low, _, momentum_default = limits("momentum")
    values = {
        "num_epochs": c1.number_input("Epochs", *limits("num_epochs"), key="train_epochs"),
        "batch_size": c2.number_input("Batch size", *limits("batch_size"), key="train_batch"),
        "learning_rate": c3.number_input("Learning rate", 1e-6, float(lr_max), lr_default, format="%.5f",
                                         key="train_lr"),
        "find_rate": c3.checkbox("Find the learning rate", False, key="train_lr_auto",
                                 help="a short range test on the training data picks the rate before the run "
                                      "(its curve is shown with the run); not for head-only runs"),
        "optimizer": c4.selectbox("Optimizer", OPTIMIZERS, key="train_optimizer"),
        "momentum": c1.number_input("Momentum (SGD)", float(momentum_low), 0.999, momentum_default,
                                    key="train_momentum"),
        "l2_reg": c2.number_input("L2 (weight decay)", *(float(v) for v in limits("l2_reg")), format="%.5f",
                                  key="train_l2"),
        "image_size": c3.number_input(f"Image size (0: the data's, at most {info.default_input_size})", 0,
                                      limits("image_size")[1], 0, key="train_size",
                                      help="0 trains smaller images at their own size (enlarging adds no detail, "
                                           "only time) and larger ones at the model's default"),
        "seed": c4.number_input("Seed", *limits("seed"), key="train_seed"),
        "lr_decay": c1.checkbox("Decay the learning rate", True, key="train_lr_decay"),
        "epoch_step": c2.number_input("Step every n epochs (0: on plateau)", 0, limits("epoch_step")[1], 0,
                                      key="train_step"),
        "patience": c3.number_input("Early stop after n flat epochs (0: never)", 0, limits("patience")[1], 0,
                                    key="train_patience"),
        "num_workers": c4.number_input("Loader processes", *limits("num_workers"),
                                       key="train_workers"),
        # One run over several processes (DistributedDataParallel): gloo on CPU, one per GPU with CUDA.
        "world_size": c4.number_input("Processes", *limits("world_size"), key="train_processes",
                                      help="training processes of this run; the batch size is split among them"),
        "augment": c1.selectbox("Augmentation", AUGMENT_NAMES, key="train_augment",
                                help="shift+flip also mirrors images: only for classes that look the same "
                                     "mirrored (never digits, letters, arrows or text)"),
        "convert_grey": c2.checkbox("Grey images", False, key="train_grey"),
        # Ticked by default where the weights ship with the install (no download needed).
        "pretrained": c3.checkbox("Pretrained (ImageNet)", info.bundled_weights, key=f"train_pretrained_{info.name}",
                                  disabled=not info.has_pretrained),
    }
    if values.pop("find_rate"):
        values["learning_rate"] = "auto"
    # 0 means "not set" in the widgets; the request says so with None.
    return {k: (v or None) if k in ("image_size", "epoch_step", "patience") else v for k, v in values.items()}


def build_request(fields: dict) -> train_request.TrainRequest | None:
    try:
        return train_request.TrainRequest.model_validate(fields)
    except ValidationError as exc:
        st.error(page_message(exc, LABELS))
        return None


def data_ready(fields: dict) -> tuple[bool, train_request.DataFacts | None]:
    """Show the data's classes, or why it cannot be trained on; whether a launch may go ahead, and what the data
    holds (the facts the model is chosen from)."""
    if any(fields.get(f) is None for f in list_dataset_kinds()[fields["dataset"]] if f in LABELS):
        return False, None
    req = build_request(fields)
    if req is None:
        return False, None
    try:
        facts = data_check(config, req.model_dump_json())
    except InvalidInput as exc:
        st.error(page_message(exc, LABELS))
        return False, None
    symmetric = train_request.mirror_symmetric(store, req)
    mirror = {None: "", True: " · mirror-symmetric: flips allowed",
              False: " · not mirror-symmetric: never flipped"}[symmetric]
    classes = facts.class_names
    st.caption(f"{len(classes)} classes: {', '.join(classes[:30])}{' ...' if len(classes) > 30 else ''}{mirror}")
    return True, facts


def model_choice(facts: train_request.DataFacts, fields: dict,
                 before: ModelChoice | None = None) -> ModelChoice | None:
    """The model chosen for the data when the page names none, for the settings as they stand (over several
    processes, or with "Find the learning rate", a head-only start trains every layer): the request's own rule,
    on the facts already read; ``before`` while the settings do not validate (the launch names what is wrong)."""
    try:
        req = train_request.TrainRequest.model_validate(fields)
    except ValidationError:
        return before
    return train_request.with_default_model(req, facts)[1]


def explain(choice: ModelChoice) -> None:
    st.info(f"Model chosen for this data: **{choice.model_name}**, {choice.transfer_mode}. Why: {choice.reason}. "
            "Pick another model above to change it.")


def launch_form() -> None:
    """Model, data, hyperparameters and the Launch button (which selects the new run below)."""
    name = pick("Model", [CHOSEN, *MODELS], CHOSEN, "train_model")
    if name != CHOSEN:
        st.caption(f"{MODELS[name].description} · default input {MODELS[name].default_input_size} px")
    with st.expander("Upload a dataset (a zip of class folders, or an HDF5 file)"):
        upload_dataset_widget(config, store, key="train_upload")
    fields = {"model_name": None if name == CHOSEN else name, **dataset_picker("train")}
    ready, facts = data_ready(fields)
    choice = model_choice(facts, fields) if facts is not None else None
    info = MODELS[name if name != CHOSEN else choice.model_name if choice else SCRATCH_DEFAULT]
    with st.expander("Hyperparameters", expanded=True):
        fields.update(hyperparameters(info))
    choice = model_choice(facts, fields, choice) if facts is not None else None
    if choice is not None:
        explain(choice)
    if st.button("Launch training", type="primary", key="train_launch", disabled=not ready):
        req = build_request(fields)
        if req is not None:
            submitted, job_id = queue_action(lambda: training.submit_training(actor(), req), LABELS)
            if submitted:
                st.session_state["train_next"] = job_id
                st.rerun()


def run_label(record: dict) -> str:
    params = record["params"]
    when = pd.to_datetime(record["created_at"], unit="s").strftime("%Y-%m-%d %H:%M:%S")
    # No status here: a select box keeps the labels of its first rendering while the fragment updates.
    return f"{when} · {params.get('model_name')} on {params.get('dataset')} · {record['id'][:8]}"


def curves(history: list[dict]) -> None:
    """Loss and accuracy per epoch, train and test, as two altair line charts."""
    frame = pd.DataFrame([{"epoch": h["epoch"], "split": split, "loss": h[f"{split}_loss"],
                           "accuracy": h[f"{split}_accuracy"]} for h in history for split in ("train", "test")])
    left, right = st.columns(2)
    for column, metric in ((left, "loss"), (right, "accuracy")):
        chart = alt.Chart(frame, title=metric).mark_line(point=True).encode(
            x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1, format="d")), y=alt.Y(f"{metric}:Q"), color="split:N",
            tooltip=["epoch", "split", metric])
        column.altair_chart(chart, key=f"train_chart_{metric}")


def rate_curve(found: dict) -> None:
    """The learning-rate range test of an ``auto`` run: smoothed loss against the rate, and the rate chosen."""
    frame = pd.DataFrame({"learning rate": found["lrs"], "loss": found["losses"]})
    line = alt.Chart(frame, title="Learning-rate range test").mark_line().encode(
        x=alt.X("learning rate:Q", scale=alt.Scale(type="log")), y="loss:Q", tooltip=["learning rate", "loss"])
    rule = alt.Chart(pd.DataFrame({"learning rate": [found["chosen"]]})).mark_rule(color="red").encode(
        x="learning rate:Q")
    st.altair_chart(line + rule, key="train_rate_curve")
    st.caption(f"Chosen learning rate {found['chosen']:.3g}: a tenth of {found['lowest_at']:.3g}, where the loss "
               f"fell lowest, over {found['steps']} test batches.")


def run_controls(record: dict) -> None:
    """Cancel a live run; resume a stopped one that has a checkpoint."""
    if is_live(record["status"]):
        cancel_button(config, store, record["id"], key="train_cancel", label="Cancel run")
        return
    if record["status"] == "finished":
        return
    if training.resumable_checkpoint(config, record["id"]) is None:
        st.caption("Nothing to resume: the run stopped before it wrote a checkpoint. Launch it again above.")
        return
    resumed, job_id = action_button("Resume from the last checkpoint", "train_resume", about=record["id"],
                                    action=lambda: training.resume(actor(), record["id"]))
    if resumed:
        st.session_state["train_next"] = job_id
        st.rerun(scope="app")


def live_run(job_id: str) -> str:
    """Status, curves and controls of one run; returns the status shown."""
    record = job_state(config, store, job_id)
    history = record["history"] or []
    last = history[-1] if history else {}
    st.markdown(f"**Status:** {record['status']} · **{len(history)} epochs recorded**"
                + (f" of {last['epochs']} · best test accuracy {last['best_accuracy']:.1f} %" if last else ""))
    if record["error"]:
        st.error(record["error"])
    finder = next((h["lr_finder"] for h in history if "lr_finder" in h), None)
    if finder:
        rate_curve(finder)
    elif record["params"].get("learning_rate") == "auto" and (record.get("progress") or {}).get("stage"):
        st.caption(f"{record['progress']['stage'].capitalize()}: {record['progress']['done']} of "
                   f"{record['progress']['total']} {record['progress'].get('unit', '')}s")
    if history:
        curves(history)
        for r in history:  # what the run did about itself (a divergence it recovered from)
            if r.get("event"):
                st.warning(f"Epoch {r['epoch']}: {r['event']}")
    run_controls(record)
    return record["status"]


def confusion_side(names: list[str]) -> int:
    """The matrix's side in pixels: a readable cell per class, within bounds."""
    return min(CONFUSION_MAX, max(CONFUSION_MIN, CONFUSION_CELL * len(names)))


def confusion_chart(cells: pd.DataFrame, names: list[str]) -> alt.LayerChart:
    """Cells big enough to read, with white numbers on dark cells and black ones on light cells."""
    side = confusion_side(names)
    half = max(1, int(cells["count"].max())) / 2
    base = alt.Chart(cells, title="Confusion matrix (best epoch, test set)", width=side, height=side).encode(
        x=alt.X("predicted:N", sort=names), y=alt.Y("true:N", sort=names))
    rects = base.mark_rect().encode(color=alt.Color("count:Q", scale=alt.Scale(scheme="blues")),
                                    tooltip=["true", "predicted", "count"])
    text = base.mark_text(fontSize=14 if len(names) <= 10 else 10).encode(
        text="count:Q", color=alt.condition(alt.datum.count > half, alt.value("white"), alt.value("black")))
    return rects + text


def worst_images(record: dict, worst: list[dict]) -> None:
    """The test images the model got most confidently wrong: thumbnails, then the table with their ids."""
    st.markdown("**Most confidently wrong** (true → predicted, the probability given to the true class):")
    shown = [(item, train_request.evaluation_image(config, record["params"], item)) for item in worst]
    shown = [(item, image) for item, image in shown if image is not None]
    if shown:
        st.image([image for _, image in shown], width=WORST_THUMB, caption=[
            f"{item['true']} → {item['predicted']} ({item['true_probability']:.0f} %)" for item, _ in shown])
    st.dataframe(pd.DataFrame(worst).round(1), key="train_worst", hide_index=True)


def evaluation(record: dict) -> None:
    """The best epoch's report: confusion matrix, per-class precision/recall, the most confused pairs and the
    most confidently wrong test images (single-label), or per-label metrics (multi-label)."""
    found = (record["result"] or {}).get("evaluation") or {}
    names = found.get("class_names", [])
    if "confusion_matrix" in found:
        cells = pd.DataFrame([{"true": names[i], "predicted": names[j], "count": n}
                              for i, row in enumerate(found["confusion_matrix"]) for j, n in enumerate(row)])
        side = confusion_side(names)
        # Fixed pixel sizes: Streamlit otherwise shrinks a layered chart of nominal axes to a few dozen pixels.
        st.altair_chart(confusion_chart(cells, names), key="train_confusion", width=side + 160, height=side + 120)
        if found.get("per_class"):
            st.subheader("Per-class precision and recall (best epoch, %)")
            st.dataframe(pd.DataFrame(found["per_class"]).T.round(1), key="train_per_class")
        if found.get("confused_pairs"):
            st.markdown("**Most confused:** " + "; ".join(
                f"{p['true']} taken for {p['predicted']} ({p['count']}×)" for p in found["confused_pairs"]))
        if found.get("worst"):
            worst_images(record, found["worst"])
    elif "per_class" in found:
        st.subheader("Per-label metrics (best epoch)")
        st.dataframe(pd.DataFrame(found["per_class"]).T, key="train_per_class")


launch_form()
st.divider()
st.subheader("Runs")
runs = store.list_jobs(kind="train", limit=RUNS_SHOWN)
if not runs:
    st.info("No training runs yet.")
    st.stop()
if "train_next" in st.session_state:  # a run launched or resumed on the last pass: show it
    st.session_state["train_run"] = st.session_state.pop("train_next")
by_id = {r["id"]: r for r in runs}
job_id = st.selectbox("Run", list(by_id), format_func=lambda i: run_label(by_id[i]), key="train_run")
status = job_state(config, store, job_id, warn=False)["status"]
live_panel("train_panel", status, lambda: live_run(job_id))
if not is_live(status):
    evaluation(store.get_job(job_id))
