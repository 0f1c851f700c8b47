"""The Language-model page's live-training loop: time-boxed chunks in a fragment, in a run slot.

While the user plays, a fragment with `run_every` reruns, draws the charts and trains one
chunk. The server's limits of `app.ui.classroom` apply as on the playground: at most
`max_steps` steps per run, `cpu_threads_per_run` torch threads, and one of
`max_concurrent_runs` run slots while training. Training pauses at each spectrum
measurement to copy the per-layer spectra into a `SpectrumSnapshot`, for the time slider.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import streamlit as st

from nora_core.trainer import PairedTrainer

from app.ui import classroom, live
from app.ui.lm_session import (SNAPSHOTS, STOP_NOTE, THROUGHPUT, TRAIN_ERROR, TRAIN_LOCK, WAITING,
                               is_playing, set_playing, trainer)
from app.ui.lm_spectra import append_snapshot, take_snapshot

logger = logging.getLogger(__name__)

# A step of both runs on the bundled model took 0.15-1 s on one CPU thread (batch 8, a
# loaded 2-core VM). A chunk therefore lasts at least MIN_CHUNK_SECONDS, and the rest of
# RUN_EVERY draws the charts.
RUN_EVERY = 1.0
MIN_CHUNK_SECONDS = 0.6
MAX_CHUNK_STEPS = 10_000
# Maximum wait, in seconds, for a chunk that an older script run of the session still trains.
LOCK_TIMEOUT = 10.0
# Seconds between slot requests of a session that waits for a run slot.
WAIT_POLL_SECONDS = 2.0


def _advance_with_snapshots(current: PairedTrainer, steps: int,
                            max_seconds: float | None) -> list[dict]:
    """Train in pieces that end at spectrum measurements, and snapshot each measurement."""
    every = current.train_config.spectrum_every
    started = time.perf_counter()
    rows: list[dict] = []
    remaining = steps
    while remaining > 0 and not current.finished:
        piece = min(remaining, every - current.step % every)
        left = None if max_seconds is None else max_seconds - (time.perf_counter() - started)
        if left is not None and left <= 0:
            break
        before = current.step
        rows += current.advance(piece, max_seconds=left)
        remaining -= current.step - before
        if current.step == before:
            break
        if current.step % every == 0:
            append_snapshot(st.session_state[SNAPSHOTS], take_snapshot(current))
    return rows


def _stop(note: str | None = None) -> None:
    set_playing(False)
    if note:
        st.session_state[STOP_NOTE] = note


def _take_slot(playing: bool) -> bool:
    slots = classroom.run_slots()
    if slots.acquire(classroom.session_id()):
        st.session_state[WAITING] = None
        return True
    then = "yours starts when one finishes" if playing else "press Step again when one finishes"
    st.session_state[WAITING] = (f"{slots.holders()} of {slots.capacity} training slots of this "
                                 f"server are in use; {then}.")
    return False


def train_for(steps: int, max_seconds: float | None, *, keep_slot: bool) -> list[dict]:
    """Advance the trainer by up to `steps` steps or `max_seconds`, inside a run slot.

    The server's limits apply as on the playground: at most `max_steps` steps per run,
    `cpu_threads_per_run` torch threads, and a run slot per training session. A failure
    inside training pauses the loop and is kept for display (see `train_error`). The
    session's lock keeps a newer script run from stepping the optimisers while an older
    run (Streamlit's fast reruns) is still inside `advance`.

    Args:
        steps: the maximum number of steps to train.
        max_seconds: the time box of the chunk, None for no time box.
        keep_slot: keep the run slot afterwards (Play); False frees it at once (Step).
    """
    current = trainer()
    if current is None or current.finished:
        return []
    limits = classroom.limits()
    remaining = limits.max_steps - current.step
    if remaining <= 0:
        _stop(f"These runs reached the server's limit of {limits.max_steps:,} steps per run. "
              "Press Reset to start new runs.")
        return []
    if not _take_slot(playing=keep_slot):
        return []
    lock: threading.Lock = st.session_state[TRAIN_LOCK]
    if not lock.acquire(timeout=LOCK_TIMEOUT):
        logger.warning("skipped an LM training chunk: the previous chunk still runs")
        return []
    before = current.step
    started = time.perf_counter()
    try:
        with live.training_threads(limits.cpu_threads_per_run):
            rows = _advance_with_snapshots(current, min(steps, remaining), max_seconds)
    except (RuntimeError, ValueError) as error:
        logger.exception("LM training failed at step %d", current.step)
        _stop()
        st.session_state[TRAIN_ERROR] = f"Training failed at step {current.step}: {error}"
        return []
    finally:
        lock.release()
        if not keep_slot:
            classroom.run_slots().release(classroom.session_id())
    st.session_state[THROUGHPUT].append((current.step - before, time.perf_counter() - started))
    if current.step >= limits.max_steps:
        _stop(f"These runs reached the server's limit of {limits.max_steps:,} steps per run. "
              "Press Reset to start new runs.")
    elif current.finished:
        _stop()
    return rows


def steps_per_second() -> float | None:
    """Return wall-clock step pairs per second over the recent chunks, evaluation included."""
    chunks = st.session_state.get(THROUGHPUT) or ()
    seconds = sum(s for _, s in chunks)
    if seconds <= 0:
        return None
    return sum(n for n, _ in chunks) / seconds


def waiting_message() -> str | None:
    """Return why this session waits for a run slot, or None."""
    return st.session_state.get(WAITING)


def stop_note() -> str | None:
    """Return why training stopped by itself (the step limit), or None."""
    return st.session_state.get(STOP_NOTE)


def chunk_seconds() -> float:
    """Return the training time per live update: the server's, at least MIN_CHUNK_SECONDS."""
    return max(classroom.limits().chunk_seconds, MIN_CHUNK_SECONDS)


def live_fragment(render: Callable[[], None], *, run_every: float = RUN_EVERY) -> None:
    """Declare the live fragment: it renders, and while playing trains one chunk per rerun.

    Every change of mode (start, pause, waiting for a slot, finished) goes through a full
    rerun, because only a full run sets or drops the fragment's timer.

    Args:
        render: draws the metrics and charts from the trainer in session state.
        run_every: seconds between fragment reruns while playing.
    """
    training = is_playing() and trainer() is not None
    waiting = training and waiting_message() is not None

    @st.fragment(run_every=run_every if training and not waiting else None)
    def lm_live_panel() -> None:
        # Drawing before training keeps the charts visible while the chunk runs.
        render()
        if not is_playing():
            return
        train_for(MAX_CHUNK_STEPS, chunk_seconds(), keep_slot=True)
        if not is_playing() or waiting_message() is not None:
            st.rerun()

    lm_live_panel()
    if waiting:
        _waiting_panel()
    elif waiting_message() is not None:
        st.info(waiting_message(), icon=":material/hourglass_top:")


@st.fragment(run_every=WAIT_POLL_SECONDS)
def _waiting_panel() -> None:
    if not is_playing():
        return
    if _take_slot(playing=True):
        st.rerun()
    st.info(waiting_message(), icon=":material/hourglass_top:")
