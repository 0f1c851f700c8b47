"""Per-session state of the Language-model page: the shared base model, the trainer, samples.

The loaded base model is the only object in `st.cache_resource`: every session of the
server shares it read-only (frozen, `requires_grad=False`, eval mode). `LMTask` reads
the same object from `nora_core.lm.cached_base_model` and hands the trainer deep copies,
so each session trains its own copy and the shared weights never change. Trainers,
tasks and generated samples live in `st.session_state`, never in a shared cache. The
live-training loop is in `app.ui.lm_live`.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import hashlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import streamlit as st
from torch import nn

from nora_core.config import AdapterConfig
from nora_core.lm import LMTask, LMTaskConfig, cached_base_model, generate
from nora_core.trainer import PairedTrainer, TrainConfig

from app.ui import classroom, live
from app.ui.lm_spectra import SpectrumSnapshot, take_snapshot

logger = logging.getLogger(__name__)

# Tasks kept per session, so switching back to a recent task does not rebuild its data.
TASK_CACHE_SIZE = 2
# Training chunks over which steps per second are averaged.
THROUGHPUT_WINDOW = 10

TRAINER = "lm_trainer"
ACTIVE = "lm_active_settings"
PLAYING = "lm_playing"
TASKS = "lm_tasks"
THROUGHPUT = "lm_throughput"
SNAPSHOTS = "lm_snapshots"
SAMPLES = "lm_samples"
ACCURACY = "lm_accuracy"
BUILD_ERROR = "lm_build_error"
TRAIN_ERROR = "lm_train_error"
TRAIN_LOCK = "lm_train_lock"
WAITING = "lm_waiting"
STOP_NOTE = "lm_stop_note"


@dataclass(frozen=True)
class LMSettings:
    """Everything an LM trainer is built from.

    `targets` is a preset key of `TARGET_PRESETS` or "custom"; `target_names` lists the
    module-name suffixes it resolved to. Both adapter configs carry the full module names
    in `target_modules`. `upload` is the raw uploaded file of the "upload" task.
    """

    task: LMTaskConfig
    targets: str
    target_names: tuple[str, ...]
    lora: AdapterConfig
    nora: AdapterConfig
    train: TrainConfig
    upload: bytes | None = dataclasses.field(default=None, repr=False)
    upload_name: str = ""

    def adapter_configs(self) -> dict[str, AdapterConfig]:
        """Return the run names and adapter configs in the order the charts show them."""
        return {"LoRA": self.lora, "NoRA": self.nora}


@st.cache_resource(show_spinner="Loading the base model...")
def shared_base(name: str) -> tuple[nn.Module, object]:
    """Return the frozen (model, tokenizer) that every session shares; never train it.

    The object is the one `LMTask` copies from, so a model is loaded once per server.

    Raises:
        ModelLoadError: the model is missing, unreachable or not a causal LM.
    """
    return cached_base_model(name, "cpu", "float32")


def init_state() -> None:
    """Create the page's session-state entries on the first run of a session."""
    defaults = {
        TRAINER: None,
        ACTIVE: None,
        PLAYING: False,
        TASKS: collections.OrderedDict(),
        THROUGHPUT: collections.deque(maxlen=THROUGHPUT_WINDOW),
        SNAPSHOTS: [],
        SAMPLES: None,
        ACCURACY: None,
        BUILD_ERROR: None,
        TRAIN_ERROR: None,
        TRAIN_LOCK: threading.Lock(),
        WAITING: None,
        STOP_NOTE: None,
    }
    for key, value in defaults.items():
        if key not in st.session_state:
            st.session_state[key] = value


def trainer() -> PairedTrainer | None:
    """Return this session's trainer, or None before the first successful build."""
    return st.session_state.get(TRAINER)


def active_settings() -> LMSettings | None:
    """Return the settings the current trainer was built with (learning rate kept current)."""
    return st.session_state.get(ACTIVE)


def is_playing() -> bool:
    """Return True while the live loop should train."""
    return bool(st.session_state.get(PLAYING))


def set_playing(playing: bool) -> None:
    """Start or stop the live loop; used as a button callback. Stopping frees the run slot."""
    st.session_state[PLAYING] = playing
    if not playing:
        classroom.run_slots().release(classroom.session_id())


def snapshots() -> list[SpectrumSnapshot]:
    """Return the spectrum snapshots of the current trainer, oldest first."""
    return st.session_state.get(SNAPSHOTS) or []


def build_error() -> str | None:
    """Return the message of the last failed build, or None."""
    return st.session_state.get(BUILD_ERROR)


def train_error() -> str | None:
    """Return the message of a training failure since the last reset, or None."""
    return st.session_state.get(TRAIN_ERROR)


def task_for(config: LMTaskConfig, upload: bytes | None = None) -> LMTask:
    """Return the LM task for `config` (and upload), reusing this session's recent builds.

    Raises:
        ModelLoadError, UploadError, ValueError: the model, the upload or the settings are
            unusable; the message names the value and the fix.
    """
    cache: collections.OrderedDict = st.session_state[TASKS]
    digest = hashlib.sha256(upload).hexdigest() if upload is not None else None
    key = (config, digest)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    shared_base(config.model_name)  # load through the server-wide cache first
    task = LMTask(config, upload_data=upload)
    cache[key] = task
    while len(cache) > TASK_CACHE_SIZE:
        cache.popitem(last=False)
    return task


