"""Singular-value spectra of adapter updates and the summary numbers drawn from them.

Two views of an adapter's update:

* weight view (linear adapters only): singular values of ΔW = s·BA, computed from the
  r×r core of the QR factors of B and Aᵀ, so the d_out×d_in matrix is never formed;
* output view (any adapter, the NoRA paper's measure): singular values of the centred
  adapter-branch outputs Δy (N×d_out) on held-out inputs in eval mode, normalised to sum 1.

Summary numbers for σ₁ ≥ … ≥ σₖ: effective rank exp(H(p)) with p_i = σ_i/Σσ (Roy &
Vetterli, 2007), the 90 %-variance dimension, and the stable rank ‖M‖_F²/σ₁².
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nora_core.adapters import adapter_layers

# Singular values below this fraction of σ₁ count as zero in rank summaries: float32
# round-off leaves values around 1e-7·σ₁ in an exactly rank-deficient matrix.
RELATIVE_ZERO = 1e-6

# Rows of Δy used for the output view; more rows add cost and little accuracy.
MAX_OUTPUT_ROWS = 4096


class NonFiniteError(ValueError):
    """Raised when a matrix contains NaN or infinite values, so it has no spectrum."""


def singular_values(matrix: torch.Tensor | np.ndarray) -> np.ndarray:
    """Return the singular values of a 2-D matrix, largest first, as float64.

    Raises:
        NonFiniteError: when the matrix contains NaN or ±inf.
    """
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().to("cpu", torch.float64).numpy()
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"singular_values needs a 2-D matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise NonFiniteError(f"matrix of shape {matrix.shape} contains NaN or infinite values")
    if matrix.size == 0:
        return np.zeros(0)
    # torch's SVD obeys torch.set_num_threads, numpy's OpenBLAS starts a thread per core:
    # on a loaded 2-core machine a (1024, 128) SVD took 3.7 s with numpy and 0.02 s here.
    return torch.linalg.svdvals(torch.from_numpy(matrix)).numpy()


def _nonzero(sv: np.ndarray) -> np.ndarray:
    sv = np.asarray(sv, dtype=np.float64)
    if sv.size == 0 or sv.max() <= 0:
        return sv[:0]
    return sv[sv > RELATIVE_ZERO * sv.max()]


def effective_rank(sv: np.ndarray) -> float:
    """Return exp of the entropy of σ/Σσ; 0.0 for an empty or all-zero spectrum, never NaN."""
    sv = _nonzero(sv)
    if sv.size == 0:
        return 0.0
    p = sv / sv.sum()
    return float(math.exp(-(p * np.log(p)).sum()))


def variance_dimension(sv: np.ndarray, fraction: float = 0.9) -> int:
    """Return the smallest k with Σ_{i≤k} σ_i² ≥ fraction · Σ σ_i²; 0 for an all-zero spectrum."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    sv = _nonzero(sv)
    if sv.size == 0:
        return 0
    energy = np.cumsum(np.sort(sv)[::-1] ** 2)
    # The small slack keeps fraction=1.0 from failing on round-off in the cumulative sum.
    return int(np.searchsorted(energy, fraction * energy[-1] * (1 - 1e-12)) + 1)


def stable_rank(sv: np.ndarray) -> float:
    """Return ‖M‖_F² / σ₁²; 0.0 for an all-zero spectrum."""
    sv = _nonzero(sv)
    if sv.size == 0:
        return 0.0
    return float((sv ** 2).sum() / sv.max() ** 2)


def normalise(sv: np.ndarray) -> np.ndarray:
    """Scale a spectrum to sum 1; an all-zero spectrum stays all zero."""
    sv = np.asarray(sv, dtype=np.float64)
    total = sv.sum()
    return sv / total if total > 0 else np.zeros_like(sv)


@dataclass(frozen=True)
class Spectrum:
    """Singular values of one matrix with their summaries; `values` is None if non-finite."""

    name: str
    values: np.ndarray | None

    @property
    def finite(self) -> bool:
        return self.values is not None

    @property
    def is_zero(self) -> bool:
        return self.values is None or _nonzero(self.values).size == 0

    @property
    def effective_rank(self) -> float | None:
        return None if self.values is None else effective_rank(self.values)

    @property
    def variance_dimension(self) -> int | None:
        return None if self.values is None else variance_dimension(self.values)

    @property
    def stable_rank(self) -> float | None:
        return None if self.values is None else stable_rank(self.values)

    @property
    def normalised(self) -> np.ndarray | None:
        return None if self.values is None else normalise(self.values)


