"""The task interface that the paired trainer, the sweep engine and the app share.

A task owns a frozen base model, a data source and a loss. The trainer injects adapters
into copies of the base model and draws one batch per step, which both runs then share.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


@runtime_checkable
class Task(Protocol):
    """The interface of a trainable task, implemented by toy and language-model tasks."""

    name: str
    kind: str  # "toy" or "lm"

    def base_model(self) -> nn.Module:
        """Return a fresh copy of the base model in train mode; the caller injects adapters."""
        ...

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> Batch:
        """Draw one training batch; the same generator state gives the same batch."""
        ...

    def validation_batches(self) -> list[Batch]:
        """Return the fixed held-out batches used for validation loss."""
        ...

    def spectrum_batch(self) -> Batch:
        """Return the held-out inputs on which the output-view spectra are measured."""
        ...

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Return the scalar training loss of `model` on `batch`."""
        ...

    def floor(self, r: int | None) -> float | None:
        """Return the theory floor of the validation loss at rank `r`, or None if none is known.

        `r=None` requests the rank-independent floor (for example the linear ceiling).
        """
        ...
