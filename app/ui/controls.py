"""The playground's settings form and the list of settings that differ from the running trainer.

Every control is built from a config dataclass (`AdapterConfig`, `TrainConfig` and the
toy task's config), so ranges, labels and help texts live on the dataclasses. LoRA and
NoRA share r, lora_alpha, scaling and dropout unless the user asks for a separate NoRA
rank; LoRA is always linear (identity activation), NoRA has its own activation, dropout
position and GLU variant, and LoRA may have its own lora_alpha (the NoRA paper's baseline
fixes lora_alpha = 32 for LoRA while NoRA uses scale 1).

Every control is mirrored in the URL (see `app.ui.url_state`), so a link reproduces them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import streamlit as st

from nora_core.config import AdapterConfig
from nora_core.device import available_devices
from nora_core.fields import field_specs
from nora_core.tasks.toy import TOY_TASK_DESCRIPTIONS, TOY_TASKS, toy_config_class
from nora_core.trainer import TrainConfig

from app.ui import live, session
from app.ui.widgets import (build_config, config_widgets, field_widget, format_number,
                            play_pause_buttons, step_button, url_checkbox, url_selectbox)

DEFAULT_TASK = "nonlinear_teacher"
TASK_LABELS = {
    "nonlinear_teacher": "non-linear teacher (regression)",
    "linear_teacher": "linear teacher (regression)",
    "classification_2d": "2-D classification",
}
SHARED_ADAPTER_FIELDS = ("r", "lora_alpha", "scaling", "lora_dropout")
NORA_FIELDS = ("activation", "dropout_position", "glu_gate")
MAIN_TRAIN_FIELDS = ("lr", "batch_size", "seed", "device")
MORE_TRAIN_FIELDS = ("weight_decay", "grad_clip", "eval_every", "spectrum_every")


def _task_names() -> list[str]:
    names = list(TOY_TASKS)
    if DEFAULT_TASK in names:
        names.remove(DEFAULT_TASK)
        names.insert(0, DEFAULT_TASK)
    return names


def _values(config: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(config, name) for name in names} if config is not None else {}


def task_controls(active: session.PlaygroundSettings | None) -> tuple[str, Any | None]:
    """Draw the task picker and the chosen task's settings; return the name and config.

    Widgets start at the running trainer's settings, so returning from another page (which
    drops this page's widget state) does not list phantom changes.
    """
    names = _task_names()
    start = active.task_name if active and active.task_name in names else names[0]
    name = url_selectbox("task", names, "task.name", default=start,
                         format_func=lambda n: TASK_LABELS.get(n, n),
                         help="The toy problem both adapters learn.")
    st.caption(TOY_TASK_DESCRIPTIONS.get(name, ""))
    config_cls = toy_config_class(name)
    defaults = {}
    if active is not None and active.task_name == name:
        defaults = dataclasses.asdict(active.task_config)
    with st.expander("task settings"):
        values = config_widgets(config_cls, f"task.{name}", defaults=defaults)
    return name, build_config(config_cls, values, "Task settings")


def _alpha_defaults(active: session.PlaygroundSettings | None) -> tuple[float | None, float | None]:
    """Return the starting shared lora_alpha and LoRA's own lora_alpha (None: empty)."""
    if active is None:
        return None, None
    nora = active.nora
    shared = None if nora.lora_alpha == nora.r else nora.lora_alpha
    lora_expected = active.lora.r if shared is None else shared
    own = None if active.lora.lora_alpha == lora_expected else active.lora.lora_alpha
    return shared, own


