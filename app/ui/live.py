"""The playground's live training: a training thread per playing session, behind the run-slot
gate, and a fragment that redraws the charts while it trains.

Training runs in a background thread (`TrainingWorker`), in chunks of
`ServerLimits.chunk_seconds` that each hold the session's lock. So the charts and the
training do not wait for each other, and the browser's redraws do not decide how much
time is spent training. The thread calls no Streamlit function and reports through the
session's `PlaygroundResources`.

While the user plays, a fragment with `run_every` reruns every `RUN_EVERY` seconds, marks
the session alive, draws the charts and starts the thread if it is not running. The
thread stops when the user pauses, when the run reaches `max_steps` or every run has
diverged, when training fails, when the server's janitor detects that the tab closed, or
when a connected page has not redrawn for `HEARTBEAT_TIMEOUT` seconds (a frozen tab). Every change of mode goes through a full rerun, because
Streamlit 1.67 sets a fragment's timer only when a full run declares it.

When every slot is taken, the session shows who it waits for and polls in a small
fragment every `WAIT_POLL_SECONDS`; the charts are then drawn once, by the full run, so
waiting students cost the server almost nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

import streamlit as st
import torch

from app.ui import classroom, session

logger = logging.getLogger(__name__)

# Seconds between redraws of the charts while training.
RUN_EVERY = 0.5
# Seconds between slot requests of a session that waits for a slot.
WAIT_POLL_SECONDS = 2.0
# Upper bound of steps per chunk; the time box usually ends a chunk first.
MAX_CHUNK_STEPS = 10_000
# Seconds to wait for the training thread to finish its chunk when stopping it.
STOP_TIMEOUT = 10.0
# Seconds without a redraw after which a connected tab's training stops, until it redraws.
# Chrome runs the timers of a tab hidden for 5 minutes about once a minute, and a client
# with a busy CPU redraws late, so anything much shorter stops training that a student
# still watches. A closed tab stops at once, because the server's janitor detects the
# disconnection.
HEARTBEAT_TIMEOUT = 75.0

_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 0


@contextlib.contextmanager
def training_threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch threads, restoring the previous count afterwards.

    The thread count is global to the process, so sessions training at the same time share
    one setting, and the last one to finish restores the previous count. Toy layers are
    about 64×64, too small to gain from intra-op threads: on a 2-core VM with other jobs
    running, 50 steps of the default non-linear teacher took 2.5 s with 2 torch threads
    and 0.3 s with 1.
    """
    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(count)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)


def waiting_text(holders: int, capacity: int, playing: bool) -> str:
    """Return the message of a session that found every run slot taken."""
    runs = "1 run is" if holders == 1 else f"{holders} runs are"
    then = ("yours starts when one finishes" if playing
            else "press Step again when one finishes")
    return f"{runs} training, the limit is {capacity}; {then}."


def limit_note(max_steps: int) -> str:
    """Return the notice of a run that reached the server's step limit."""
    return (f"This run reached the server's limit of {max_steps:,} steps per run. Press "
            "Reset to start a new run; the curves move to the run history.")


def _take_slot(res: session.PlaygroundResources, session_id: str, playing: bool) -> bool:
    slots = classroom.run_slots()
    if slots.acquire(session_id):
        res.waiting = None
        return True
    res.waiting = waiting_text(slots.holders(), slots.capacity, playing)
    return False


def _train_chunk(res: session.PlaygroundResources, steps: int,
                 max_seconds: float | None) -> str | None:
    """Train one chunk under the session's lock; return why training must stop, or None."""
    current = res.trainer
    if current is None or current.finished:
        return "finished"
    limits = classroom.limits()
    remaining = limits.max_steps - current.step
    if remaining <= 0:
        res.stop_note = limit_note(limits.max_steps)
        return "limit"
    if not res.lock.acquire(timeout=session.LOCK_TIMEOUT):
        logger.warning("skipped a training chunk: the previous chunk still runs")
        return None
    started, before = time.perf_counter(), current.step
    try:
        with training_threads(limits.cpu_threads_per_run):
            current.advance(min(steps, remaining), max_seconds=max_seconds)
    except (RuntimeError, ValueError) as error:
        logger.exception("training failed at step %d", current.step)
        res.train_error = f"Training failed at step {current.step}: {error}"
        return "error"
    finally:
        res.lock.release()
    res.throughput.append((current.step - before, time.perf_counter() - started))
    if current.step >= limits.max_steps:
        res.stop_note = limit_note(limits.max_steps)
        return "limit"
    return "finished" if current.finished else None


