"""Train many adapters on one toy task in a single batched computation.

Every run that shares a learning rate (any rank, seed, method, activation, dropout or
scale) trains at once. Each targeted layer is replaced by a `BatchedAdapterLayer`, which
concatenates the factors of all runs along the rank axis, so no rank is padded.

The runs share no parameter, so the gradient of the summed per-run losses with respect to
run k's factors is run k's own gradient, and AdamW, which acts element by
element, moves each run as a separate optimiser would. Initialisation, batches and
dropout masks come from the same seeded generators that `PairedTrainer` uses, so the
results equal one-at-a-time training up to float32 summation order inside the matrix
products.

The batched path relies on the toy-task contract: the task's loss calls `model(batch["x"])`
once and scores the prediction against the batch.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nora_core.adapters import adapter_layers, inject_adapters
from nora_core.batched_layer import BatchedAdapterLayer
from nora_core.config import AdapterConfig
from nora_core.spectra import MAX_OUTPUT_ROWS, effective_rank
from nora_core.tasks.base import Batch, Task

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def single_thread():
    """Run the block with one intra-op torch thread, then restore the previous count.

    Toy-sized products gain nothing from intra-op threads, and on a busy CPU the thread
    hand-offs made the batched step about ten times slower. One thread also makes the
    numbers independent of the machine's core count.
    """
    # NOTE: with the OpenMP backend the count is per calling thread (checked on torch
    # 2.13 for Linux), so other Streamlit sessions keep theirs. Other backends may apply
    # it to the whole process while the block runs.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class RunOutcome:
    """Final numbers of one training run."""

    val_loss: float | None
    train_loss: float | None
    effective_rank: float | None
    trainable_params: int
    diverged: bool
    diverged_at: int | None
    wall_time_s: float


def can_batch(task: Task, configs: list[AdapterConfig]) -> bool:
    """True when `train_batched` supports this task and these adapters.

    The batched path covers toy tasks with `nn.Linear` targets and adapters without the
    GLU gate; everything else trains one run at a time.
    """
    if task.kind != "toy" or any(config.glu_gate for config in configs):
        return False
    model = task.base_model()
    for config in configs:
        names = _target_names(model, config)
        if not all(isinstance(model.get_submodule(name), nn.Linear) for name in names):
            return False
    return True


def _target_names(model: nn.Module, config: AdapterConfig) -> list[str]:
    # Injecting into a throwaway copy applies exactly the matching and rank checks of
    # `inject_adapters`, including its error messages.
    probe = inject_adapters(copy.deepcopy(model), config)
    return [layer.name for layer in adapter_layers(probe)]


class _Replay(nn.Module):
    """A stand-in model that returns a prediction computed beforehand, so the task's own
    loss function can score one run's slice of the batched output."""

    def __init__(self, prediction: torch.Tensor) -> None:
        super().__init__()
        self.prediction = prediction

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.prediction


def _build_batched_model(task: Task, configs: list[AdapterConfig],
                         seeds: list[int]) -> tuple[nn.Module, list[BatchedAdapterLayer]]:
    model = task.base_model()
    model.requires_grad_(False)
    names_per_run = [_target_names(model, config) for config in configs]
    names = names_per_run[0]
    if any(other != names for other in names_per_run[1:]):
        raise ValueError("runs trained in one batch must adapt the same layers; group them by target")
    layers = []
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = BatchedAdapterLayer(getattr(parent, child), configs, name)
        setattr(parent, child, layer)
        layers.append(layer)

    # One init generator and one dropout generator per run, seeded as PairedTrainer seeds them.
    for k, seed in enumerate(seeds):
        init_generator = torch.Generator().manual_seed(seed)
        dropout_generator = torch.Generator().manual_seed(seed + 1)
        for layer in layers:  # module order, as reset_adapters walks the layers
            layer.reset_run(k, init_generator)
            layer.generators[k] = dropout_generator
    model.train()
    return model, layers


def _run_losses(task: Task, output: torch.Tensor, batches: list[Batch]) -> torch.Tensor:
    """Score each run's slice of `output` (K, N, ...) with the task loss; returns (K,)."""
    # unbind has one backward node for all slices. Indexing output[k] instead would make
    # each slice's backward fill a zero tensor of the full (K, N, ...) shape.
    slices = output.unbind(0)
    losses = [task.loss(_Replay(prediction), batch) for prediction, batch in zip(slices, batches)]
    return torch.stack(losses)


def _validation_losses(task: Task, model: nn.Module, runs: int) -> list[float]:
    """Per run, the mean task loss over the validation batches, in eval mode."""
    batches = task.validation_batches()
    per_batch = []
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                output = model(batch["x"])  # (K, N, ...)
                per_batch.append(_run_losses(task, output, [batch] * runs).tolist())
    finally:
        model.train()
    # Summed batch by batch and divided once, as PairedTrainer.validation_loss does.
    return [sum(values[k] for values in per_batch) / len(per_batch) for k in range(runs)]


