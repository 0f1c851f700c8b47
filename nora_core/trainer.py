"""Train several adapters on one task side by side, on the same seed and the same batches.

`PairedTrainer` keeps one run per adapter config (normally a LoRA run and a NoRA run). Each
call to `advance` draws one batch per step and feeds it to every live run, so the curves
differ only by the adapter. A run whose loss turns non-finite stops and is marked
diverged; the others go on. The trainer knows nothing of any UI: it returns metric rows.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from nora_core.adapters import (adapter_parameters, count_trainable, inject_adapters,
                                reset_adapters, set_dropout_generator)
from nora_core.config import AdapterConfig
from nora_core.device import DEVICE_CHOICES, autocast, resolve_device
from nora_core.fields import check_choice, check_range
from nora_core.spectra import Spectrum, mean_effective_rank, output_view, weight_view
from nora_core.tasks.base import Batch, Task

logger = logging.getLogger(__name__)

# exp() of a loss above this overflows float64; such a perplexity is reported as inf.
MAX_EXP_ARG = 700.0


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule settings shared by every run of a trainer."""

    lr: float = field(default=3e-3, metadata={
        "help": "AdamW learning rate.", "min": 1e-6, "max": 10.0, "log": True,
        "label": "learning rate"})
    batch_size: int = field(default=128, metadata={
        "help": "Examples per training step.", "min": 1, "max": 4096, "unit": "examples",
        "label": "batch size"})
    seed: int = field(default=0, metadata={
        "help": "Seed for data order, adapter initialisation and dropout masks.", "min": 0,
        "max": 2**31 - 1, "label": "seed"})
    weight_decay: float = field(default=0.0, metadata={
        "help": "AdamW weight decay on the adapter parameters.", "min": 0.0, "max": 1.0,
        "label": "weight decay"})
    grad_clip: float = field(default=0.0, metadata={
        "help": "Clip the gradient norm to this value; 0 turns clipping off.", "min": 0.0,
        "max": 1000.0, "label": "gradient clip"})
    eval_every: int = field(default=10, metadata={
        "help": "Steps between validation evaluations.", "min": 1, "max": 10000,
        "unit": "steps", "label": "evaluate every"})
    spectrum_every: int = field(default=25, metadata={
        "help": "Steps between spectrum measurements.", "min": 1, "max": 10000,
        "unit": "steps", "label": "spectra every"})
    device: Literal["auto", "cpu", "cuda", "mps"] = field(default="cpu", metadata={
        "help": "Where to train: auto picks CUDA, then MPS, then CPU.", "label": "device"})

    def __post_init__(self) -> None:
        owner = "TrainConfig"
        check_range(owner, "lr", self.lr)
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        check_range(owner, "batch_size", self.batch_size, 1, 4096, integer=True)
        check_range(owner, "seed", self.seed, 0, 2**31 - 1, integer=True)
        check_range(owner, "weight_decay", self.weight_decay, 0.0, 1.0)
        check_range(owner, "grad_clip", self.grad_clip, 0.0)
        check_range(owner, "eval_every", self.eval_every, 1, integer=True)
        check_range(owner, "spectrum_every", self.spectrum_every, 1, integer=True)
        check_choice(owner, "device", self.device, DEVICE_CHOICES)


def safe_perplexity(loss: float | None) -> float | None:
    """Return exp(loss), inf when that overflows, None for a missing or NaN loss."""
    if loss is None or math.isnan(loss):
        return None
    if loss > MAX_EXP_ARG:
        return math.inf
    return math.exp(loss)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {key: value.to(device) for key, value in batch.items()}


@dataclass
class AdapterRun:
    """One adapter being trained: its model, optimiser, history and divergence state."""

    name: str
    config: AdapterConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    dropout_generator: torch.Generator
    trainable: int
    step: int = 0
    diverged_at: int | None = None
    history: list[dict] = field(default_factory=list)
    output_spectra: dict[str, Spectrum] = field(default_factory=dict)
    weight_spectra: dict[str, Spectrum] = field(default_factory=dict)
    last_finite: dict = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None


