"""Per-session state of the playground and its live-training loop.

Each browser session owns its `PairedTrainer` in `st.session_state`. The trainer is never
put in `st.cache_resource`: that cache is shared by every session of the server, and a
model that one session trains would change under another session's feet.

While the user plays, a fragment with `run_every` reruns every `RUN_EVERY` seconds,
trains for at most `CHUNK_SECONDS`, and redraws the charts. Streamlit 1.67 sends the
auto-rerun timer to the browser each time a full run declares the fragment. The browser
drops all timers when the next full run starts, so a full run that declares the fragment
without `run_every` (after Pause) stops the timer. A fragment rerun only calls the stored
fragment body, so it reuses the trainer in session state and never rebuilds it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import streamlit as st
import torch
from torch import nn

from nora_core.adapters import adaptable_module_names
from nora_core.config import AdapterConfig
from nora_core.tasks.base import Task
from nora_core.tasks.toy import make_toy_task
from nora_core.trainer import PairedTrainer, TrainConfig

logger = logging.getLogger(__name__)

# Seconds between fragment reruns while playing, and training seconds per rerun. The
# remainder of the interval is left for drawing the charts.
RUN_EVERY = 0.5
CHUNK_SECONDS = 0.3
# Upper bound of steps per chunk; the time box usually ends a chunk first.
MAX_CHUNK_STEPS = 10_000
# Tasks kept per session, so toggling between two task settings does not rebuild them.
TASK_CACHE_SIZE = 3
# Chunks over which steps per second are averaged.
THROUGHPUT_WINDOW = 10

# Toy layers are about 64×64, too small to gain from intra-op threads. Measured on a
# 2-core VM with other jobs running: 50 steps of the default non-linear teacher took
# 2.5 s with 2 torch threads and 0.3 s with 1.
TOY_TORCH_THREADS = 1

TRAINER = "playground_trainer"
ACTIVE = "playground_active_settings"
PLAYING = "playground_playing"
TASKS = "playground_tasks"
THROUGHPUT = "playground_throughput"
BUILD_ERROR = "playground_build_error"
TRAIN_ERROR = "playground_train_error"
TRAIN_LOCK = "playground_train_lock"

# Maximum wait, in seconds, for a chunk that an older script run of the session still trains.
LOCK_TIMEOUT = 10.0


@dataclass(frozen=True)
class PlaygroundSettings:
    """Everything a playground trainer is built from."""

    task_name: str
    task_config: Any
    lora: AdapterConfig
    nora: AdapterConfig
    train: TrainConfig

    def adapter_configs(self) -> dict[str, AdapterConfig]:
        """Return the run names and adapter configs in the order the charts show them."""
        return {"LoRA": self.lora, "NoRA": self.nora}


def init_state() -> None:
    """Create the playground's session-state entries on the first run of a session."""
    defaults = {
        TRAINER: None,
        ACTIVE: None,
        PLAYING: False,
        TASKS: collections.OrderedDict(),
        THROUGHPUT: collections.deque(maxlen=THROUGHPUT_WINDOW),
        BUILD_ERROR: None,
        TRAIN_ERROR: None,
        TRAIN_LOCK: threading.Lock(),
    }
    for key, value in defaults.items():
        if key not in st.session_state:
            st.session_state[key] = value


def trainer() -> PairedTrainer | None:
    """Return this session's trainer, or None before the first successful build."""
    return st.session_state.get(TRAINER)


def active_settings() -> PlaygroundSettings | None:
    """Return the settings the current trainer was built with (learning rate kept current)."""
    return st.session_state.get(ACTIVE)


def is_playing() -> bool:
    """Return True while the live loop should train."""
    return bool(st.session_state.get(PLAYING))


def set_playing(playing: bool) -> None:
    """Start or stop the live loop; used as a button callback."""
    st.session_state[PLAYING] = playing


def task_for(name: str, config: Any) -> Task:
    """Return the toy task `name` built from `config`, reusing this session's recent builds.

    Raises:
        ValueError: when the task rejects the config.
    """
    cache: collections.OrderedDict = st.session_state[TASKS]
    key = (name, config)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    task = make_toy_task(name, **dataclasses.asdict(config))
    cache[key] = task
    while len(cache) > TASK_CACHE_SIZE:
        cache.popitem(last=False)
    return task


def rank_limit(task: Task) -> int | None:
    """Return the largest rank the task's target layers allow: min(d_in, d_out) over them."""
    model = task.base_model()
    targets = getattr(task, "target_modules", None)
    limits = []
    for name in adaptable_module_names(model):
        if targets is not None and not any(name == t or name.endswith("." + t) for t in targets):
            continue
        module = model.get_submodule(name)
        if isinstance(module, nn.Linear):
            limits.append(min(module.in_features, module.out_features))
    return min(limits) if limits else None


def build_trainer(settings: PlaygroundSettings) -> PairedTrainer:
    """Build a fresh trainer for `settings`; adapters target the task's default layers.

    Raises:
        ValueError: when the task, the adapters or the device reject the settings.
    """
    task = task_for(settings.task_name, settings.task_config)
    targets = getattr(task, "target_modules", None)
    configs = {name: dataclasses.replace(config, target_modules=config.target_modules or targets)
               for name, config in settings.adapter_configs().items()}
    return PairedTrainer(task, configs, settings.train)


