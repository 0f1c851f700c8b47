"""Teacher regression tasks with a known theory floor, for x ~ N(0, I) in d dimensions.

* `LinearTeacherTask`: target y = (W0 + ΔW*) x with ΔW* = U diag(σ) Vᵀ. By the
  Eckart–Young theorem the best rank-r update leaves the mean squared error
  Σ_{i>r} σ_i² / d (plus the noise variance).
* `NonlinearTeacherTask`: target y = W0 x + g(x) with g(x) = U (φ(c V x) − μ). No linear
  map of any rank fits g exactly: the least-squares residual of g on x is the linear
  ceiling. Because E[x xᵀ] = I, the error of any linear map M splits as
  E‖g − M x‖² = E‖g − M* x‖² + ‖M − M*‖_F² with M* = E[g xᵀ], so the best rank-r map is
  the truncated SVD of M* and the rank-r floor is the ceiling plus the discarded σ_i(M*)².

Adapters add s·B f(A x) with no bias term, so the floors are for linear maps without an
intercept. A constant offset in g (the mean of φ) therefore counts as unfittable.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import integrate, special

from nora_core.tasks.regression import TeacherTask
from nora_core.tasks.toy_common import SEED_MAX, validate_fields

SpectrumShape = Literal["power_law", "exponential", "flat"]
TeacherFamily = Literal["silu_mlp", "relu_mlp", "sin", "quadratic"]

MAX_D = 1024


def _d_field() -> object:
    return field(default=64, metadata={
        "help": "Input and output width of the base layer W0 and of the teacher.",
        "min": 2, "max": MAX_D, "label": "width d"})


def _noise_field() -> object:
    return field(default=0.0, metadata={
        "help": "Standard deviation of Gaussian noise added to the targets; its square adds "
                "to every floor.", "min": 0.0, "max": 10.0, "label": "label noise std"})


def _n_train_field() -> object:
    return field(default=None, metadata={
        "help": "Size of a fixed training set; empty draws fresh samples every step "
                "(infinite data).", "min": 1, "max": 1_000_000, "unit": "samples",
        "label": "training set size"})


def _n_val_field() -> object:
    return field(default=2048, metadata={
        "help": "Size of the held-out validation set, drawn from the task seed.",
        "min": 64, "max": 16384, "unit": "samples", "label": "validation size"})


def _n_spectrum_field() -> object:
    return field(default=512, metadata={
        "help": "Held-out inputs on which the output-view spectra are measured.",
        "min": 16, "max": 8192, "unit": "samples", "label": "spectrum inputs"})


def _seed_field() -> object:
    return field(default=0, metadata={
        "help": "Seed of the base weights, the teacher and the held-out data.",
        "min": 0, "max": SEED_MAX, "label": "task seed"})


def _random_orthonormal(generator: torch.Generator, rows: int, cols: int) -> torch.Tensor:
    """Return a Haar-random (rows, cols) float64 matrix with orthonormal columns, rows >= cols."""
    gaussian = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)  # q (rows, cols), r (cols, cols)
    # Fixing the signs of diag(r) makes q Haar-distributed instead of biased by QR.
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return q * signs


@dataclass(frozen=True)
class LinearTeacherConfig:
    """Settings of the linear teacher y = (W0 + ΔW*) x."""

    d: int = _d_field()
    spectrum: SpectrumShape = field(default="power_law", metadata={
        "help": "Shape of the singular values of ΔW*: power_law σ_i = σ_1·i^(-decay), "
                "exponential σ_i = σ_1·exp(-decay·(i-1)), flat σ_i = σ_1.",
        "label": "spectrum"})
    sigma_1: float = field(default=1.0, metadata={
        "help": "Largest singular value σ_1 of ΔW*; with normalize on, only the ratios "
                "σ_i/σ_1 matter.", "min": 1e-3, "max": 1e3, "log": True, "label": "σ_1"})
    decay: float = field(default=1.0, metadata={
        "help": "Decay rate of the power-law or exponential spectrum; ignored for flat.",
        "min": 0.0, "max": 10.0, "label": "decay"})
    true_rank: int | None = field(default=None, metadata={
        "help": "Number of non-zero singular values of ΔW*; empty means d (full rank).",
        "min": 1, "max": MAX_D, "label": "true rank"})
    normalize: bool = field(default=True, metadata={
        "help": "Rescale ΔW* so that ‖ΔW*‖_F² = d: the base model's noise-free MSE is then "
                "1 and losses read as fractions of it.", "label": "normalize to base loss 1"})
    noise_std: float = _noise_field()
    n_train: int | None = _n_train_field()
    n_val: int = _n_val_field()
    n_spectrum: int = _n_spectrum_field()
    seed: int = _seed_field()

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.true_rank is not None and self.true_rank > self.d:
            raise ValueError(
                f"LinearTeacherConfig.true_rank must be <= d = {self.d}, got {self.true_rank}; "
                "lower true_rank, raise d, or leave true_rank empty for full rank"
            )

    def singular_values(self) -> np.ndarray:
        """Return the d singular values of ΔW* (float64, largest first, zeros past true_rank)."""
        index = np.arange(1, self.d + 1, dtype=np.float64)
        if self.spectrum == "power_law":
            sigma = self.sigma_1 * index ** (-self.decay)
        elif self.spectrum == "exponential":
            sigma = self.sigma_1 * np.exp(-self.decay * (index - 1))
        else:
            sigma = np.full(self.d, self.sigma_1)
        if self.true_rank is not None:
            sigma[self.true_rank:] = 0.0
        if self.normalize:
            sigma = sigma * math.sqrt(self.d / float(np.sum(sigma ** 2)))
        return sigma


class LinearTeacherTask(TeacherTask):
    """Fit y = (W0 + ΔW*) x from the frozen base y = W0 x; the floor is Eckart–Young."""

    name = "linear_teacher"
    config_class = LinearTeacherConfig
    description = (
        "A frozen linear layer y = W0 x learns the teacher y = (W0 + ΔW*) x, where ΔW* has a "
        "chosen singular-value spectrum. The floor at rank r is the Eckart–Young error of the "
        "best rank-r update: LoRA can approach it and no linear update can beat it."
    )

    def __init__(self, config: LinearTeacherConfig | None = None) -> None:
        super().__init__(config if config is not None else LinearTeacherConfig())

    def _build_teacher(self, generator: torch.Generator) -> None:
        d = self.config.d
        self._sigma = self.config.singular_values()  # (d,) float64
        left_basis = _random_orthonormal(generator, d, d)  # U (d, d)
        right_basis = _random_orthonormal(generator, d, d)  # V (d, d)
        sigma = torch.from_numpy(self._sigma)
        delta = (left_basis * sigma) @ right_basis.T  # U diag(σ) Vᵀ, (d_out, d_in)
        self.delta_weight = delta.float()

    def update(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.delta_weight.T  # (N, d)

    def _noise_free_floor(self, r: int | None) -> float:
        if r is None:
            return 0.0
        return float(np.sum(self._sigma[r:] ** 2)) / self.config.d

    def teacher_singular_values(self) -> np.ndarray:
        return self._sigma.copy()


def _silu(u: np.ndarray) -> np.ndarray:
    return u * special.expit(u)


# family -> (torch φ, numpy φ, always centred). The quadratic family is defined as
# (cVx)² − c², which has mean zero, so it needs no separate centring.
_FAMILIES = {
    "silu_mlp": (F.silu, _silu, False),
    "relu_mlp": (torch.relu, lambda u: np.maximum(u, 0.0), False),
    "sin": (torch.sin, np.sin, False),
    "quadratic": (torch.square, np.square, True),
}


@functools.lru_cache(maxsize=128)
def gaussian_moments(family: str, gain: float) -> tuple[float, float, float]:
    """Return (E[φ(cz)], E[φ(cz)²], E[z·φ(cz)]) for z ~ N(0, 1) and c = `gain`.

    Adaptive quadrature, split at 0 where ReLU has its kink; absolute error about 1e-12.
    """
    phi = _FAMILIES[family][1]
    norm = 1.0 / math.sqrt(2.0 * math.pi)

    def expect(function) -> float:
        def weighted(z: float) -> float:
            return function(z) * norm * math.exp(-0.5 * z * z)

        left = integrate.quad(weighted, -np.inf, 0.0, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
        right = integrate.quad(weighted, 0.0, np.inf, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
        return left + right

    mean = expect(lambda z: phi(gain * z))
    second = expect(lambda z: phi(gain * z) ** 2)
    slope = expect(lambda z: z * phi(gain * z))
    return mean, second, slope


@dataclass(frozen=True)
class NonlinearTeacherConfig:
    """Settings of the non-linear teacher y = W0 x + U (φ(c V x) − μ)."""

    d: int = _d_field()
    family: TeacherFamily = field(default="silu_mlp", metadata={
        "help": "Non-linearity φ of the teacher g(x) = U φ(c V x): silu_mlp, relu_mlp, sin, "
                "or quadratic (cVx)² − c², which no linear map can fit at all.",
        "label": "teacher family"})
    hidden_width: int = field(default=16, metadata={
        "help": "Number of hidden units h of the teacher (rows of V, orthonormal); must be "
                "<= d.", "min": 1, "max": MAX_D, "label": "teacher hidden width"})
    gain: float = field(default=2.0, metadata={
        "help": "Factor c inside φ(c V x); larger is more non-linear for silu and sin, and "
                "has no effect for relu and quadratic after normalisation.",
        "min": 0.1, "max": 10.0, "label": "gain c"})
    center: bool = field(default=False, metadata={
        "help": "Subtract the mean of φ so that g has no constant offset, which a bias-free "
                "adapter could not fit.", "label": "centre g"})
    noise_std: float = _noise_field()
    n_train: int | None = _n_train_field()
    n_val: int = _n_val_field()
    n_spectrum: int = _n_spectrum_field()
    seed: int = _seed_field()

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.hidden_width > self.d:
            raise ValueError(
                f"NonlinearTeacherConfig.hidden_width must be <= d = {self.d}, got "
                f"{self.hidden_width}, because the teacher's directions V are orthonormal; "
                "lower hidden_width or raise d"
            )


class NonlinearTeacherTask(TeacherTask):
    """Fit y = W0 x + g(x) from y = W0 x; the floor is the linear ceiling of g.

    g is scaled so that E‖g(x)‖²/d = 1 exactly: the base model's expected loss is 1 plus
    the noise variance. The floors use the exact Gaussian moments of φ, so they hold for
    the population, not for one sample.
    """

    name = "nonlinear_teacher"
    config_class = NonlinearTeacherConfig
    description = (
        "A frozen linear layer learns the teacher y = W0 x + g(x), with g a small non-linear "
        "network scaled so the base model's loss is 1. No linear update of any rank goes "
        "below the linear ceiling, so LoRA stalls there; NoRA's activation lets it go lower."
    )

    def __init__(self, config: NonlinearTeacherConfig | None = None) -> None:
        super().__init__(config if config is not None else NonlinearTeacherConfig())

    def _build_teacher(self, generator: torch.Generator) -> None:
        config = self.config
        d, h = config.d, config.hidden_width
        mean, second, slope = gaussian_moments(config.family, config.gain)
        centred = config.center or _FAMILIES[config.family][2]
        offset = mean if centred else 0.0
        if config.family == "quadratic":
            offset = config.gain ** 2  # E[(cz)²] = c² exactly; quadrature would add round-off
            mean = offset

        directions = _random_orthonormal(generator, d, h).T  # V (h, d), orthonormal rows
        readout = torch.randn(d, h, generator=generator, dtype=torch.float64)  # U (d, h)

        # E‖U(φ − offset)‖² = (Var φ)·‖U‖_F² + (mean − offset)²·‖U 1‖², since the h
        # pre-activations V x are independent N(0, 1) variables.
        frobenius = float(torch.sum(readout ** 2))
        row_sums = float(torch.sum(readout.sum(dim=1) ** 2))
        energy = (second - mean ** 2) * frobenius + (mean - offset) ** 2 * row_sums
        scale = math.sqrt(d / energy)
        readout = readout * scale

        self._offset = offset
        self._directions = directions.float()  # (h, d)
        self._readout = readout.float()  # (d, h)
        # M* = E[g xᵀ] = U diag(E[z φ(cz)]) V by Stein's lemma on each unit-norm row of V.
        self._best_linear = slope * (readout @ directions)  # (d, d) float64
        self._linear_sigma = abs(slope) * torch.linalg.svdvals(readout).numpy()  # (h,)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        phi = _FAMILIES[self.config.family][0]
        hidden = phi(self.config.gain * (x @ self._directions.T)) - self._offset  # (N, h)
        return hidden @ self._readout.T  # (N, d)

    def _noise_free_floor(self, r: int | None) -> float:
        # The base loss E‖g‖²/d is 1 by construction; a rank-r map removes Σ_{i≤r} σ_i(M*)²/d.
        fitted = self._linear_sigma if r is None else self._linear_sigma[:r]
        return max(0.0, 1.0 - float(np.sum(fitted ** 2)) / self.config.d)

    def best_linear_update(self) -> np.ndarray:
        """Return M* = E[g(x) xᵀ] (d, d), the least-squares linear fit of g on x without intercept."""
        return self._best_linear.numpy().copy()

    def teacher_singular_values(self) -> np.ndarray:
        return self._linear_sigma.copy()
