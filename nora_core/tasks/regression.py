"""The shared frame of the teacher regression tasks: a frozen linear base y = W0 x and a
teacher y = W0 x + (update)(x) with inputs x ~ N(0, I), scored by mean squared error.

A subclass supplies the teacher's update and the theory floor without noise. This class
draws the data: the validation, spectrum and optional fixed training sets come from named
streams of the task seed, fresh training batches from the caller's generator.
"""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nora_core.tasks.base import Batch
from nora_core.tasks.toy_common import check_batch_size, check_rank, stream_generator

logger = logging.getLogger(__name__)


class LinearBaseModel(nn.Module):
    """The frozen base model of the teacher tasks: one bias-free `nn.Linear` named `layer`."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        d_out, d_in = weight.shape
        self.layer = nn.Linear(d_in, d_out, bias=False)
        with torch.no_grad():
            self.layer.weight.copy_(weight)  # (d_out, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)  # (N, d_out)


class TeacherTask:
    """Base class of `LinearTeacherTask` and `NonlinearTeacherTask`.

    The config must provide `d`, `seed`, `noise_std`, `n_train`, `n_val` and `n_spectrum`.
    The adapter target is the base model's only layer, `layer`.
    """

    kind = "toy"
    name = ""
    description = ""
    target_modules: tuple[str, ...] = ("layer",)

    def __init__(self, config) -> None:
        self.config = config
        d = config.d
        teacher_generator = stream_generator(config.seed, "teacher")

        # W0 ~ N(0, 1/d) keeps the base output at unit scale, and no floor depends on W0.
        weight = torch.randn(d, d, generator=teacher_generator, dtype=torch.float64) / math.sqrt(d)
        self._base = LinearBaseModel(weight.float())
        self._base.requires_grad_(False)
        self._build_teacher(teacher_generator)

        self._validation = self._draw(stream_generator(config.seed, "validation"), config.n_val)
        self._spectrum = self._draw(stream_generator(config.seed, "spectrum"), config.n_spectrum)
        self._train: Batch | None = None
        if config.n_train is not None:
            self._train = self._draw(stream_generator(config.seed, "train"), config.n_train)
        logger.debug("built %s with %s", self.name, config)

    def _build_teacher(self, generator: torch.Generator) -> None:
        raise NotImplementedError

    def update(self, x: torch.Tensor) -> torch.Tensor:
        """Return the teacher's part on top of the base, y - W0 x without noise, for x (N, d)."""
        raise NotImplementedError

    def _noise_free_floor(self, r: int | None) -> float:
        raise NotImplementedError

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Return the noise-free teacher output W0 x + update(x) for inputs x (N, d)."""
        with torch.no_grad():
            return self._base(x) + self.update(x)  # (N, d)

    def _draw(self, generator: torch.Generator, n: int) -> Batch:
        x = torch.randn(n, self.config.d, generator=generator)  # (n, d)
        y = self.target(x)  # (n, d)
        if self.config.noise_std > 0:
            y = y + self.config.noise_std * torch.randn(y.shape, generator=generator)
        return {"x": x, "y": y}

    def base_model(self) -> nn.Module:
        """Return a fresh copy of the frozen base model y = W0 x, in train mode."""
        model = copy.deepcopy(self._base)
        model.train()
        return model

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> Batch:
        """Draw a batch: fresh inputs from `generator`, or rows of the fixed training set."""
        check_batch_size(batch_size)
        if self._train is None:
            return self._draw(generator, batch_size)
        index = torch.randint(self.config.n_train, (batch_size,), generator=generator)
        return {"x": self._train["x"][index], "y": self._train["y"][index]}

    def validation_batches(self) -> list[Batch]:
        """Return the held-out validation set as one batch of `n_val` rows."""
        return [self._validation]

    def spectrum_batch(self) -> Batch:
        """Return `n_spectrum` held-out inputs (with targets) for the output-view spectra."""
        return self._spectrum

    def training_set(self) -> Batch | None:
        """Return the fixed training set, or None when every batch is freshly drawn."""
        return self._train

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Return the mean squared error, averaged over the batch and the outputs."""
        prediction = model(batch["x"])  # (N, d)
        return F.mse_loss(prediction.float(), batch["y"])

    def floor(self, r: int | None) -> float | None:
        """Return the lowest expected loss that a rank-`r` linear update can reach.

        `r=None` returns the floor over linear updates of any rank. Both include the
        label-noise variance. The values are population expectations over x ~ N(0, I),
        so a finite validation set scatters around them by its sampling error.
        """
        check_rank(r)
        return self._noise_free_floor(r) + self.config.noise_std ** 2

    def teacher_singular_values(self) -> np.ndarray:
        """Return the singular values of the teacher's best linear update, largest first."""
        raise NotImplementedError