def adapter_controls(task: Any | None, active: session.PlaygroundSettings | None
                     ) -> tuple[AdapterConfig | None, AdapterConfig | None]:
    """Draw the shared and the per-method adapter settings; return the LoRA and NoRA configs.

    Args:
        task: the toy task, to bound r by the targeted layers' width; None if invalid.
        active: the running trainer's settings, where the widgets start.
    """
    active_lora = active.lora if active else None
    active_nora = active.nora if active else None
    specs = {spec.name: spec for spec in field_specs(AdapterConfig)}

    with st.expander("target layers"):
        default_targets = getattr(task, "target_modules", None)
        shown = ", ".join(default_targets) if default_targets else "every linear layer"
        targets = field_widget(specs["target_modules"], "adapter.target_modules",
                               default=active_lora.target_modules if active_lora else None,
                               placeholder=f"task default: {shown}")
    max_rank = session.rank_limit(task, targets) if task is not None else None

    shared_defaults = _values(active_lora, SHARED_ADAPTER_FIELDS)
    shared_alpha, lora_alpha = _alpha_defaults(active)
    shared_defaults["lora_alpha"] = shared_alpha
    maxima = {"r": max_rank} if max_rank else None

    separate = url_checkbox("separate rank for NoRA", "adapter.separate_r",
                            default=bool(active and active_nora.r != active_lora.r),
                            help="Give NoRA its own rank r, e.g. to compare NoRA at a small "
                                 "rank with LoRA at a large one.")
    shared = config_widgets(AdapterConfig, "adapter", include=SHARED_ADAPTER_FIELDS,
                            defaults=shared_defaults, maxima=maxima,
                            placeholders={"lora_alpha": "= r (scale 1)"},
                            labels={"r": "LoRA rank r" if separate else "rank r (both)"})
    shared["target_modules"] = targets

    nora_values = dict(shared)
    if separate:
        nora_r = active_nora.r if active_nora is not None else shared["r"]
        nora_values["r"] = field_widget(specs["r"], "nora.r", default=nora_r,
                                        maximum=max_rank, label="NoRA rank r")
    with st.expander("NoRA options", expanded=True):
        nora_defaults = {"activation": "silu", "dropout_position": "rank"}
        nora_defaults.update(_values(active_nora, NORA_FIELDS))
        nora_values.update(config_widgets(
            AdapterConfig, "nora", include=NORA_FIELDS, defaults=nora_defaults,
            labels={"activation": "NoRA activation", "dropout_position": "NoRA dropout position"}))
    with st.expander("LoRA options"):
        lora_defaults = {"dropout_position": "input"}
        lora_defaults.update(_values(active_lora, ("dropout_position",)))
        lora_values = dict(shared)
        lora_values.update(config_widgets(
            AdapterConfig, "lora", include=("dropout_position",), defaults=lora_defaults,
            labels={"dropout_position": "LoRA dropout position"}))
        own_alpha = field_widget(specs["lora_alpha"], "lora.lora_alpha", default=lora_alpha,
                                 label="LoRA's own lora_alpha",
                                 placeholder="empty: the shared lora_alpha")
        if own_alpha is not None:
            lora_values["lora_alpha"] = own_alpha
        st.caption("LoRA keeps the identity activation: with an activation it would be NoRA. "
                   "Its own lora_alpha reproduces baselines such as lora_alpha = 32 at every "
                   "rank, where the scale is 32 / r.")

    lora = build_config(AdapterConfig, {**lora_values, "method": "lora", "activation": "identity"},
                        "LoRA settings")
    nora = build_config(AdapterConfig, {**nora_values, "method": "nora"}, "NoRA settings")
    return lora, nora


def train_controls(active: session.PlaygroundSettings | None) -> TrainConfig | None:
    """Draw the optimiser settings; the device list shows only devices this host has."""
    present = available_devices()
    devices = ["cpu", *[d for d in present if d != "cpu"], "auto"]
    defaults = dataclasses.asdict(active.train) if active else {}
    values = config_widgets(TrainConfig, "train", include=MAIN_TRAIN_FIELDS, defaults=defaults,
                            choices={"device": devices})
    with st.expander("more training settings"):
        values.update(config_widgets(TrainConfig, "train", include=MORE_TRAIN_FIELDS,
                                     defaults=defaults))
    return build_config(TrainConfig, values, "Training settings")


def settings_form(use_running: bool = True) -> session.PlaygroundSettings | None:
    """Draw the whole settings form in the sidebar; return the settings, or None if invalid.

    Args:
        use_running: start the widgets at the running trainer's settings where the URL
            has no value. False starts them at the declared defaults, as a lesson needs.
    """
    active = session.active_settings() if use_running else None
    with st.sidebar:
        st.header("Task")
        name, task_config = task_controls(active)
        task = None
        if task_config is not None:
            try:
                task = session.task_for(name, task_config)
            except ValueError as error:
                st.error(f"Task settings: {error}")
                task_config = None
        st.header("Adapters")
        lora, nora = adapter_controls(task, active)
        st.header("Training")
        train = train_controls(active)
    if None in (task_config, lora, nora, train):
        return None
    return session.PlaygroundSettings(name, task_config, lora, nora, train)