def reset(settings: PlaygroundSettings) -> bool:
    """Replace the trainer by a fresh one built from `settings` and pause.

    On a ValueError the old trainer stays, the error is kept for display, and False is
    returned.
    """
    st.session_state[PLAYING] = False
    try:
        fresh = build_trainer(settings)
    except ValueError as error:
        logger.info("playground settings rejected: %s", error)
        st.session_state[BUILD_ERROR] = str(error)
        return False
    st.session_state[TRAINER] = fresh
    st.session_state[ACTIVE] = settings
    st.session_state[BUILD_ERROR] = None
    st.session_state[TRAIN_ERROR] = None
    st.session_state[THROUGHPUT].clear()
    return True


def build_error() -> str | None:
    """Return the message of the last failed build, or None."""
    return st.session_state.get(BUILD_ERROR)


def train_error() -> str | None:
    """Return the message of a training failure since the last reset, or None."""
    return st.session_state.get(TRAIN_ERROR)


def apply_learning_rate(lr: float) -> bool:
    """Set the running trainer's learning rate now; return True if it changed."""
    current = trainer()
    settings = active_settings()
    if current is None or settings is None or settings.train.lr == lr:
        return False
    current.set_learning_rate(lr)
    st.session_state[ACTIVE] = dataclasses.replace(
        settings, train=dataclasses.replace(settings.train, lr=lr))
    return True


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 0


@contextlib.contextmanager
def toy_threads() -> Iterator[None]:
    """Run the block with `TOY_TORCH_THREADS` torch threads, restoring the count afterwards.

    The thread count is global to the process, so sessions training at the same time share
    one reduction, and the last one to finish restores the previous count.
    """
    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(TOY_TORCH_THREADS)
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)


@contextlib.contextmanager
def model_lock() -> Iterator[None]:
    """Hold the session's training lock, e.g. while a model is switched to eval mode to draw it."""
    lock: threading.Lock = st.session_state[TRAIN_LOCK]
    with lock:
        yield


def train_for(steps: int, max_seconds: float | None) -> list[dict]:
    """Advance the trainer by up to `steps` steps or `max_seconds`, and time the chunk.

    A failure inside training pauses the loop and is kept for display (see
    `train_error`) instead of repeating on every rerun.

    With Streamlit's default `runner.fastReruns`, a widget change starts a new script run
    on a new thread while the old run may still be inside `advance`. The session's lock
    makes the new run wait, so two threads never step the same optimizer at once.
    """
    lock: threading.Lock = st.session_state[TRAIN_LOCK]
    if not lock.acquire(timeout=LOCK_TIMEOUT):
        logger.warning("skipped a training chunk: the previous chunk still runs")
        return []
    try:
        current = trainer()
        if current is None or current.finished:
            return []
        before = current.step
        started = time.perf_counter()
        try:
            with toy_threads():
                rows = current.advance(steps, max_seconds=max_seconds)
        except (RuntimeError, ValueError) as error:
            logger.exception("training failed at step %d", current.step)
            st.session_state[PLAYING] = False
            st.session_state[TRAIN_ERROR] = f"Training failed at step {current.step}: {error}"
            return []
    finally:
        lock.release()
    st.session_state[THROUGHPUT].append((current.step - before, time.perf_counter() - started))
    return rows


def steps_per_second() -> float | None:
    """Return wall-clock training steps per second over the recent chunks, evaluation included."""
    chunks = st.session_state.get(THROUGHPUT) or ()
    seconds = sum(s for _, s in chunks)
    if seconds <= 0:
        return None
    return sum(n for n, _ in chunks) / seconds


def live_fragment(render: Callable[[], None], *, run_every: float = RUN_EVERY,
                  chunk_seconds: float = CHUNK_SECONDS) -> None:
    """Declare the live fragment: it renders, and while playing trains one chunk per rerun.

    Args:
        render: draws the charts and messages from the trainer in session state.
        run_every: seconds between fragment reruns while playing.
        chunk_seconds: training time per rerun.
    """
    interval = run_every if is_playing() and trainer() is not None else None

    @st.fragment(run_every=interval)
    def live_panel() -> None:
        # Drawing before training keeps the charts fresh while the chunk runs; the
        # browser fades elements that a running script has not redrawn yet.
        render()
        if is_playing():
            train_for(MAX_CHUNK_STEPS, chunk_seconds)
            current = trainer()
            if current is None or current.finished:
                st.session_state[PLAYING] = False
            if not is_playing():
                # A full rerun redraws the buttons and declares the fragment without a timer.
                st.rerun()

    live_panel()


def sync_trainer(requested: PlaygroundSettings | None) -> None:
    """Build the first trainer, and rebuild it when settings change before any step is trained."""
    if requested is None:
        return
    current = trainer()
    untouched = current is not None and current.step == 0 and not is_playing()
    if current is None or (untouched and active_settings() != requested):
        reset(requested)
