"""The Language-model page's panels: live metrics and charts, spectra over time, samples.

Everything here reads the trainer from session state and draws it. Only the sample and
answer panels run models, and they run copies (see `lm_session.generate_samples`).
"""

from __future__ import annotations

import math

import streamlit as st

from nora_core.lm import PROCEDURES
from nora_core.trainer import PairedTrainer

from app.ui import charts, classroom, lm_charts, lm_live, lm_session
from app.ui.lm_spectra import rank_grid
from app.ui.panels import divergence_message

DEFAULT_MAX_NEW_TOKENS = 80
DEFAULT_ANSWER_PROMPTS = 16
PROMPT = "lm.sample.prompt"
# The task (name, config) whose held-out example was put into the prompt box.
PROMPT_TASK = "lm_prompt_task"
SPECTRA_STEP = "lm.spectra.step"
# The latest measured step when the slider was last drawn.
LATEST_MEASUREMENT = "lm_latest_measurement"


def format_perplexity(value: float | None, diverged: bool) -> str:
    """Return a perplexity for a metric tile: "diverged", "overflow", "n/a" or the number."""
    if diverged:
        return "diverged"
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "overflow"
    return f"{value:.4g}"


def _status(trainer: PairedTrainer) -> None:
    rate = lm_live.steps_per_second()
    text = f"**step {trainer.step}**"
    if rate is not None:
        text += f" · {rate:.2f} steps/s (both runs, validation included)"
    elif trainer.step == 0:
        text += " · not started"
    st.markdown(text)
    slots = classroom.run_slots()
    st.caption(f"Server: {slots.holders()} of {slots.capacity} training slots in use, "
               "shared with the other pages.")


def _metrics(trainer: PairedTrainer) -> None:
    columns = st.columns(len(trainer.runs))
    for column, (name, run) in zip(columns, trainer.runs.items()):
        last = run.last_finite
        base_parameters = sum(p.numel() for p in run.model.parameters()) - run.trainable
        with column:
            st.markdown(f"**{run.config.label()}**")
            loss_tile, perplexity_tile, parameter_tile = st.columns(3)
            val_loss = last.get("val_loss")
            loss_tile.metric("validation loss", "diverged" if run.diverged else
                             ("n/a" if val_loss is None else f"{val_loss:.4f}"))
            perplexity_tile.metric("perplexity",
                                   format_perplexity(last.get("val_perplexity"), run.diverged),
                                   help="exp(validation loss); bytes for the bundled model.")
            parameter_tile.metric("trainable parameters", f"{run.trainable:,}",
                                  help=f"{run.trainable / base_parameters:.2%} of the "
                                       f"{base_parameters:,} base parameters.")


def _step_slider(steps: list[int]) -> int:
    """Draw the slider over measured steps; at the latest step it follows new measurements."""
    previous_latest = st.session_state.get(LATEST_MEASUREMENT)
    chosen = st.session_state.get(SPECTRA_STEP)
    if chosen is None or chosen == previous_latest or chosen not in steps:
        # Set through session state, without a widget default, so Streamlit keeps no stale value.
        st.session_state[SPECTRA_STEP] = steps[-1]
    st.session_state[LATEST_MEASUREMENT] = steps[-1]
    return st.select_slider(
        "measured step", options=steps, key=SPECTRA_STEP,
        help="Spectra are measured every 'spectra every' steps on held-out text. At the "
             "latest measurement the slider follows new ones; move it back to look at an "
             "earlier step.")


def _spectra(trainer: PairedTrainer) -> None:
    snapshots = lm_session.snapshots()
    if not snapshots:
        return
    ranks = {name: run.config.r for name, run in trainer.runs.items()}
    steps = [snapshot.step for snapshot in snapshots]
    chosen = steps[-1]
    if len(steps) > 1:
        chosen = _step_slider(steps)
    snapshot = snapshots[steps.index(chosen)]
    grids = {name: rank_grid(snapshot.effective_rank[name]) if name in snapshot.effective_rank
             else None for name in trainer.runs}
    st.plotly_chart(lm_charts.rank_heatmap_figure(grids, ranks, snapshot.step),
                    key="lm.chart.heatmap")
    left, right = st.columns(2)
    with left:
        averages = {name: snapshot.average.get(name) for name in trainer.runs}
        st.plotly_chart(lm_charts.average_spectrum_figure(averages, snapshot.step),
                        key="lm.chart.spectrum")
    with right:
        histories = {name: run.history for name, run in trainer.runs.items()}
        st.plotly_chart(charts.effective_rank_figure(histories, ranks), key="lm.chart.rank")
    st.caption("Output view: singular values of the centred adapter outputs Δy on held-out "
               "text, in eval mode. Effective rank exp(H(σ/Σσ)) lies between 1 and r; at "
               "step 0 the update is all zero and has none (empty cells).")