def _labels(config_cls: type) -> dict[str, str]:
    return {spec.name: spec.title for spec in field_specs(config_cls)}


def _show(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        return type(value).__name__
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return format_number(value) if isinstance(value, (int, float)) else str(value)


def _alpha_follows_r(config: Any) -> bool:
    return isinstance(config, AdapterConfig) and config.lora_alpha == config.r


def _field_changes(old: Any, new: Any, owner: str) -> list[str]:
    labels = _labels(type(new))
    changes = []
    for field in dataclasses.fields(new):
        before, after = getattr(old, field.name), getattr(new, field.name)
        if field.name == "lora_alpha" and _alpha_follows_r(old) and _alpha_follows_r(new):
            # lora_alpha = r before and after: the scale stays 1, and the r change is listed.
            continue
        if before != after:
            label = labels.get(field.name, field.name)
            changes.append(f"{owner}{label}: {_show(before)} → {_show(after)}")
    return changes


def pending_changes(active: session.PlaygroundSettings,
                    requested: session.PlaygroundSettings) -> list[str]:
    """List, as "label: old → new", the settings that differ, except the learning rate.

    The learning rate is left out because it applies to a running trainer at once.
    """
    if active.task_name != requested.task_name:
        old = TASK_LABELS.get(active.task_name, active.task_name)
        new = TASK_LABELS.get(requested.task_name, requested.task_name)
        return [f"task: {old} → {new}"]
    changes = _field_changes(active.task_config, requested.task_config, "task ")
    changes += _field_changes(active.lora, requested.lora, "LoRA ")
    changes += _field_changes(active.nora, requested.nora, "NoRA ")
    train_old = dataclasses.replace(active.train, lr=requested.train.lr)
    changes += _field_changes(train_old, requested.train, "")
    return changes


def run_buttons(requested: session.PlaygroundSettings | None) -> None:
    """Draw Play, Pause, Step and Reset (keys `play`, `pause`, `step`, `reset`) and act on them.

    Reset and Step are handled before Play and Pause are drawn, so those two buttons show
    the state that results from this run.
    """
    if not session.is_playing():
        session.resources().waiting = None  # a Step that waited is retried by Step
    play, pause, step, reset = st.columns(4)
    with reset:
        if st.button("Reset", key="reset", icon=":material/restart_alt:", width="stretch",
                     help="Start both runs again from the current settings, at step 0. "
                          "The old curves stay on the loss chart, dimmed."):
            if requested is None:
                st.session_state[session.BUILD_ERROR] = ("Reset needs valid settings: fix the "
                                                         "errors shown in the sidebar")
            else:
                session.reset(requested)
                session.resources().freed_reason = None
    current = session.trainer()
    if step_button(step, "step", current):
        session.set_playing(False)
        live.train_for(current.train_config.eval_every, None)
    play_pause_buttons(play, pause, "", playing=session.is_playing(),
                       finished=current is None or current.finished,
                       set_playing=session.set_playing)


def settings_notices(requested: session.PlaygroundSettings | None) -> None:
    """Apply a new learning rate at once and list the changes that wait for Reset."""
    error = session.build_error()
    if error:
        st.error(f"Could not build the runs: {error}")
    active = session.active_settings()
    if requested is None or active is None:
        return
    old_lr = active.train.lr
    if session.apply_learning_rate(requested.train.lr):
        st.success(f"Learning rate {format_number(old_lr)} → {format_number(requested.train.lr)}: "
                   f"applies now, from step {session.trainer().step + 1} on.")
    pending = pending_changes(active, requested)
    if pending:
        listed = "\n".join(f"- {change}" for change in pending)
        st.warning("These changes apply on Reset; the runs go on with the old settings "
                   f"until you press Reset:\n{listed}")