class TrainingWorker:
    """Trains one session's runs in a background thread, chunk by chunk, while it may.

    Args:
        res: the session's resources; the thread reads the trainer and reports here.
        session_id: the Streamlit session id, under which the run slot is taken.
    """

    def __init__(self, res: session.PlaygroundResources, session_id: str) -> None:
        self.res = res
        self.session_id = session_id
        self.outcome: str | None = None  # why the thread ended; None while it runs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"nora-train-{session_id[:8]}")

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the thread has ended, or `timeout` seconds have passed."""
        self._thread.join(timeout=timeout)

    def stop(self, wait: bool = True) -> None:
        """Ask the thread to end after its chunk; with `wait`, block until it has."""
        self._stop.set()
        if wait and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_TIMEOUT)

    def _run(self) -> None:
        limits = classroom.limits()
        try:
            while not self._stop.is_set():
                if time.monotonic() - self.res.heartbeat > HEARTBEAT_TIMEOUT:
                    self.outcome = "silent"  # the page stopped redrawing: a frozen tab
                    break
                if not _take_slot(self.res, self.session_id, playing=True):
                    self.outcome = "waiting"
                    break
                reason = _train_chunk(self.res, MAX_CHUNK_STEPS, limits.chunk_seconds)
                if reason is not None:
                    self.outcome = reason
                    break
            else:
                self.outcome = "stopped"
        finally:
            classroom.run_slots().release(self.session_id)
            logger.info("training thread of session %s ended: %s", self.session_id,
                         self.outcome)


def sync_worker() -> bool:
    """Keep this session's training thread running while it plays; return False to change mode.

    Called by each redraw of the live panel. It marks the session alive, starts a thread
    when none runs, and turns the outcome of an ended thread into the page's state:
    paused (finished, step limit, error) or waiting for a slot.
    """
    res = session.resources()
    res.heartbeat = time.monotonic()
    worker = res.worker
    if worker is not None and worker.alive:
        return True
    outcome = worker.outcome if worker is not None else None
    res.worker = None
    if outcome in ("finished", "limit", "error"):
        session.set_playing(False)
        return False
    if outcome == "waiting":
        return False
    if not _take_slot(res, classroom.session_id(), playing=True):
        return False
    res.worker = TrainingWorker(res, classroom.session_id())
    res.worker.start()
    return True


def train_for(steps: int, max_seconds: float | None) -> None:
    """Train up to `steps` steps now, in the script thread, inside a run slot (the Step button)."""
    res = session.resources()
    if res.trainer is None or res.trainer.finished:
        return
    session_id = classroom.session_id()
    if not _take_slot(res, session_id, playing=False):
        return
    try:
        _train_chunk(res, steps, max_seconds)
    finally:
        classroom.run_slots().release(session_id)


def steps_per_second() -> float | None:
    """Return wall-clock training steps per second over the recent chunks, evaluation included."""
    chunks = list(session.resources().throughput)
    seconds = sum(s for _, s in chunks)
    if seconds <= 0:
        return None
    return sum(n for n, _ in chunks) / seconds


def live_fragment(render: Callable[[], None], *, run_every: float = RUN_EVERY) -> None:
    """Declare the live panel: it redraws, and while playing keeps the training thread going.

    Args:
        render: draws the charts and messages from the trainer in session state.
        run_every: seconds between redraws while training.
    """
    playing = session.is_playing() and session.trainer() is not None
    waiting = playing and session.waiting_message() is not None
    training = playing and not waiting

    @st.fragment(run_every=run_every if training else None)
    def live_panel() -> None:
        running = training and session.is_playing() and sync_worker()
        render()
        if training and not running:
            st.rerun()  # a full run redraws the buttons and sets the fragment's timer

    # The waiting message goes first, right under the buttons, where the student looks.
    if waiting:
        _waiting_panel()
    elif session.waiting_message() is not None:
        st.info(session.waiting_message(), icon=":material/hourglass_top:")
    live_panel()


@st.fragment(run_every=WAIT_POLL_SECONDS)
def _waiting_panel() -> None:
    if not session.is_playing():
        return
    res = session.resources()
    if _take_slot(res, classroom.session_id(), playing=True):
        st.rerun()  # the full run starts the training thread, which renews the slot
    st.info(session.waiting_message(), icon=":material/hourglass_top:")
