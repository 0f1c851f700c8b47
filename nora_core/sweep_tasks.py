"""Tasks of a rank sweep: building them by name, resolving adapter targets, and training
the planned runs either batched (toy tasks) or one at a time (`PairedTrainer`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nora_core.adapters import inject_adapters
from nora_core.config import AdapterConfig
from nora_core.fields import FieldSpec, field_specs
from nora_core.sweep_batched import RunOutcome, can_batch, single_thread, train_batched
from nora_core.tasks.base import Task
from nora_core.tasks.toy import TOY_TASKS, make_toy_task, toy_config_class
from nora_core.trainer import PairedTrainer, TrainConfig

if TYPE_CHECKING:
    from nora_core.sweep import RunSpec, SweepConfig

logger = logging.getLogger(__name__)

TOY_TASK_NAMES: tuple[str, ...] = tuple(TOY_TASKS)
# Language-model tasks with built-in data; "upload" needs a file and is left to the train command.
LM_TASK_NAMES: tuple[str, ...] = ("style_shift", "arithmetic", "reverse", "sort")
TASK_NAMES: tuple[str, ...] = TOY_TASK_NAMES + LM_TASK_NAMES
LM_TARGET_PRESETS: tuple[str, ...] = ("attention_qv", "attention_all", "all_linear")
# Layers a language-model sweep adapts when a variant's targets are "default".
LM_DEFAULT_TARGETS = "all_linear"
# LMTaskConfig fields that a sweep sets itself or that only the upload task reads.
_LM_FIXED_FIELDS = ("task", "max_upload_bytes", "upload_format")

# Most runs trained in one batched computation; larger groups are split.
MAX_BATCHED_RUNS = 128


def _lm_config_class() -> type:
    # Imported on demand: transformers takes seconds to import and toy sweeps never need it.
    from nora_core.lm.tasks import LMTaskConfig

    return LMTaskConfig


def task_option_specs(name: str) -> list[FieldSpec]:
    """List the options (config fields) that the task `name` accepts.

    Raises:
        ValueError: for an unknown task name.
    """
    if name in TOY_TASK_NAMES:
        return field_specs(toy_config_class(name))
    if name in LM_TASK_NAMES:
        return [s for s in field_specs(_lm_config_class()) if s.name not in _LM_FIXED_FIELDS]
    raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")


def build_task(name: str, options: dict[str, Any]) -> Task:
    """Build the task `name` with config field values `options`.

    Raises:
        ValueError: for an unknown task, an option the task does not have, or an invalid value.
    """
    if name in TOY_TASK_NAMES:
        return make_toy_task(name, **options)
    if name not in LM_TASK_NAMES:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASK_NAMES)}")
    from nora_core.lm.tasks import LMTask

    allowed = {spec.name for spec in task_option_specs(name)}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for task {name!r}; valid options: "
                         f"{', '.join(sorted(allowed))}")
    return LMTask(_lm_config_class()(task=name, **options))


class TaskRunner:
    """Resolve the targets of a sweep's variants on one task and train its runs."""

    def __init__(self, task: Task, config: SweepConfig) -> None:
        self.task = task
        self.config = config
        self._targets: dict[str, tuple[str, ...]] = {}

    def target_modules(self, spec: str) -> tuple[str, ...]:
        """Resolve a variant's `targets` to module names of this task's base model."""
        if spec not in self._targets:
            self._targets[spec] = self._resolve(spec)
        return self._targets[spec]

    def _resolve(self, spec: str) -> tuple[str, ...]:
        if self.task.kind != "lm":
            if spec == "default":
                return tuple(self.task.target_modules)
            if spec in LM_TARGET_PRESETS:
                raise ValueError(f"target preset {spec!r} applies to language-model tasks; for "
                                 f"{self.task.name!r} use 'default' or layer names joined by '+'")
            return tuple(name.strip() for name in spec.split("+") if name.strip())
        from nora_core.lm.targets import resolve_target_modules

        preset = LM_DEFAULT_TARGETS if spec == "default" else spec
        targets = preset if preset in LM_TARGET_PRESETS else [n for n in preset.split("+") if n.strip()]
        return tuple(resolve_target_modules(self.task.base_model(), targets))

    def adapter_config(self, run: RunSpec) -> AdapterConfig:
        """Return the AdapterConfig of one planned run."""
        return run.variant.adapter_config(run.r, self.target_modules(run.variant.targets))

    def check(self, runs: list[RunSpec]) -> None:
        """Inject each variant at its largest rank into a base copy, so a bad rank or target
        fails before any training, with the message of `inject_adapters`."""
        largest: dict[Any, RunSpec] = {}
        for run in runs:
            if run.variant not in largest or run.r > largest[run.variant].r:
                largest[run.variant] = run
        for run in largest.values():
            inject_adapters(self.task.base_model(), self.adapter_config(run))

    def train(self, runs: list[RunSpec], execution: str,
              report: Callable[[float, str], None]) -> list[RunOutcome]:
        """Train `runs` and return their outcomes in the same order."""
        configs = [self.adapter_config(run) for run in runs]
        batchable = execution != "sequential" and can_batch(self.task, configs)
        if execution == "batched" and not batchable:
            raise ValueError(f"task {self.task.name!r} cannot train batched (batching needs a toy task, "
                             "nn.Linear targets and no GLU gate); use execution='sequential' or 'auto'")
        total = max(1, len(runs) * self.config.steps)
        if self.task.kind != "toy":
            return self._train_sequential(runs, configs, total, report)
        with single_thread():
            if batchable:
                return self._train_batched(runs, configs, total, report)
            return self._train_sequential(runs, configs, total, report)

    def _train_batched(self, runs, configs, total, report) -> list[RunOutcome]:
        groups: dict[tuple, list[int]] = {}
        for index, (run, config) in enumerate(zip(runs, configs)):
            groups.setdefault((run.lr, config.target_modules), []).append(index)
        chunks = [members[i:i + MAX_BATCHED_RUNS]
                  for members in groups.values()
                  for i in range(0, len(members), MAX_BATCHED_RUNS)]

        outcomes: list[RunOutcome | None] = [None] * len(runs)
        done = 0
        for number, members in enumerate(chunks, start=1):
            lr = runs[members[0]].lr
            message = f"batch {number}/{len(chunks)}: {len(members)} runs at lr={lr:g}"
            logger.info("%s", message)

            def on_step(step: int, members=members, message=message, done=done) -> None:
                report((done + step * len(members)) / total, f"{message}, step {step}/{self.config.steps}")

            results = train_batched(self.task, [configs[i] for i in members],
                                    [runs[i].seed for i in members], lr=lr,
                                    batch_size=self.config.batch_size, steps=self.config.steps,
                                    weight_decay=self.config.weight_decay, progress=on_step)
            for index, outcome in zip(members, results):
                outcomes[index] = outcome
            done += len(members) * self.config.steps
        return outcomes

    def _train_sequential(self, runs, configs, total, report) -> list[RunOutcome]:
        steps = self.config.steps
        chunk = max(1, steps // 20)
        outcomes = []
        for number, (run, config) in enumerate(zip(runs, configs)):
            started = time.perf_counter()
            # Toy tasks train on the CPU in both paths, so the two paths stay comparable.
            device = self.config.device if self.task.kind == "lm" else "cpu"
            train = TrainConfig(lr=run.lr, batch_size=self.config.batch_size, seed=run.seed,
                                weight_decay=self.config.weight_decay, eval_every=steps,
                                spectrum_every=steps, device=device)
            trainer = PairedTrainer(self.task, {"run": config}, train)
            message = f"run {number + 1}/{len(runs)}: {run.variant.label} r={run.r} seed={run.seed} lr={run.lr:g}"
            logger.info("%s", message)
            while trainer.step < steps and not trainer.finished:
                trainer.advance(min(chunk, steps - trainer.step))
                report((number * steps + trainer.step) / total, f"{message}, step {trainer.step}/{steps}")
            outcomes.append(_outcome(trainer, time.perf_counter() - started))
        return outcomes


def _outcome(trainer: PairedTrainer, wall_time: float) -> RunOutcome:
    run = trainer.runs["run"]
    last = run.history[-1] if run.history else {}
    finished = not run.diverged and last.get("step") == trainer.step and last.get("val_loss") is not None
    return RunOutcome(
        val_loss=last.get("val_loss") if finished else None,
        train_loss=last.get("train_loss") if finished else None,
        effective_rank=last.get("effective_rank_output") if finished else None,
        trainable_params=run.trainable,
        diverged=not finished,
        diverged_at=run.diverged_at,
        wall_time_s=wall_time,
    )


def describe_task(name: str) -> str:
    """Return a one-paragraph description of the task `name` for the app and the CLI help."""
    if name in TOY_TASK_NAMES:
        return TOY_TASKS[name].description
    descriptions = {
        "style_shift": "Adapt the bundled tiny Llama-style model, pre-trained on Shakespeare's "
                       "tragedies, to his comedies (loss on every byte).",
        "arithmetic": "Teach the bundled model generated arithmetic with worked steps.",
        "reverse": "Teach the bundled model to reverse generated strings.",
        "sort": "Teach the bundled model to sort generated lists.",
    }
    return descriptions.get(name, name)


__all__ = ["LM_TASK_NAMES", "TASK_NAMES", "TOY_TASK_NAMES", "TaskRunner", "build_task",
           "describe_task", "task_option_specs"]
