"""Rank sweeps: train LoRA and NoRA at many ranks, seeds and learning rates, and tabulate
the final validation loss against the rank (the "linear ceiling", measured).

A `SweepConfig` names a task, the ranks, the seeds and the adapter variants (one line per
variant in the charts). `run_sweep` returns one row per trained run; `summarise` averages
the seeds of each point and, when several learning rates were tried, keeps the best one.

Toy tasks train every run that shares a learning rate in one batched computation
(`nora_core.sweep_batched`); language-model tasks train one run at a time through
`PairedTrainer`. Both paths seed a run's data order and `lora_A` with its seed and its
dropout masks with seed + 1, so the same config and seed give the same numbers on the
same machine and torch version.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nora_core.fields import check_choice
from nora_core.sweep_config import MAX_SEEDS, MAX_STEPS, SweepConfig, Variant
from nora_core.sweep_tasks import TaskRunner, build_task
from nora_core.tasks.base import Task
from nora_core.trainer import safe_perplexity

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]
Execution = Literal["auto", "batched", "sequential"]

__all__ = ["MAX_SEEDS", "MAX_STEPS", "Execution", "ProgressCallback", "RunSpec", "SweepConfig",
           "Variant", "plan_runs", "prepare_task", "run_sweep", "summarise"]


@dataclass(frozen=True)
class RunSpec:
    """One training run of a sweep."""

    variant: Variant
    r: int
    seed: int
    lr: float


def plan_runs(config: SweepConfig) -> list[RunSpec]:
    """List the runs of a sweep in a fixed order: learning rate, variant, rank, seed."""
    return [RunSpec(variant, r, seed, lr)
            for lr in config.learning_rates()
            for variant in config.all_variants()
            for r in config.ranks
            for seed in config.seeds]


def prepare_task(config: SweepConfig) -> Task:
    """Build the sweep's task and check every variant's largest rank and targets on it.

    Raises:
        ValueError: an unknown task option or an invalid value, a rank larger than a
            targeted layer allows, or a target that matches no layer.
    """
    task = build_task(config.task, config.task_kwargs)
    TaskRunner(task, config).check(plan_runs(config))
    return task


def run_sweep(config: SweepConfig, progress: ProgressCallback | None = None,
              execution: Execution = "auto", task: Task | None = None) -> list[dict[str, Any]]:
    """Train every run of `config` and return one row per run.

    Args:
        config: the sweep.
        progress: called as progress(fraction done in [0, 1], message) while training.
        execution: "auto" batches toy tasks and trains language-model runs one at a
            time. "batched" requires the batched path. "sequential" trains every run on
            its own through `PairedTrainer`, which is slower and is the reference that
            the batched path must match.
        task: the task from `prepare_task(config)`; built and checked here when None.

    Returns:
        Rows with task, variant, method, r, seed, scaling, lora_alpha, lr, val_loss,
        val_perplexity (language-model tasks), train_loss, trainable_params,
        effective_rank, wall_time_s, diverged, floor_r and floor_linear.

    Raises:
        ValueError: see `prepare_task`; also "batched" for a task that cannot batch.
    """
    check_choice("run_sweep", "execution", execution, ("auto", "batched", "sequential"))
    if task is None:
        task = prepare_task(config)
    runner = TaskRunner(task, config)
    specs = plan_runs(config)
    report = progress or (lambda fraction, message: None)
    started = time.perf_counter()
    outcomes = runner.train(specs, execution, report)
    logger.info("sweep of %d runs on %s took %.1f s", len(specs), config.task,
                time.perf_counter() - started)
    report(1.0, f"finished {len(specs)} runs")

    rows = []
    floor_linear = task.floor(None)
    for spec, outcome in zip(specs, outcomes):
        adapter = spec.variant.adapter_config(spec.r, None)
        row = {
            "task": config.task,
            "variant": spec.variant.label,
            "method": spec.variant.method,
            "r": spec.r,
            "seed": spec.seed,
            "scaling": adapter.scaling,
            "lora_alpha": adapter.lora_alpha,
            "activation": adapter.activation,
            "lora_dropout": adapter.lora_dropout,
            "targets": spec.variant.targets,
            "lr": spec.lr,
            "steps": config.steps,
            "val_loss": outcome.val_loss,
            "train_loss": outcome.train_loss,
            "trainable_params": outcome.trainable_params,
            "effective_rank": outcome.effective_rank,
            "wall_time_s": outcome.wall_time_s,
            "diverged": outcome.diverged,
            "floor_r": task.floor(spec.r),
            "floor_linear": floor_linear,
        }
        if task.kind == "lm":
            row["val_perplexity"] = safe_perplexity(outcome.val_loss)
        rows.append(row)
    return rows


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else None
    return float(array.mean()), std


def summarise(rows: list[dict[str, Any]], best_lr: bool = True) -> list[dict[str, Any]]:
    """Average the seeds of each (variant, r, lr) point; keep the best lr per (variant, r).

    The standard deviation is the sample one (n − 1) over finished seeds, None for one seed.
    `wall_time_s` is the summed wall time of the point's runs.
    The best learning rate has the lowest mean validation loss among the rates at which no
    seed diverged. When every rate had a diverged seed, the rates with any finished seed
    compete.

    Args:
        rows: rows from `run_sweep`.
        best_lr: keep only the best learning rate per point; False keeps every rate.
    """
    points: dict[tuple, list[dict]] = {}
    for row in rows:
        points.setdefault((row["variant"], row["r"], row["lr"]), []).append(row)

    summary = []
    for (variant, r, lr), group in points.items():
        finished = [row for row in group if not row["diverged"] and row["val_loss"] is not None]
        loss_mean, loss_std = _mean_std([row["val_loss"] for row in finished])
        rank_values = [row["effective_rank"] for row in finished if row["effective_rank"] is not None]
        rank_mean, rank_std = _mean_std(rank_values)
        first = group[0]
        entry = {
            "task": first["task"], "variant": variant, "method": first["method"], "r": r, "lr": lr,
            "seeds": len(finished), "diverged": len(group) - len(finished),
            "val_loss_mean": loss_mean, "val_loss_std": loss_std,
            "effective_rank_mean": rank_mean, "effective_rank_std": rank_std,
            "trainable_params": first["trainable_params"],
            "floor_r": first["floor_r"], "floor_linear": first["floor_linear"],
            "wall_time_s": float(sum(row["wall_time_s"] for row in group)),
        }
        if "val_perplexity" in first:
            entry["val_perplexity_mean"], entry["val_perplexity_std"] = _mean_std(
                [row["val_perplexity"] for row in finished if row["val_perplexity"] is not None])
        summary.append(entry)
    if not best_lr:
        return summary

    best: dict[tuple, dict] = {}
    tried: dict[tuple, int] = {}
    for entry in summary:
        key = (entry["variant"], entry["r"])
        tried[key] = tried.get(key, 0) + 1
        if key not in best or _lr_rank(entry) < _lr_rank(best[key]):
            best[key] = entry
    for key, entry in best.items():
        entry["lrs_tried"] = tried[key]
    return list(best.values())


def _lr_rank(entry: dict[str, Any]) -> tuple:
    """Sort key of a learning rate's point: fully finished first, then lower mean loss."""
    loss = entry["val_loss_mean"]
    return (entry["diverged"] > 0, math.inf if loss is None else loss)
