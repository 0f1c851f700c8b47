"""The playground's live panel: status, notices, metrics, and the charts with the run history.

Everything here reads the trainer from session state and draws it; nothing trains.
"""

from __future__ import annotations

import math

import streamlit as st

from nora_core.fields import field_specs
from nora_core.spectra import average_normalised_spectrum
from nora_core.trainer import PairedTrainer, TrainConfig

from app.ui import charts, classroom, live, session
from app.ui.widgets import format_number, log_grid, url_checkbox

DECISION_RESOLUTION = 70
LOSS_TITLES = {"linear_teacher": "MSE", "nonlinear_teacher": "MSE",
               "classification_2d": "cross-entropy"}


def suggested_learning_rate(lr: float) -> float:
    """Return the largest value of the learning-rate grid at or below lr / 10."""
    spec = next(spec for spec in field_specs(TrainConfig) if spec.name == "lr")
    grid = log_grid(spec.minimum, spec.maximum)
    lower = [value for value in grid if value <= lr / 10 * (1 + 1e-9)]
    return lower[-1] if lower else grid[0]


# Above this adapter scale s a non-finite loss more likely comes from lora_alpha than from lr.
LARGE_SCALE = 100.0


def divergence_message(name: str, step: int, lr: float, scale: float = 1.0) -> str:
    """Return the notice shown for a run whose loss became non-finite.

    Args:
        name: the run name, e.g. "LoRA".
        step: the step at which the loss became non-finite.
        lr: the learning rate in use.
        scale: the run's adapter scale s; a large one is named as a cause too.
    """
    text = (f"{name} diverged at step {step}: the loss became non-finite. Lower the learning "
            f"rate (e.g. to {format_number(suggested_learning_rate(lr))}) and press Reset.")
    if scale > LARGE_SCALE:
        text += (f" Its scale s = {scale:.3g} is large too: lower lora_alpha (empty means "
                 "lora_alpha = r, so s = 1).")
    return text


def floor_lines(trainer: PairedTrainer, settings: session.PlaygroundSettings) -> list[charts.FloorLine]:
    """Return the theory lines of the task: linear ceiling and rank-r floor, or Eckart–Young."""
    r = settings.lora.r
    any_rank = trainer.floor(None)
    at_rank = trainer.floor(r)
    lines = []
    if settings.task_name == "linear_teacher":
        if at_rank is not None:
            lines.append(charts.FloorLine(at_rank, f"Eckart–Young floor at LoRA r={r}"))
        if any_rank is not None and any_rank > 0:
            lines.append(charts.FloorLine(any_rank, "noise floor"))
        return lines
    if any_rank is not None:
        lines.append(charts.FloorLine(any_rank, "linear ceiling (any rank)"))
    if at_rank is not None and (any_rank is None or at_rank > any_rank * (1 + 1e-6)):
        lines.append(charts.FloorLine(at_rank, f"best linear map of rank {r}"))
    return lines


def _last(rows: list[dict], key: str) -> float | None:
    for row in reversed(rows):
        value = row.get(key)
        if value is not None and math.isfinite(value):
            return value
    return None


def _status(trainer: PairedTrainer) -> None:
    rate = live.steps_per_second()
    if session.is_playing():
        state = "waiting for a slot" if session.waiting_message() else "playing"
    else:
        state = "paused"
    speed = f" · {rate:.0f} steps/s" if rate else ""
    st.markdown(f"**step {trainer.step}** · {state}{speed} · device `{trainer.device}`")
    st.caption(classroom.status_line())


def _metrics(trainer: PairedTrainer) -> None:
    columns = st.columns(len(trainer.runs))
    for column, (name, run) in zip(columns, trainer.runs.items()):
        val_loss = _last(run.history, "val_loss")
        rank = _last(run.history, "effective_rank_output")
        with column:
            st.markdown(f"**{run.config.label()}**")
            left, middle, right = st.columns(3)
            left.metric("validation loss", "n/a" if val_loss is None else f"{val_loss:.4g}")
            middle.metric("trainable parameters", f"{run.trainable:,}")
            right.metric("effective rank", "n/a" if not rank else f"{rank:.2f}",
                         help="exp(entropy) of the normalised output-view spectrum; n/a while "
                              "the update is all zero.")