def _effective_ranks(task: Task, model: nn.Module, layers: list[BatchedAdapterLayer],
                     ranks: list[int]) -> list[float | None]:
    """Mean output-view effective rank over layers per run, measured as `output_view` does:
    eval mode, centred Δy, its first r singular values."""
    batch = task.spectrum_batch()
    captured: dict[str, list[torch.Tensor]] = {}
    for layer in layers:
        layer.capture = captured.setdefault(layer.name, [])
    model.eval()
    try:
        with torch.no_grad():
            model(batch["x"])
    finally:
        model.train()
        for layer in layers:
            layer.capture = None

    per_run: list[list[float]] = [[] for _ in ranks]
    for chunks in captured.values():
        delta_y = torch.cat(chunks).flatten(1, -2)  # (K, N, d_out), one forward call
        delta_y = delta_y[:, :MAX_OUTPUT_ROWS].to(torch.float64)
        delta_y = delta_y - delta_y.mean(dim=1, keepdim=True)
        finite = torch.isfinite(delta_y).flatten(1).all(dim=1)  # (K,)
        # One batched SVD for all runs; runs with NaN or inf get no spectrum, as in output_view.
        values = torch.linalg.svdvals(torch.where(finite[:, None, None], delta_y, 0.0))  # (K, min(N, d_out))
        for k, r in enumerate(ranks):
            if finite[k]:
                # Δy lies in the column space of lora_B, so only the first r values can be non-zero.
                per_run[k].append(effective_rank(values[k, :r].numpy()))
    return [sum(v) / len(v) if v else None for v in per_run]


def _stack_inputs(batches_by_seed: dict[int, Batch], seeds: list[int]) -> tuple[torch.Tensor, list[Batch]]:
    """Return the model input, shared (N, ...) for one seed or per run (K, N, ...), and each run's batch."""
    run_batches = [batches_by_seed[seed] for seed in seeds]
    if len(batches_by_seed) == 1:
        return run_batches[0]["x"], run_batches
    return torch.stack([batch["x"] for batch in run_batches]), run_batches


def train_batched(task: Task, configs: list[AdapterConfig], seeds: list[int], *, lr: float,
                  batch_size: int, steps: int, weight_decay: float = 0.0,
                  progress: Callable[[int], None] | None = None,
                  progress_every: int = 50) -> list[RunOutcome]:
    """Train K runs of one toy task together and return their final numbers, in input order.

    Args:
        task: a toy task (see `can_batch`).
        configs: one adapter config per run; all must target the same layers.
        seeds: per run, the seed of its data order, adapter initialisation (seed) and
            dropout masks (seed + 1), as in `PairedTrainer`.
        lr: AdamW learning rate shared by all runs.
        batch_size: examples per training step.
        steps: training steps.
        weight_decay: AdamW weight decay.
        progress: called with the number of steps done every `progress_every` steps.
        progress_every: steps between progress calls.
    """
    if len(configs) != len(seeds) or not configs:
        raise ValueError(f"train_batched needs one seed per config, got {len(configs)} configs "
                         f"and {len(seeds)} seeds")
    # Runs sorted by rank form one bucket per distinct rank in every batched layer.
    order = sorted(range(len(configs)), key=lambda k: configs[k].r)
    outcomes = _train_in_order(task, [configs[k] for k in order], [seeds[k] for k in order], lr=lr,
                               batch_size=batch_size, steps=steps, weight_decay=weight_decay,
                               progress=progress, progress_every=progress_every)
    result: list[RunOutcome | None] = [None] * len(configs)
    for position, k in enumerate(order):
        result[k] = outcomes[position]
    return result


def _train_in_order(task: Task, configs: list[AdapterConfig], seeds: list[int], *, lr: float, batch_size: int,
                    steps: int, weight_decay: float, progress: Callable[[int], None] | None,
                    progress_every: int) -> list[RunOutcome]:
    started = time.perf_counter()
    runs = len(configs)
    model, layers = _build_batched_model(task, configs, seeds)
    parameters = [p for layer in layers for p in (layer.lora_A, layer.lora_B)]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    data_generators = {seed: torch.Generator().manual_seed(seed) for seed in sorted(set(seeds))}

    live = torch.ones(runs, dtype=torch.bool)
    diverged_at: list[int | None] = [None] * runs
    last_train = [math.nan] * runs
    for step in range(1, steps + 1):
        batches = {seed: task.sample_batch(gen, batch_size) for seed, gen in data_generators.items()}
        inputs, run_batches = _stack_inputs(batches, seeds)
        output = model(inputs)  # (K, N, ...)
        losses = _run_losses(task, output, run_batches)  # (K,)
        values = losses.detach().tolist()
        finite = torch.isfinite(losses.detach())
        for k in torch.nonzero(live & ~finite).flatten().tolist():
            diverged_at[k] = step
            logger.warning("batched run %d (%s, seed %d) diverged at step %d: training loss is %s",
                           k, configs[k].label(), seeds[k], step, values[k])
        live &= finite
        for k in torch.nonzero(live).flatten().tolist():
            last_train[k] = values[k]
        if not bool(live.any()):
            break
        # A diverged run leaves the sum. Its own factors may still get NaN gradients, but no
        # computation mixes runs, so the other runs' gradients stay exact.
        total = torch.where(live, losses, torch.zeros_like(losses)).sum()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if progress is not None and (step % progress_every == 0 or step == steps):
            progress(step)

    val_losses = _validation_losses(task, model, runs)
    for k, value in enumerate(val_losses):
        if live[k] and not math.isfinite(value):
            live[k] = False
            diverged_at[k] = steps
            logger.warning("batched run %d (%s, seed %d) diverged: validation loss is %s",
                           k, configs[k].label(), seeds[k], value)
    ranks = _effective_ranks(task, model, layers, [config.r for config in configs])
    wall = (time.perf_counter() - started) / runs

    outcomes = []
    for k in range(runs):
        ok = bool(live[k])
        outcomes.append(RunOutcome(
            val_loss=val_losses[k] if ok else None,
            train_loss=last_train[k] if ok else None,
            effective_rank=ranks[k] if ok else None,
            trainable_params=sum(layer.trainable_params(k) for layer in layers),
            diverged=not ok,
            diverged_at=diverged_at[k],
            wall_time_s=wall,
        ))
    return outcomes
