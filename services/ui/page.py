"""What every Streamlit page shares: the cached catalog and config, the signed-in user, role checks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from pydantic import ValidationError

from services.app import rules
from services.app.rules import Forbidden, allows
from services.app.validation import field_limits as field_limits  # pages read request bounds through here
from services.platform.config import Config
from services.storage.store import Store, open_store
from services.ui import sessions


@dataclass(frozen=True)
class Page:
    """A page of the menu: its script, title and icon, and the action it is for (whose rule says who sees it)."""

    path: str
    title: str
    icon: str
    action: str

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles besides admin that see the page: those of its action's rule (``services.app.rules``)."""
        return rules.rule_of(self.action).roles or ()

    def open_to(self, user: Mapping | None) -> bool:
        """Whether ``user`` may use the page (admin may use every page)."""
        return rules.may(self.action, user)


# The only list of pages. Who sees each is its action's rule: the menu and the checks read the same table.
PAGES = (
    Page("pages/home.py", "Home", ":material/home:", "home"),
    Page("pages/segment.py", "Segment", ":material/content_cut:", "objects.segment"),
    Page("pages/objects.py", "Objects", ":material/category:", "objects.read"),
    Page("pages/augment.py", "Augment", ":material/auto_awesome_mosaic:", "datasets.generate"),
    Page("pages/datasets.py", "Datasets", ":material/dataset:", "datasets.import"),
    Page("pages/train.py", "Train", ":material/model_training:", "train.submit"),
    Page("pages/tune.py", "Tune", ":material/tune:", "tune.submit"),
    Page("pages/models.py", "Models", ":material/inventory_2:", "models.manage"),
    Page("pages/predict.py", "Predict", ":material/online_prediction:", "predict"),
    Page("pages/annotate.py", "Annotate", ":material/label:", "annotations.save"),
    Page("pages/jobs.py", "Jobs", ":material/work_history:", "jobs.read"),
)


def page_of(script: str) -> Page:
    """The page whose script is ``script`` (its ``__file__``)."""
    name = f"pages/{Path(script).name}"
    return next(page for page in PAGES if page.path == name)


def page_roles(script: str) -> tuple[str, ...]:
    """The roles that may use the page whose script is ``script`` (its ``__file__``)."""
    return page_of(script).roles


@st.cache_resource
def get_config() -> Config:
    return Config.from_env()


@st.cache_resource
def get_store() -> Store:
    return open_store(get_config().data_dir)


PAGE_KEY = "page_script"  # session state: the script of the page this session shows (set by require_page)


def current_user() -> dict | None:
    """The user this run of the app signed in (``app.py`` re-reads it at the start of every full run)."""
    return st.session_state.get("user")


def signed_in_user() -> dict | None:
    """The user of this browser's session (this tab's token, else the cookie's), read afresh from the catalog.

    A deleted or re-roled user's session is over: None, and the session state forgets them.
    """
    token = st.session_state.get(sessions.STATE_KEY) or st.context.cookies.get(sessions.COOKIE)
    user = sessions.resume(get_store(), token)
    if user is None:
        for key in (sessions.STATE_KEY, "user"):
            st.session_state.pop(key, None)
        return None
    st.session_state[sessions.STATE_KEY], st.session_state["user"] = token, user
    return user


def refusal(user: dict | None, roles: tuple[str, ...]) -> str | None:
    """Why ``user`` may not use a page for ``roles``, in the page's words; None when they may."""
    if user is None:
        return "Please sign in first."
    if not allows(roles, user):
        return f"Your role ({user['role']}) may not use this page."
    return None


def require_role(*roles: str) -> dict:
    """The signed-in user if their role may see this page; otherwise an error and a stop."""
    user = current_user()
    problem = refusal(user, roles)
    if problem:
        fail(problem)
    return user


def require_page(script: str) -> dict:
    """The signed-in user if their role may use the page ``script`` (its ``__file__``), as ``PAGES`` says.

    The page is remembered: its live panels and buttons, which re-run without the rest of the app
    (:func:`acting_user`), check against the same roles.
    """
    st.session_state[PAGE_KEY] = script
    return require_role(*page_roles(script))


def page_refusal_now() -> str | None:
    """Why the session may not act on its page any more (signed out, deleted, re-roled); None when it may.

    For the parts of a page that run without ``app.py`` re-checking the sign-in (a fragment's redraws and
    the buttons inside it): the session is resumed from the catalog and the page's roles read from ``PAGES``.
    """
    script = st.session_state.get(PAGE_KEY)
    return refusal(signed_in_user(), page_roles(script) if script else ())


def acting_user() -> dict:
    """The user, re-read now, if they may still use their page (for an action about to run).

    Raises:
        Forbidden: with the page's message (signed out, or the role may not use the page).
    """
    problem = page_refusal_now()
    if problem:
        raise Forbidden(problem)
    return current_user()


def actor() -> rules.Actor:
    """The user, re-read now (:func:`acting_user`), as the actor of an action of ``services.app``.

    Raises:
        Forbidden: with the page's message (signed out, or the role may not use the page).
    """
    return rules.Actor(acting_user(), get_config(), get_store())


def fail(message: str) -> None:
    """Show a failure the way every page does (never a traceback) and stop the script."""
    st.error(message)
    st.stop()


