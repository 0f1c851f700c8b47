"""Per-session state of the playground: its trainer, settings, task cache and run history.

Each browser session owns one `PlaygroundResources` in `st.session_state`. The trainer is
never put in `st.cache_resource`: that cache is shared by every session of the server,
and a model that one session trains would change under another session's feet.

The server-wide session registry (see `app.ui.classroom`) keeps a weak reference to the
resources, so it can free the trainer of a closed browser tab from its own thread. Every
use of the trainer that may run while another thread touches it (training, switching a
model to eval mode, exporting) takes `PlaygroundResources.lock`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import streamlit as st

from nora_core.adapters import adapter_layers, inject_adapters
from nora_core.config import AdapterConfig
from nora_core.tasks.base import Task
from nora_core.tasks.toy import make_toy_task
from nora_core.trainer import PairedTrainer, TrainConfig

from app.ui import classroom
from app.ui.history import RunHistory

logger = logging.getLogger(__name__)

# Tasks kept per session, so toggling between two task settings does not rebuild them.
TASK_CACHE_SIZE = 3
# Chunks over which steps per second are averaged.
THROUGHPUT_WINDOW = 10
# Seconds to wait for a chunk that another thread of the session still trains.
LOCK_TIMEOUT = 10.0

RESOURCES = "playground_resources"
PLAYING = "playground_playing"
BUILD_ERROR = "playground_build_error"


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


class PlaygroundResources:
    """The objects of one session's playground that its training thread shares.

    The live-training thread (see `app.ui.live`) and the server's janitor read and write
    these fields from outside the script thread, so they live here and not in
    `st.session_state`.

    Args:
        history_size: finished runs kept for the loss chart's overlay.
    """

    def __init__(self, history_size: int) -> None:
        self.lock = threading.Lock()
        self.trainer: PairedTrainer | None = None
        self.settings: PlaygroundSettings | None = None
        self.tasks: collections.OrderedDict = collections.OrderedDict()
        self.history = RunHistory(history_size)
        self.freed_reason: str | None = None
        # Live training: the thread, the last time the page drew the panel, and its outcome.
        self.worker = None
        self.heartbeat = 0.0
        self.throughput: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=THROUGHPUT_WINDOW)
        self.train_error: str | None = None
        self.stop_note: str | None = None
        self.waiting: str | None = None

    def stop_training(self, wait: bool = True) -> None:
        """Ask the training thread to stop after its chunk, and wait for it unless `wait` is False."""
        worker = self.worker
        if worker is not None:
            worker.stop(wait=wait)

    def release_memory(self, reason: str) -> bool:
        """Stop training, move the curves to the history, drop the trainer and the cached tasks.

        Returns False, and keeps everything, while a chunk still holds the lock.
        """
        self.stop_training(wait=True)
        if not self.lock.acquire(timeout=1.0):
            return False
        try:
            if self.trainer is not None and self.settings is not None:
                self.history.add(self.trainer, self.settings.task_name)
            self.trainer = None
            self.tasks.clear()
            self.freed_reason = reason
        finally:
            self.lock.release()
        logger.info("released the playground trainer: %s", reason)
        return True


def init_state() -> None:
    """Create the playground's session-state entries once, and register the session."""
    if RESOURCES not in st.session_state:
        st.session_state[RESOURCES] = PlaygroundResources(classroom.limits().history_size)
    defaults = {PLAYING: False, BUILD_ERROR: None}
    for key, value in defaults.items():
        if key not in st.session_state:
            st.session_state[key] = value
    classroom.register_session(resources())


def resources() -> PlaygroundResources:
    """Return this session's playground resources."""
    return st.session_state[RESOURCES]


def trainer() -> PairedTrainer | None:
    """Return this session's trainer, or None before the first build or after it was freed."""
    return resources().trainer


def active_settings() -> PlaygroundSettings | None:
    """Return the settings the current trainer was built with (learning rate kept current)."""
    return resources().settings


@contextlib.contextmanager
def model_lock() -> Iterator[None]:
    """Hold the session's training lock, e.g. while a model is switched to eval mode to draw it."""
    with resources().lock:
        yield


def is_playing() -> bool:
    """Return True while the live loop should train."""
    return bool(st.session_state.get(PLAYING))