def _spectra(trainer: PairedTrainer) -> None:
    output_view = {name: average_normalised_spectrum(run.output_spectra)
                   for name, run in trainer.runs.items()}
    weight_view = {name: average_normalised_spectrum(run.weight_spectra)
                   for name, run in trainer.runs.items() if run.config.is_linear}
    st.plotly_chart(charts.spectra_figure(output_view, weight_view), key="chart_spectra")
    st.caption(f"Measured every {trainer.train_config.spectrum_every} steps on held-out inputs. "
               "At step 0 the update is all zero and has no spectrum.")


def _decision_regions(trainer: PairedTrainer) -> None:
    task = trainer.task
    validation = task.validation_batches()[0]
    base = task.base_model().to(trainer.device)
    panels = [(f"base model: accuracy {task.accuracy(base, validation):.0%}",
               *task.decision_grid(base, DECISION_RESOLUTION))]
    # accuracy and decision_grid switch the model to eval mode, which must not happen
    # while an older script run of this session is still training it.
    with session.model_lock():
        for name, run in trainer.runs.items():
            title = f"{name}: accuracy {task.accuracy(run.model, validation):.0%}"
            if run.diverged:
                title = f"{name}: diverged"
            panels.append((title, *task.decision_grid(run.model, DECISION_RESOLUTION)))
    points, labels = task.train_points()
    st.plotly_chart(charts.decision_figure(panels, points, labels), key="chart_decision")


def _notices(trainer: PairedTrainer, settings: session.PlaygroundSettings) -> None:
    freed = session.resources().freed_reason
    if freed:
        st.info(f"The server freed this tab's earlier run because {freed}; its curves are in "
                "the run history. These runs start again at step 0.")
    if session.stop_note():
        st.info(session.stop_note(), icon=":material/flag:")
    if session.train_error():
        st.error(f"{session.train_error()}. Press Reset to start again.")
    for name, run in trainer.runs.items():
        if run.diverged:
            st.error(divergence_message(name, run.diverged_at, settings.train.lr,
                                        run.config.scale))
    if trainer.step == 0 and not session.is_playing():
        st.info("Press Play to train both adapters live, or Step to train "
                f"{settings.train.eval_every} steps.")


def _loss_chart(trainer: PairedTrainer, settings: session.PlaygroundSettings) -> None:
    histories = {name: run.history for name, run in trainer.runs.items()}
    diverged = {name: run.diverged_at for name, run in trainer.runs.items()}
    past = session.resources().history.curves(settings.task_name)
    left, right = st.columns([3, 1])
    with left:
        log_y = url_checkbox("log-scale loss axis", "log_y", default=False, toggle=True)
    with right:
        st.button("Clear history", key="clear_history", icon=":material/delete_sweep:",
                  disabled=not past, on_click=session.clear_history,
                  help="Remove the dimmed curves of earlier runs from the loss chart.")
    figure = charts.loss_figure(histories, floor_lines(trainer, settings), log_y=log_y,
                                diverged=diverged, past=past,
                                y_title=LOSS_TITLES.get(settings.task_name, "loss"))
    st.plotly_chart(figure, key="chart_loss")
    if past:
        size = classroom.limits().history_size
        st.caption(f"Dimmed: validation curves of earlier runs on this task (the last {size} "
                   "runs are kept; Reset adds the current one).")


def render_live() -> None:
    """Draw the trainer's state: status, notices, metrics, loss, spectra, effective rank."""
    trainer = session.trainer()
    settings = session.active_settings()
    if trainer is None or settings is None:
        st.info("No trainer yet: fix the settings shown in red in the sidebar.")
        return

    _status(trainer)
    _notices(trainer, settings)
    _metrics(trainer)
    _loss_chart(trainer, settings)

    if hasattr(trainer.task, "decision_grid"):
        _decision_regions(trainer)

    left, right = st.columns(2)
    with left:
        _spectra(trainer)
    with right:
        histories = {name: run.history for name, run in trainer.runs.items()}
        ranks = {name: run.config.r for name, run in trainer.runs.items()}
        st.plotly_chart(charts.effective_rank_figure(histories, ranks), key="chart_rank")


__all__ = ["divergence_message", "floor_lines", "render_live", "suggested_learning_rate"]

