"""Data-parallel training across processes started by `torchrun` or `accelerate launch`.

Both launchers start one process per device and set RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT. When WORLD_SIZE is above 1, `init_distributed` joins the
process group with NCCL on CUDA and gloo on the CPU; otherwise everything here is a
no-op, so the same training code runs in one plain process.

Only the adapter parameters are trainable, so `DistributedDataParallel` averages only
their gradients. The frozen base weights are loaded identically by every process and
are excluded from DDP's start-up broadcast, which would otherwise copy a whole base
model from rank 0 to every other rank. `DistributedDataParallel._set_params_and_buffers_to_ignore_for_model`
is a private PyTorch API (present in torch 2.0 to 2.13); if it goes away, the broadcast
only costs time.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nora_core.device import resolve_device

logger = logging.getLogger(__name__)

_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Position of this process in a data-parallel job; rank 0 of world size 1 when alone."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only process that logs progress and writes files."""
        return self.rank == 0


def _env_int(name: str) -> int:
    text = os.environ.get(name)
    try:
        return int(text)
    except (TypeError, ValueError):
        raise RuntimeError(
            f"environment variable {name}={text!r} is not an integer; start several processes "
            "with torchrun or accelerate launch, which set RANK, WORLD_SIZE and LOCAL_RANK"
        ) from None


def launched_world_size() -> int:
    """Return WORLD_SIZE as set by a launcher, 1 when the variable is absent."""
    if "WORLD_SIZE" not in os.environ:
        return 1
    return _env_int("WORLD_SIZE")


def _auto_choice(choice: str) -> str:
    # `accelerate launch --cpu` sets ACCELERATE_USE_CPU; "auto" then means the CPU.
    accelerate_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return "cpu" if choice == "auto" and accelerate_cpu else choice


def _choose_device(choice: str, local_rank: int) -> torch.device:
    choice = _auto_choice(choice)
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "mps":
        raise ValueError("device 'mps' cannot train with several processes; use 'cpu' or 'cuda'")
    device = resolve_device(choice)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"LOCAL_RANK {local_rank} has no GPU: this host has {count}; start at most "
                f"{count} processes per node (--nproc_per_node={count})"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def init_distributed(device_choice: str = "auto") -> tuple[DistributedContext, torch.device]:
    """Join the process group a launcher prepared, or return a single-process context.

    Args:
        device_choice: "auto", "cpu", "cuda" or "mps". With several processes, "auto"
            and "cuda" mean GPU number LOCAL_RANK and the NCCL backend; "cpu" means gloo.

    Returns:
        The context and the torch device this process trains on.

    Raises:
        ValueError: the device is absent, or there are more processes than GPUs.
        RuntimeError: the launcher's environment variables are missing or malformed.
    """
    world_size = launched_world_size()
    if world_size <= 1:
        return DistributedContext(), resolve_device(_auto_choice(device_choice))
    missing = [name for name in _LAUNCHER_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} are not set; start the job with "
            "torchrun or accelerate launch"
        )
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    device = _choose_device(device_choice, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    context = DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank,
                                 backend=backend)
    logger.debug("process %d of %d joined the %s process group on %s", rank, world_size, backend, device)
    return context, device


def shutdown(context: DistributedContext) -> None:
    """Leave the process group, if this process joined one."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, device: torch.device, context: DistributedContext) -> nn.Module:
    """Wrap `model` in `DistributedDataParallel` over its trainable parameters; no-op alone."""
    if not context.enabled:
        return model
    frozen = [name for name, param in model.named_parameters() if not param.requires_grad]
    # Buffers of a causal LM (rotary frequency tables) are computed identically on every
    # rank from the model config, so they need no broadcast either.
    buffers = [name for name, _ in model.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen + buffers)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(values: list[float], context: DistributedContext, device: torch.device) -> list[float]:
    """Return the element-wise sum of `values` over all processes (the values alone when single)."""
    if not context.enabled:
        return list(values)
    # NCCL reduces only tensors on the GPU; gloo reduces CPU tensors.
    tensor = torch.tensor(values, dtype=torch.float64, device=device)  # (len(values),)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """Return every process's `value`, ordered by rank (a one-item list when single)."""
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: DistributedContext) -> None:
    """Wait until every process reaches this point; no-op when single."""
    if context.enabled:
        dist.barrier()