# --------------------------------------------------------------------------------- messages in page words
_OBJECT_REPR = re.compile(r" ?<[\w.]+ object at 0x[0-9a-fA-F]+>")
_PYTHON_NAMES = re.compile(r"\b[A-Z]\w*(?:Error|Exception): ")


def page_message(error: Exception | str, labels: Mapping[str, str] | None = None) -> str:
    """An error in the page's words: request field names become the labels of the page's widgets.

    ``labels`` maps a field (``ean``, ``angels``) to its widget label (``New class name``); a list item
    (``angels.0``) reads as ``Training angles (°), value 1``. Python object representations are removed.
    """
    labels = labels or {}
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        text = f"{_field_label(first['loc'], labels)}: {first['msg'].removeprefix('Value error, ')}"
    else:
        text = str(error)
        field = getattr(error, "field", None)
        if field and text.startswith(f"{field}: "):
            text = f"{_field_label(tuple(field.split('.')), labels)}: {text[len(field) + 2:]}"
    for name, label in labels.items():
        # Quoted names anywhere; bare ones only when they cannot be an ordinary word ("trainset_dir", not "file").
        quote = "'" if "_" not in name and "." not in name else "'?"
        text = re.sub(rf"(?<![\w.]){quote}{re.escape(name)}{quote}(?![\w])", lambda _m, label=label: label, text)
    return _PYTHON_NAMES.sub("", _OBJECT_REPR.sub("", text)).replace(" )", ")")


def _field_label(loc: tuple, labels: Mapping[str, str]) -> str:
    parts = [str(p) for p in loc]
    label, rest = (parts[0] if parts else ""), parts[1:]
    for n in range(len(parts), 0, -1):  # the longest labelled prefix: "space.model_name" before "space"
        if ".".join(parts[:n]) in labels:
            label, rest = labels[".".join(parts[:n])], parts[n:]
            break
    index = next((p for p in rest if p.isdigit()), None)
    return f"{label}, value {int(index) + 1}" if index is not None else label


# ------------------------------------------------------------------------------------ the dataset picker
DATASET_KIND_LABELS = {"hdf5": "HDF5 file", "custom": "Class folders", "newdata": "Annotated images"}
DATASET_FIELD_LABELS = {"hdf5_path": "HDF5 file", "trainset_dir": "Training folder", "testset_dir": "Test folder",
                        "dataset": "Dataset", "num_classes": "Classes"}


@st.cache_data(ttl=30, show_spinner=False)
def _folder_choices(data_dir: str, changed: int) -> list[str]:
    """Class-folder trees a person put in DATA_DIR (listings are not free, so cached: ``data_dir`` and its
    modification time key the cache, so a tree copied in shows at the next rerun)."""
    from services.app.train_folders import image_folder_candidates

    return image_folder_candidates(get_config())


def dataset_picker(prefix: str) -> dict:
    """The one dataset picker of Train and Tune: only real datasets, a test folder apart from the training one.

    Args:
        prefix: the page's widget key prefix.

    Returns:
        The request fields the picker sets (``dataset`` and the paths its kind needs).
    """
    from engine.dataset_kinds import list_dataset_kinds
    from services.app.train_folders import available_hdf5

    config = get_config()
    files = available_hdf5(config, get_store())
    kinds = list(list_dataset_kinds())
    default = "hdf5" if files else "custom"
    kind = st.radio("Dataset", kinds, index=kinds.index(default) if default in kinds else 0, horizontal=True,
                    format_func=lambda k: DATASET_KIND_LABELS.get(k, k), key=f"{prefix}_dataset")
    if kind == "hdf5":
        if not files:
            st.info("No HDF5 datasets yet: generate one on the Augment page (or put one in DATA_DIR/datasets).")
        return {"dataset": kind, "hdf5_path": st.selectbox("HDF5 file (DATA_DIR/datasets)", files,
                                                             key=f"{prefix}_hdf5") if files else None}
    if kind == "custom":
        changed = config.data_dir.stat().st_mtime_ns
        return {"dataset": kind, **_folder_fields(prefix, _folder_choices(str(config.data_dir), changed))}
    st.caption("The annotated images of the Annotate page (multi-label, one output per label of the label set).")
    return {"dataset": kind}


def _folder_fields(prefix: str, folders: list[str]) -> dict:
    if len(folders) < 2:
        st.info("Training needs two separate class-folder trees in DATA_DIR, one for training and one for "
                "testing (<folder>/<class>/*.png); found " + (", ".join(folders) or "none") + ".")
        return {"trainset_dir": None, "testset_dir": None}
    left, right = st.columns(2)
    named = [f for f in folders if "train" in f.lower()]
    train = left.selectbox("Training folder", folders, index=folders.index(named[0]) if named else 0,
                           key=f"{prefix}_trainset")
    # Keyed by the training folder: choosing another one proposes its own test folder again.
    test = right.selectbox("Test folder", folders, index=folders.index(_test_partner(train, folders)),
                           key=f"{prefix}_testset_{train}")
    return {"trainset_dir": train, "testset_dir": test}


def _test_partner(train: str, folders: list[str]) -> str:
    """The likely test folder of ``train`` (TRAIN_x -> TEST_x, .../train -> .../test), never ``train`` itself."""
    for old, new in (("TRAIN", "TEST"), ("train", "test"), ("Train", "Test")):
        guess = train.replace(old, new)
        if guess != train and guess in folders:
            return guess
    return next(f for f in folders if f != train)
