"""Two-dimensional classification tasks (moons, circles, spirals) for drawing decision
boundaries.

The base model is a small tanh MLP, 2 → width → width → n_classes, with layers named
`fc_in`, `hidden` and `head`. Adapters target the hidden width×width layer by default,
and `head` may be added. The base is either left at a random initialisation or
pre-trained on a half-plane split of the same inputs. Either way it starts out poor on
the target labels. There is no theory floor.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nora_core.tasks.base import Batch
from nora_core.tasks.toy_common import (SEED_MAX, check_batch_size, check_rank, stream_generator,
                                        validate_fields)

logger = logging.getLogger(__name__)

Dataset2D = Literal["moons", "circles", "spirals"]
BaseInit = Literal["random", "half_plane"]

# Full-batch Adam steps and learning rate of the half-plane pre-training.
PRETRAIN_STEPS = 200
PRETRAIN_LR = 1e-2


@dataclass(frozen=True)
class Classification2DConfig:
    """Settings of the 2-D classification task."""

    dataset: Dataset2D = field(default="moons", metadata={
        "help": "Point cloud to classify: two interleaved moons, two concentric circles, "
                "or n_classes interleaved spiral arms.", "label": "dataset"})
    n_classes: int = field(default=2, metadata={
        "help": "Number of classes; moons and circles have 2, spirals 2 to 6.",
        "min": 2, "max": 6, "label": "classes"})
    noise: float = field(default=0.1, metadata={
        "help": "Standard deviation of Gaussian jitter added to every point.",
        "min": 0.0, "max": 1.0, "unit": "input units", "label": "point noise"})
    spiral_turns: float = field(default=1.25, metadata={
        "help": "Turns of each spiral arm; more turns make the spirals harder to separate.",
        "min": 0.25, "max": 3.0, "unit": "turns", "label": "spiral turns"})
    width: int = field(default=64, metadata={
        "help": "Width of the base MLP's hidden layers (the adapted hidden layer is "
                "width×width).", "min": 4, "max": 512, "label": "MLP width"})
    base_init: BaseInit = field(default="random", metadata={
        "help": "Base weights: a random initialisation, or pre-trained on a half-plane split "
                "of the same inputs (the usual fine-tuning story, about 0.5 s to build).",
        "label": "base model"})
    n_train: int = field(default=1024, metadata={
        "help": "Size of the fixed training set that batches are drawn from.",
        "min": 16, "max": 100_000, "unit": "points", "label": "training points"})
    n_val: int = field(default=1024, metadata={
        "help": "Size of the held-out validation set.", "min": 16, "max": 100_000,
        "unit": "points", "label": "validation points"})
    n_spectrum: int = field(default=512, metadata={
        "help": "Held-out points on which the output-view spectra are measured.",
        "min": 16, "max": 8192, "unit": "points", "label": "spectrum points"})
    seed: int = field(default=0, metadata={
        "help": "Seed of the points and the base weights.", "min": 0, "max": SEED_MAX,
        "label": "task seed"})

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.dataset != "spirals" and self.n_classes != 2:
            raise ValueError(
                f"Classification2DConfig.n_classes must be 2 for {self.dataset}, got "
                f"{self.n_classes}; set n_classes=2 or choose dataset='spirals'"
            )


def make_points(config: Classification2DConfig, n: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `n` labelled points of `config.dataset`, classes balanced to within one point.

    Returns:
        x (n, 2) float32 inputs, roughly within [-2, 2]², and y (n,) int64 labels.
    """
    k = config.n_classes
    labels = torch.arange(n) % k
    labels = labels[torch.randperm(n, generator=generator)]  # (n,)
    t = torch.rand(n, generator=generator, dtype=torch.float64)  # (n,) position along the shape
    label = labels.double()

    if config.dataset == "moons":
        angle = math.pi * t
        upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # (n, 2)
        lower = torch.stack([1.0 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
        points = torch.where(labels[:, None] == 0, upper, lower)
        points = 1.5 * (points - torch.tensor([0.5, 0.25], dtype=torch.float64))
    elif config.dataset == "circles":
        angle = 2 * math.pi * t
        radius = torch.where(labels == 0, 1.8, 0.9).double()
        points = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    else:
        # Arm j is the curve radius = 2t, angle = 2π (turns·t + j/k) for t in [0.05, 1].
        t = 0.05 + 0.95 * t
        angle = 2 * math.pi * (config.spiral_turns * t + label / k)
        points = 2.0 * t[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)

    jitter = config.noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (points + jitter).float(), labels


class MLPClassifier(nn.Module):
    """Base model: a tanh MLP 2 → width → width → n_classes with layers fc_in, hidden, head."""

    def __init__(self, width: int, n_classes: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(2, width)
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc_in(x))  # (N, width)
        h = torch.tanh(self.hidden(h))  # (N, width)
        return self.head(h)  # (N, n_classes) logits


def _init_base(model: MLPClassifier, generator: torch.Generator) -> None:
    """Initialise the base so that the first layer's tanh units cut the input square at
    varied angles and offsets, and the other layers keep unit-scale activations."""
    width = model.hidden.in_features
    with torch.no_grad():
        model.fc_in.weight.copy_(1.5 * torch.randn(model.fc_in.weight.shape, generator=generator))
        model.fc_in.bias.copy_(4.0 * torch.rand(width, generator=generator) - 2.0)
        for layer in (model.hidden, model.head):
            fan_in = layer.in_features
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / math.sqrt(fan_in))
            layer.bias.zero_()


def _half_plane_labels(x: torch.Tensor, n_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Label points by angular sector around the origin, rotated at random; two classes
    give a half-plane split."""
    rotation = 2 * math.pi * float(torch.rand(1, generator=generator))
    angle = torch.remainder(torch.atan2(x[:, 1], x[:, 0]) + rotation, 2 * math.pi)  # (N,)
    return torch.clamp((angle / (2 * math.pi) * n_classes).long(), max=n_classes - 1)


def _pretrain(model: MLPClassifier, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=PRETRAIN_LR)
    for _ in range(PRETRAIN_STEPS):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


class Classification2DTask:
    """Classify 2-D points with a frozen MLP whose hidden layer the adapters change."""

    kind = "toy"
    name = "classification_2d"
    config_class = Classification2DConfig
    description = (
        "Classify 2-D points (moons, circles or spirals) with a frozen tanh MLP "
        "2 → 64 → 64 → classes that starts out poor on these labels. Adapters act on its "
        "hidden 64×64 layer, named hidden; the output layer, head, can be added."
    )
    target_modules: tuple[str, ...] = ("hidden",)

    def __init__(self, config: Classification2DConfig | None = None) -> None:
        self.config = config if config is not None else Classification2DConfig()
        config = self.config
        self._train = self._draw("train", config.n_train)
        self._validation = self._draw("validation", config.n_val)
        self._spectrum = self._draw("spectrum", config.n_spectrum)

        model_generator = stream_generator(config.seed, "base")
        base = MLPClassifier(config.width, config.n_classes)
        _init_base(base, model_generator)
        if config.base_init == "half_plane":
            labels = _half_plane_labels(self._train["x"], config.n_classes, model_generator)
            _pretrain(base, self._train["x"], labels)
        base.requires_grad_(False)
        self._base = base
        logger.debug("built %s with %s", self.name, config)

    def _draw(self, stream: str, n: int) -> Batch:
        x, y = make_points(self.config, n, stream_generator(self.config.seed, stream))
        return {"x": x, "y": y}

    def base_model(self) -> nn.Module:
        """Return a fresh copy of the frozen base MLP, in train mode."""
        model = copy.deepcopy(self._base)
        model.train()
        return model

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> Batch:
        """Draw `batch_size` rows of the fixed training set, with replacement."""
        check_batch_size(batch_size)
        index = torch.randint(self.config.n_train, (batch_size,), generator=generator)
        return {"x": self._train["x"][index], "y": self._train["y"][index]}

    def validation_batches(self) -> list[Batch]:
        """Return the held-out validation points as one batch."""
        return [self._validation]

    def spectrum_batch(self) -> Batch:
        """Return held-out points (with labels) for the output-view spectra."""
        return self._spectrum

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Return the mean cross-entropy of the logits against the labels."""
        return F.cross_entropy(model(batch["x"]).float(), batch["y"])

    def floor(self, r: int | None) -> float | None:
        """Return None: no closed-form floor is known for this task."""
        check_rank(r)
        return None

    def accuracy(self, model: nn.Module, batch: Batch) -> float:
        """Return the fraction of `batch` that `model` classifies correctly, in eval mode."""
        device = next(model.parameters()).device
        with _eval_mode(model), torch.no_grad():
            predicted = model(batch["x"].to(device)).argmax(dim=1)  # (N,)
        return float((predicted.cpu() == batch["y"].cpu()).float().mean())

    def decision_grid(self, model: nn.Module,
                      resolution: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Evaluate class probabilities on a square grid covering the points.

        Args:
            model: the base model or an adapted copy of it.
            resolution: grid points per axis, 2 to 1000.

        Returns:
            xx and yy, the (resolution,) grid coordinates along each axis, and probs, a
            (resolution, resolution, n_classes) array with probs[i, j] at (xx[j], yy[i]).
        """
        if isinstance(resolution, bool) or not isinstance(resolution, int) or not 2 <= resolution <= 1000:
            raise ValueError(f"resolution must be an integer in [2, 1000], got {resolution!r}")
        low, high = self.plot_bounds()
        xx = np.linspace(low[0], high[0], resolution)
        yy = np.linspace(low[1], high[1], resolution)
        grid_x, grid_y = np.meshgrid(xx, yy)  # each (resolution, resolution)
        points = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)  # (resolution², 2)
        device = next(model.parameters()).device
        inputs = torch.from_numpy(points).float().to(device)
        with _eval_mode(model), torch.no_grad():
            probs = torch.softmax(model(inputs).float(), dim=1).cpu().numpy()
        return xx, yy, probs.reshape(resolution, resolution, -1)

    def plot_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the lower and upper corners (2,) of a box around all points, with margin."""
        points = torch.cat([self._train["x"], self._validation["x"]]).numpy()
        margin = 0.25
        return points.min(axis=0) - margin, points.max(axis=0) + margin

    def train_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the training points (n_train, 2) and labels (n_train,) as arrays."""
        return self._train["x"].numpy().copy(), self._train["y"].numpy().copy()

    def validation_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the validation points (n_val, 2) and labels (n_val,) as arrays."""
        return self._validation["x"].numpy().copy(), self._validation["y"].numpy().copy()


class _eval_mode:
    """Put a model in eval mode for a block and restore its previous mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc_info) -> None:
        self.model.train(self.was_training)