class PairedTrainer:
    """Train one adapter per config on the same task, seed and batches.

    Args:
        task: the task supplying the base model, batches, loss and floor.
        configs: run name → adapter config, e.g. {"LoRA": ..., "NoRA": ...}.
        train: optimiser and schedule settings shared by all runs.
    """

    def __init__(self, task: Task, configs: dict[str, AdapterConfig], train: TrainConfig) -> None:
        if not configs:
            raise ValueError("PairedTrainer needs at least one adapter config")
        self.task = task
        self.train_config = train
        self.device = resolve_device(train.device)
        self.data_generator = torch.Generator().manual_seed(train.seed)
        self.step = 0
        self.elapsed = 0.0
        self.runs: dict[str, AdapterRun] = {}
        self._validation: list[Batch] | None = None
        self._spectrum_batch: Batch | None = None
        for name, config in configs.items():
            self.runs[name] = self._build_run(name, config)
        self._measure(force=True)

    def _build_run(self, name: str, config: AdapterConfig) -> AdapterRun:
        config = with_task_targets(config, self.task)
        model = inject_adapters(self.task.base_model(), config)
        model.to(self.device)
        reset_adapters(model, self.train_config.seed)
        dropout_generator = torch.Generator(device=self.device).manual_seed(self.train_config.seed + 1)
        set_dropout_generator(model, dropout_generator)
        model.train()
        optimizer = torch.optim.AdamW(adapter_parameters(model), lr=self.train_config.lr,
                                      weight_decay=self.train_config.weight_decay)
        return AdapterRun(name, config, model, optimizer, dropout_generator, count_trainable(model))

    @property
    def validation(self) -> list[Batch]:
        if self._validation is None:
            self._validation = [_to_device(b, self.device) for b in self.task.validation_batches()]
        return self._validation

    @property
    def spectrum_batch(self) -> Batch:
        if self._spectrum_batch is None:
            self._spectrum_batch = _to_device(self.task.spectrum_batch(), self.device)
        return self._spectrum_batch

    def set_learning_rate(self, lr: float) -> None:
        """Change the learning rate of every run from the next step on."""
        self.train_config = dataclasses.replace(self.train_config, lr=lr)
        for run in self.runs.values():
            for group in run.optimizer.param_groups:
                group["lr"] = lr

    def _train_step(self, run: AdapterRun, batch: Batch) -> float:
        with autocast(self.device):
            loss = self.task.loss(run.model, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            return value
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.train_config.grad_clip > 0:
            nn.utils.clip_grad_norm_(adapter_parameters(run.model), self.train_config.grad_clip)
        run.optimizer.step()
        return value

    def validation_loss(self, run: AdapterRun) -> float:
        """Return the mean loss of `run` over the validation batches, in eval mode."""
        run.model.eval()
        try:
            with torch.no_grad(), autocast(self.device):
                losses = [float(self.task.loss(run.model, b)) for b in self.validation]
        finally:
            run.model.train()
        return sum(losses) / len(losses)

    def _measure_spectra(self, run: AdapterRun) -> None:
        batch = self.spectrum_batch
        run.output_spectra = output_view(run.model, lambda m: self.task.loss(m, batch))
        run.weight_spectra = weight_view(run.model)

    def _record(self, run: AdapterRun, train_loss: float | None, evaluate: bool,
                spectra: bool) -> dict:
        row = {"run": run.name, "step": run.step, "train_loss": train_loss,
               "val_loss": None, "effective_rank_output": None, "effective_rank_weight": None,
               "time": self.elapsed}
        if evaluate:
            row["val_loss"] = self.validation_loss(run)
            if not math.isfinite(row["val_loss"]):
                self._mark_diverged(run, "validation loss is not finite")
        if spectra and not run.diverged:
            self._measure_spectra(run)
            row["effective_rank_output"] = mean_effective_rank(run.output_spectra)
            row["effective_rank_weight"] = mean_effective_rank(run.weight_spectra)
        if self.task.kind == "lm":
            row["val_perplexity"] = safe_perplexity(row["val_loss"])
        run.history.append(row)
        if not run.diverged:
            # Merge, so a metric measured only every few steps (val_loss) stays in the summary.
            run.last_finite.update({k: v for k, v in row.items() if v is not None})
        return row

    def _mark_diverged(self, run: AdapterRun, reason: str) -> None:
        if run.diverged:
            return
        run.diverged_at = run.step
        logger.warning("run %s diverged at step %d: %s", run.name, run.step, reason)

    def _measure(self, force: bool = False) -> list[dict]:
        config = self.train_config
        evaluate = force or self.step % config.eval_every == 0
        spectra = force or self.step % config.spectrum_every == 0
        rows = []
        for run in self.runs.values():
            if not run.diverged:
                rows.append(self._record(run, None, evaluate, spectra))
        return rows

    def advance(self, steps: int = 1, max_seconds: float | None = None) -> list[dict]:
        """Train every live run for up to `steps` steps, or until `max_seconds` have passed.

        Returns the metric rows recorded during this call, one per run and step.
        """
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        rows: list[dict] = []
        started = time.perf_counter()
        config = self.train_config
        for _ in range(steps):
            if self.finished:
                break
            tic = time.perf_counter()
            batch = _to_device(self.task.sample_batch(self.data_generator, config.batch_size),
                               self.device)
            self.step += 1
            losses = {}
            for run in self.runs.values():
                if run.diverged:
                    continue
                losses[run.name] = self._train_step(run, batch)
                run.step = self.step
            self.elapsed += time.perf_counter() - tic
            evaluate = self.step % config.eval_every == 0
            spectra = self.step % config.spectrum_every == 0
            for name, loss in losses.items():
                run = self.runs[name]
                if not math.isfinite(loss):
                    self._mark_diverged(run, f"training loss is {loss}")
                    rows.append({"run": name, "step": self.step, "train_loss": None,
                                 "val_loss": None, "time": self.elapsed, "diverged": True})
                    continue
                rows.append(self._record(run, loss, evaluate, spectra))
            if max_seconds is not None and time.perf_counter() - started >= max_seconds:
                break
        return rows

    @property
    def finished(self) -> bool:
        """True when every run has diverged."""
        return all(run.diverged for run in self.runs.values())

    def steps_per_second(self) -> float:
        """Return training steps per second over the whole run so far (all runs together)."""
        return self.step / self.elapsed if self.elapsed > 0 else 0.0

    def floor(self, r: int | None = None) -> float | None:
        return self.task.floor(r)

    def summary(self) -> dict[str, dict]:
        """Return, per run, the last finite metrics, trainable count and divergence state."""
        return {
            name: {**run.last_finite, "trainable": run.trainable, "diverged_at": run.diverged_at,
                   "label": run.config.label()}
            for name, run in self.runs.items()
        }

    def clone_model(self, name: str) -> nn.Module:
        """Return a detached copy of one run's model, for export or generation."""
        return copy.deepcopy(self.runs[name].model)


def with_task_targets(config: AdapterConfig, task: Task) -> AdapterConfig:
    """Fill in the task's default `target_modules` when the config leaves them unset."""
    default = getattr(task, "target_modules", None)
    if config.target_modules is None and default is not None:
        return dataclasses.replace(config, target_modules=default)
    return config


def paired_configs(lora: AdapterConfig, nora: AdapterConfig) -> dict[str, AdapterConfig]:
    """Name a LoRA and a NoRA config the way the app and CLI show them."""
    return {"LoRA": lora, "NoRA": nora}