def build_trainer(settings: LMSettings) -> PairedTrainer:
    """Build a fresh LoRA/NoRA trainer for `settings`.

    Raises:
        ValueError: when the task, the adapters or the device reject the settings.
    """
    task = task_for(settings.task, settings.upload)
    return PairedTrainer(task, settings.adapter_configs(), settings.train)


def reset(settings: LMSettings) -> bool:
    """Replace the trainer by a fresh one built from `settings` and pause.

    On a ValueError the old trainer stays, the error is kept for display, and False is
    returned.
    """
    st.session_state[PLAYING] = False
    try:
        # The build measures validation loss and spectra once, so it obeys the thread limit.
        with live.training_threads(classroom.limits().cpu_threads_per_run):
            fresh = build_trainer(settings)
    except ValueError as error:
        logger.info("LM settings rejected: %s", error)
        st.session_state[BUILD_ERROR] = str(error)
        return False
    st.session_state[TRAINER] = fresh
    st.session_state[ACTIVE] = settings
    st.session_state[BUILD_ERROR] = None
    st.session_state[TRAIN_ERROR] = None
    st.session_state[STOP_NOTE] = None
    st.session_state[SAMPLES] = None
    st.session_state[ACCURACY] = None
    st.session_state[THROUGHPUT].clear()
    st.session_state[SNAPSHOTS] = [take_snapshot(fresh)]
    return True


def sync_trainer(requested: LMSettings | None) -> None:
    """Build the first trainer, and rebuild it when settings change before any step is trained."""
    if requested is None:
        return
    current = trainer()
    untouched = current is not None and current.step == 0 and not is_playing()
    if current is None or (untouched and active_settings() != requested):
        reset(requested)


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


@contextlib.contextmanager
def model_lock() -> Iterator[None]:
    """Hold the session's training lock, e.g. while the trained models are copied."""
    lock: threading.Lock = st.session_state[TRAIN_LOCK]
    with lock:
        yield


@dataclass(frozen=True)
class Samples:
    """Greedy continuations of one prompt by the base model and each run, at one step."""

    prompt: str
    step: int
    max_new_tokens: int
    texts: dict[str, str]


def _model_copies(current: PairedTrainer) -> tuple[int, dict[str, nn.Module | None]]:
    """Copy the base model and every live run's model; None stands for a diverged run."""
    with model_lock():
        step = current.step
        copies = {name: None if run.diverged else copy.deepcopy(run.model)
                  for name, run in current.runs.items()}
    return step, {"base": current.task.base_model(), **copies}


def generate_samples(prompt: str, max_new_tokens: int) -> Samples | None:
    """Continue `prompt` greedily with the base model, LoRA and NoRA; store and return them.

    The runs' models are deep-copied under the session lock, which waits at most for the
    current training chunk, and generation then runs on the copies. The base model is a
    copy too, because generation switches the model's train/eval mode. A diverged run gets
    a note instead of a text.
    """
    current = trainer()
    if current is None:
        return None
    step, models = _model_copies(current)
    tokenizer = current.task.tokenizer
    texts = {}
    with live.training_threads(classroom.limits().cpu_threads_per_run):
        for name, model in models.items():
            if model is None:
                texts[name] = f"(diverged at step {current.runs[name].diverged_at}: no sample)"
                continue
            model.to(current.device)
            texts[name] = generate(model, tokenizer, prompt, max_new_tokens)
    samples = Samples(prompt, step, max_new_tokens, texts)
    st.session_state[SAMPLES] = samples
    return samples


def samples() -> Samples | None:
    """Return the last generated samples of this trainer, or None."""
    return st.session_state.get(SAMPLES)


@dataclass(frozen=True)
class Accuracy:
    """Share of held-out prompts whose greedy "answer: ..." line is right, per model, at one step.

    A diverged run maps to None.
    """

    step: int
    prompts: int
    shares: dict[str, float | None]


def check_answers(count: int) -> Accuracy | None:
    """Score the base model, LoRA and NoRA on `count` held-out prompts; store and return it.

    Only prompt/response tasks have answers; for text tasks nothing is scored and None is
    returned. The models are copies, as in `generate_samples`.
    """
    current = trainer()
    if current is None or not current.task.is_prompt_response:
        return None
    step, models = _model_copies(current)
    prompts = min(count, len(current.task.val_prompts))
    with live.training_threads(classroom.limits().cpu_threads_per_run):
        shares = {name: None if model is None else
                  current.task.answer_accuracy(model.to(current.device), count=prompts)
                  for name, model in models.items()}
    accuracy = Accuracy(step, prompts, shares)
    st.session_state[ACCURACY] = accuracy
    return accuracy


def accuracy() -> Accuracy | None:
    """Return the last answer check of this trainer, or None."""
    return st.session_state.get(ACCURACY)
