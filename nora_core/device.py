"""Choose the torch device and the autocast dtype for training.

"auto" picks CUDA, then Apple's MPS, then the CPU. GPUs that support bfloat16 train under
bf16 autocast; the CPU trains in float32.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

DeviceChoice = Literal["auto", "cpu", "cuda", "mps"]
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """List the device types this host can train on, best first."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def resolve_device(choice: str = "auto") -> torch.device:
    """Turn a device choice into a `torch.device`, with a clear error if it is absent.

    Raises:
        ValueError: for an unknown choice, or a device this host does not have.
    """
    if choice not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {choice!r}")
    have = available_devices()
    if choice == "auto":
        return torch.device(have[0])
    if choice not in have:
        raise ValueError(
            f"device {choice!r} is not available on this host (available: {', '.join(have)}); "
            "choose 'auto' or 'cpu'"
        )
    return torch.device(choice)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Return bfloat16 for GPUs that support it, None (plain float32) otherwise."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, enabled: bool = True):
    """Return a bf16 autocast context on capable GPUs, and a no-op context elsewhere."""
    dtype = autocast_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