def set_playing(playing: bool) -> None:
    """Start or stop the live loop; used as a button callback.

    Stopping waits for the training thread to finish its chunk and frees the run slot.
    """
    st.session_state[PLAYING] = playing
    res = resources()
    if playing:
        res.stop_note = None
        res.freed_reason = None
        if res.worker is not None and not res.worker.alive:
            res.worker = None  # the outcome of an earlier thread must not stop this Play
    else:
        res.waiting = None
        res.stop_training(wait=True)
        classroom.run_slots().release(classroom.session_id())


def task_for(name: str, config: Any) -> Task:
    """Return the toy task `name` built from `config`, reusing this session's recent builds.

    Raises:
        ValueError: when the task rejects the config.
    """
    cache = resources().tasks
    key = (name, config)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    task = make_toy_task(name, **dataclasses.asdict(config))
    cache[key] = task
    while len(cache) > TASK_CACHE_SIZE:
        cache.popitem(last=False)
    return task


def rank_limit(task: Task, targets: tuple[str, ...] | str | None = None) -> int | None:
    """Return the largest rank the targeted layers allow: min(d_in, d_out) over them.

    Args:
        task: the toy task.
        targets: the adapters' `target_modules`; None means the task's default layers.

    Returns:
        The limit, or None when `targets` match no layer (the build then reports it).
    """
    chosen = targets if targets is not None else getattr(task, "target_modules", None)
    try:
        # A rank-1 probe resolves the targets exactly as the trainer will.
        probe = inject_adapters(task.base_model(), AdapterConfig(r=1, target_modules=chosen))
    except ValueError:
        return None
    return min(min(layer.d_in, layer.d_out) for layer in adapter_layers(probe))


def build_trainer(settings: PlaygroundSettings) -> PairedTrainer:
    """Build a fresh trainer for `settings`; adapters target the task's default layers.

    Raises:
        ValueError: when the task, the adapters or the device reject the settings.
    """
    task = task_for(settings.task_name, settings.task_config)
    targets = getattr(task, "target_modules", None)
    configs = {name: dataclasses.replace(config, target_modules=config.target_modules or targets)
               for name, config in settings.adapter_configs().items()}
    fresh = PairedTrainer(task, configs, settings.train)
    classroom.track_trainer(fresh)
    return fresh


def reset(settings: PlaygroundSettings) -> bool:
    """Replace the trainer by a fresh one built from `settings` and pause.

    The old runs' curves move to the run history. On a ValueError the old trainer stays,
    the error is kept for display, and False is returned.
    """
    set_playing(False)
    try:
        fresh = build_trainer(settings)
    except ValueError as error:
        logger.info("playground settings rejected: %s", error)
        st.session_state[BUILD_ERROR] = str(error)
        return False
    res = resources()
    with res.lock:
        if res.trainer is not None and res.settings is not None:
            res.history.add(res.trainer, res.settings.task_name)
        res.trainer = fresh
        res.settings = settings
    st.session_state[BUILD_ERROR] = None
    res.train_error = None
    res.stop_note = None
    res.throughput.clear()
    return True


def build_error() -> str | None:
    """Return the message of the last failed build, or None."""
    return st.session_state.get(BUILD_ERROR)


def train_error() -> str | None:
    """Return the message of a training failure since the last reset, or None."""
    return resources().train_error


def waiting_message() -> str | None:
    """Return the message shown while this session waits for a run slot, or None."""
    return resources().waiting


def stop_note() -> str | None:
    """Return why the live loop stopped on its own (the step limit), or None."""
    return resources().stop_note


def apply_learning_rate(lr: float) -> bool:
    """Set the running trainer's learning rate now; return True if it changed."""
    res = resources()
    if res.trainer is None or res.settings is None or res.settings.train.lr == lr:
        return False
    with res.lock:
        res.trainer.set_learning_rate(lr)
    res.settings = dataclasses.replace(
        res.settings, train=dataclasses.replace(res.settings.train, lr=lr))
    return True


def clear_history() -> None:
    """Forget this session's past runs; used as a button callback."""
    resources().history.clear()


def sync_trainer(requested: PlaygroundSettings | None, *, force: bool = False) -> None:
    """Build the first trainer, and rebuild it when settings change before any step is trained.

    Args:
        requested: the settings of the form, or None when they are invalid.
        force: rebuild even after training, as a lesson does when it opens.
    """
    if requested is None:
        return
    current = trainer()
    untouched = current is not None and current.step == 0 and not is_playing()
    if current is None or force or (untouched and active_settings() != requested):
        reset(requested)