def _spectrum(name: str, matrix: torch.Tensor) -> Spectrum:
    try:
        return Spectrum(name, singular_values(matrix))
    except NonFiniteError:
        return Spectrum(name, None)


def lowrank_singular_values(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0) -> np.ndarray:
    """Return the singular values of scale · B A without forming the product.

    With B = Q_B R_B and Aᵀ = Q_A R_A (reduced QR), B A = Q_B (R_B R_Aᵀ) Q_Aᵀ, and Q_B, Q_A
    have orthonormal columns, so B A shares its singular values with the r×r core.

    Args:
        B: (d_out, r). A: (r, d_in).
    """
    B = B.detach().to("cpu", torch.float64)
    A = A.detach().to("cpu", torch.float64)
    if not (torch.isfinite(B).all() and torch.isfinite(A).all()):
        raise NonFiniteError("adapter factors contain NaN or infinite values")
    _, r_b = torch.linalg.qr(B)  # (min(d_out, r), r)
    _, r_a = torch.linalg.qr(A.T)  # (min(d_in, r), r)
    core = scale * (r_b @ r_a.T)  # (min(d_out, r), min(d_in, r))
    return singular_values(core)


def weight_view(model: nn.Module) -> dict[str, Spectrum]:
    """Return the spectrum of ΔW = s·BA per linear adapter layer (GLU and non-linear skipped)."""
    spectra = {}
    for layer in adapter_layers(model):
        if not layer.config.is_linear:
            continue
        try:
            sv = lowrank_singular_values(layer.lora_B.weight, layer.lora_A.weight, layer.scaling)
            spectra[layer.name] = Spectrum(layer.name, sv)
        except NonFiniteError:
            spectra[layer.name] = Spectrum(layer.name, None)
    return spectra


@contextmanager
def capture_adapter_outputs(model: nn.Module):
    """Record the adapter-branch outputs Δy of every adapter layer while the block runs.

    Yields a dict from layer name to a list of (N, d_out) tensors, one per forward call.
    """
    layers = list(adapter_layers(model))
    captured: dict[str, list[torch.Tensor]] = {}
    for layer in layers:
        layer.capture = captured.setdefault(layer.name, [])
    try:
        yield captured
    finally:
        for layer in layers:
            layer.capture = None


def output_view(model: nn.Module, run: Callable[[nn.Module], object],
                max_rows: int = MAX_OUTPUT_ROWS) -> dict[str, Spectrum]:
    """Return the spectrum of the centred adapter outputs per layer on held-out inputs.

    `run(model)` performs the forward pass(es) on the held-out data. The model is put in
    eval mode (dropout off) for the measurement and its previous mode is restored.

    Args:
        model: a model with adapters.
        run: a callable that feeds the held-out inputs through `model`.
        max_rows: rows of Δy kept per layer (the first ones), to bound the SVD's cost.
    """
    ranks = {layer.name: layer.config.r for layer in adapter_layers(model)}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), capture_adapter_outputs(model) as captured:
            run(model)
    finally:
        model.train(was_training)
    spectra = {}
    for name, chunks in captured.items():
        if not chunks:
            continue
        delta_y = torch.cat(chunks)[:max_rows].to(torch.float64)  # (N, d_out)
        delta_y = delta_y - delta_y.mean(dim=0, keepdim=True)
        spectrum = _spectrum(name, delta_y)
        if spectrum.finite:
            # Δy lies in the column space of B, so only the first r values can be non-zero.
            spectrum = Spectrum(name, spectrum.values[: ranks[name]])
        spectra[name] = spectrum
    return spectra


def mean_effective_rank(spectra: dict[str, Spectrum]) -> float | None:
    """Average effective rank over the finite spectra; None when there is none."""
    values = [s.effective_rank for s in spectra.values() if s.finite]
    return float(np.mean(values)) if values else None


def average_normalised_spectrum(spectra: dict[str, Spectrum]) -> np.ndarray | None:
    """Average the normalised spectra of several layers, zero-padded to the longest one."""
    rows = [s.normalised for s in spectra.values() if s.finite and not s.is_zero]
    if not rows:
        return None
    width = max(len(r) for r in rows)
    padded = np.zeros((len(rows), width))
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    return padded.mean(axis=0)


__all__ = [
    "NonFiniteError",
    "Spectrum",
    "average_normalised_spectrum",
    "capture_adapter_outputs",
    "effective_rank",
    "lowrank_singular_values",
    "mean_effective_rank",
    "normalise",
    "output_view",
    "singular_values",
    "stable_rank",
    "variance_dimension",
    "weight_view",
]