def render_live() -> None:
    """Draw the trainer's state: status, notices, metrics, loss, perplexity and spectra."""
    trainer = lm_session.trainer()
    settings = lm_session.active_settings()
    if trainer is None or settings is None:
        st.info("No runs yet: fix the settings shown in red in the sidebar.")
        return

    _status(trainer)
    if lm_session.train_error():
        st.error(f"{lm_session.train_error()}. Press Reset to start again.")
    for name, run in trainer.runs.items():
        if run.diverged:
            st.error(divergence_message(name, run.diverged_at, settings.train.lr,
                                        run.config.scale))
    if trainer.step == 0 and not lm_session.is_playing():
        st.info("Press Play to train both adapters live, or Step to train "
                f"{settings.train.eval_every} steps.")
    _metrics(trainer)

    histories = {name: run.history for name, run in trainer.runs.items()}
    diverged = {name: run.diverged_at for name, run in trainer.runs.items()}
    left, right = st.columns(2)
    with left:
        st.plotly_chart(charts.loss_figure(histories, diverged=diverged,
                                           y_title="cross-entropy (nats per token)"),
                        key="lm.chart.loss")
    with right:
        st.plotly_chart(lm_charts.perplexity_figure(histories, diverged),
                        key="lm.chart.perplexity")
    st.subheader("Spectra of the adapter outputs")
    _spectra(trainer)


def _prepare_prompt(trainer: PairedTrainer) -> None:
    """Fill the prompt box with a held-out example whenever the runs switch to another task."""
    task = trainer.task
    identity = (task.name, task.config)
    if st.session_state.get(PROMPT_TASK) == identity and PROMPT in st.session_state:
        return
    prompts = task.sample_prompts(1)
    st.session_state[PROMPT] = prompts[0] if prompts else ""
    st.session_state[PROMPT_TASK] = identity


@st.fragment
def render_samples() -> None:
    """Draw the prompt box and the base, LoRA and NoRA continuations side by side."""
    trainer = lm_session.trainer()
    if trainer is None:
        return
    _prepare_prompt(trainer)
    prompt = st.text_area("prompt", key=PROMPT, height=80,
                          help="Each model continues this text greedily (most likely token "
                               "first). The default is a held-out example of the task.")
    tokens_box, button_box = st.columns([3, 1], vertical_alignment="bottom")
    max_new_tokens = tokens_box.slider("max new tokens", 1, 256, DEFAULT_MAX_NEW_TOKENS,
                                       key="lm.sample.max_new_tokens",
                                       help="Generation stops here or at the end-of-sequence "
                                            "token.")
    if button_box.button("Generate", key="lm.generate", icon=":material/edit_note:",
                         width="stretch", help="Continue the prompt with all three models now."):
        lm_session.generate_samples(prompt, max_new_tokens)
    samples = lm_session.samples()
    if samples is None:
        st.caption("Press Generate to compare the base model with both adapted models.")
        return
    st.caption(f"Generated at step {samples.step}, greedy, at most {samples.max_new_tokens} "
               "new tokens; the prompt is not repeated.")
    columns = st.columns(len(samples.texts))
    for column, (name, text) in zip(columns, samples.texts.items()):
        with column:
            st.markdown(f"**{name}**")
            st.code(text or "(empty: the model ended the text at once)", language=None,
                    wrap_lines=True)


@st.fragment
def render_answer_check() -> None:
    """Draw the answer check of the generated reasoning tasks: correct final answers per model."""
    trainer = lm_session.trainer()
    if trainer is None or trainer.task.name not in PROCEDURES:
        return
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    count = left.slider("held-out prompts", 4, 64, DEFAULT_ANSWER_PROMPTS, step=4,
                        key="lm.answers.count",
                        help="Each model continues every prompt greedily (at most 96 new "
                             "tokens), and its last `answer:` line is compared with the "
                             "reference. This takes a few seconds per 16 prompts.")
    if right.button("Check answers", key="lm.answers.check", icon=":material/fact_check:",
                    width="stretch", help="Score all three models on held-out prompts now."):
        lm_session.check_answers(count)
    result = lm_session.accuracy()
    if result is None:
        st.caption("The loss falls long before the answers are right: press Check answers "
                   "to count correct final answers.")
        return
    columns = st.columns(len(result.shares))
    for column, (name, share) in zip(columns, result.shares.items()):
        column.metric(f"{name}: correct answers", "diverged" if share is None else f"{share:.0%}")
    st.caption(f"Checked at step {result.step} on {result.prompts} held-out prompts.")
