"""The Language-model page's run buttons and its notices about settings that wait for Reset."""

from __future__ import annotations

import dataclasses
from typing import Any

import streamlit as st

from nora_core.fields import field_specs

from app.ui import lm_live, lm_session
from app.ui.widgets import format_number, play_pause_buttons, step_button

# Fields listed elsewhere in the changes, or set by the page rather than by the user.
_HIDDEN_FIELDS = {"target_modules", "method", "max_upload_bytes", "model_name", "task"}


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return format_number(value) if isinstance(value, (int, float)) else str(value)


def _field_changes(old: Any, new: Any, owner: str) -> list[str]:
    labels = {spec.name: spec.title for spec in field_specs(type(new))}
    changes = []
    for field in dataclasses.fields(new):
        if field.name in _HIDDEN_FIELDS:
            continue
        before, after = getattr(old, field.name), getattr(new, field.name)
        if field.name == "lora_alpha" and old.lora_alpha == old.r and new.lora_alpha == new.r:
            continue  # lora_alpha follows r on both sides; the r change is listed
        if before != after:
            changes.append(f"{owner}{labels.get(field.name, field.name)}: "
                           f"{_show(before)} → {_show(after)}")
    return changes


def pending_changes(active: lm_session.LMSettings, requested: lm_session.LMSettings) -> list[str]:
    """List, as "label: old → new", the settings that differ, except the learning rate.

    The learning rate is left out because it applies to a running trainer at once.
    """
    changes = []
    if active.task.model_name != requested.task.model_name:
        changes.append(f"base model: {active.task.model_name} → {requested.task.model_name}")
    if active.task.task != requested.task.task:
        changes.append(f"task: {active.task.task} → {requested.task.task}")
    if active.upload_name != requested.upload_name or active.upload != requested.upload:
        changes.append(f"uploaded file: {active.upload_name or 'none'} → "
                       f"{requested.upload_name or 'none'}")
    if active.target_names != requested.target_names:
        changes.append(f"adapted layers: {_show(active.target_names)} → "
                       f"{_show(requested.target_names)}")
    changes += _field_changes(active.task, requested.task, "task ")
    changes += _field_changes(active.lora, requested.lora, "LoRA ")
    changes += _field_changes(active.nora, requested.nora, "NoRA ")
    train_old = dataclasses.replace(active.train, lr=requested.train.lr)
    changes += _field_changes(train_old, requested.train, "")
    return changes


def run_buttons(requested: lm_session.LMSettings | None) -> None:
    """Draw Play, Pause, Step and Reset (keys `lm.play`, `lm.pause`, `lm.step`, `lm.reset`).

    Reset and Step are handled before Play and Pause are drawn, so those two buttons show
    the state that results from this run.
    """
    play, pause, step, reset = st.columns(4)
    with reset:
        if st.button("Reset", key="lm.reset", icon=":material/restart_alt:", width="stretch",
                     help="Rebuild both runs from the current settings, at step 0."):
            if requested is None:
                st.session_state[lm_session.BUILD_ERROR] = (
                    "Reset needs valid settings: fix the errors shown in the sidebar")
            else:
                lm_session.reset(requested)
    current = lm_session.trainer()
    if step_button(step, "lm.step", current):
        lm_session.set_playing(False)
        lm_live.train_for(current.train_config.eval_every, None, keep_slot=False)
    play_pause_buttons(play, pause, "lm.", playing=lm_session.is_playing(),
                       finished=current is None or current.finished,
                       set_playing=lm_session.set_playing)


def settings_notices(requested: lm_session.LMSettings | None) -> None:
    """Show a failed build, apply a new learning rate at once, and list changes that wait."""
    error = lm_session.build_error()
    if error:
        st.error(f"Could not build the runs: {error}")
    if lm_live.stop_note():
        st.info(lm_live.stop_note())
    active = lm_session.active_settings()
    if requested is None or active is None:
        return
    old_lr = active.train.lr
    if lm_session.apply_learning_rate(requested.train.lr):
        new_lr = format_number(requested.train.lr)
        st.success(f"Learning rate {format_number(old_lr)} → {new_lr}: "
                   f"applies now, from step {lm_session.trainer().step + 1} on.")
    pending = pending_changes(active, requested)
    if pending:
        listed = "\n".join(f"- {change}" for change in pending)
        st.warning("These changes apply on Reset; the runs go on with the old settings "
                   f"until you press Reset:\n{listed}")
