"""Settings of a rank sweep: `SweepConfig` (task, ranks, seeds, optimiser) and `Variant`
(one adapter recipe, drawn as one line across the ranks).

The variants of a sweep are either listed explicitly (presets do) or formed as the
product of the per-field lists, such as methods × lora_alpha modes × NoRA activations.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from nora_core.config import (ACTIVATIONS, DEFAULT_ACTIVATION, DEFAULT_DROPOUT_POSITION, DROPOUT_POSITIONS,
                              MAX_RANK, METHODS, SCALINGS, AdapterConfig)
from nora_core.fields import check_choice, check_range
from nora_core.sweep_tasks import TASK_NAMES

MAX_STEPS = 10_000
MAX_SEEDS = 100
# Log-spaced factors around the base learning rate tried by `tune_lr` when no grid is given.
DEFAULT_LR_FACTORS = (10 ** -1.0, 10 ** -0.5, 1.0, 10 ** 0.5)


@dataclass(frozen=True)
class Variant:
    """One adapter recipe, drawn as one line across the ranks of a sweep.

    `lora_alpha=None` means lora_alpha = r (scale 1 with "alpha_over_r"). `targets` is
    "default" (the task's own choice), a language-model preset such as "attention_qv",
    or module names joined by "+", such as "q_proj+v_proj".
    """

    method: str = "lora"
    lora_alpha: float | None = None
    scaling: str = "alpha_over_r"
    activation: str | None = None
    lora_dropout: float = 0.0
    dropout_position: str | None = None
    targets: str = "default"
    name: str = ""

    def __post_init__(self) -> None:
        # Building a rank-1 config validates every adapter field with AdapterConfig's messages.
        self.adapter_config(1, None)
        if not isinstance(self.targets, str) or not self.targets.strip():
            raise ValueError(f"Variant.targets must be 'default', a preset or names joined by '+', "
                             f"got {self.targets!r}")

    def adapter_config(self, r: int, target_modules: tuple[str, ...] | None) -> AdapterConfig:
        """Return the AdapterConfig of this variant at rank `r`."""
        return AdapterConfig(method=self.method, r=r, lora_alpha=self.lora_alpha,
                             scaling=self.scaling, activation=self.activation,
                             lora_dropout=self.lora_dropout,
                             dropout_position=self.dropout_position,
                             target_modules=target_modules)

    @property
    def label(self) -> str:
        """The legend name: `name` if given, else the method and what differs from its defaults."""
        if self.name:
            return self.name
        parts = ["LoRA" if self.method == "lora" else "NoRA"]
        activation = self.activation or DEFAULT_ACTIVATION[self.method]
        if activation != DEFAULT_ACTIVATION[self.method]:
            parts.append(activation)
        if self.lora_alpha is not None:
            parts.append(f"α={self.lora_alpha:g}")
        if self.scaling == "alpha_over_sqrt_r":
            parts.append("rsLoRA")
        if self.lora_dropout:
            parts.append(f"drop={self.lora_dropout:g}")
        position = self.dropout_position or DEFAULT_DROPOUT_POSITION[self.method]
        if self.lora_dropout and position != DEFAULT_DROPOUT_POSITION[self.method]:
            parts.append(f"@{position}")
        if self.targets != "default":
            parts.append(f"[{self.targets}]")
        return " ".join(parts)


def _parse_alpha(value: Any) -> float | None:
    """Map a lora_alpha mode to Variant.lora_alpha: "r" → None, a number → that number."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "r"):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"SweepConfig.lora_alphas entries must be 'r' or a positive number, "
                         f"got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"SweepConfig.lora_alphas entries must be 'r' or a positive number, "
                         f"got {value!r}")
    return number


def _check_tuple(name: str, values: Any) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)):
        raise ValueError(f"SweepConfig.{name} must be a list, got {values!r}")
    if not values:
        raise ValueError(f"SweepConfig.{name} must not be empty")
    return tuple(values)


@dataclass(frozen=True)
class SweepConfig:
    """Settings of a rank sweep: task, ranks, seeds, adapter variants and optimiser.

    The variants are the product methods × scalings × lora_alphas × nora_activations ×
    lora_dropouts × targets, unless `variants` lists them explicitly (presets do).
    `nora_activations` applies to NoRA only; LoRA stays linear.
    """

    task: str = field(default="nonlinear_teacher", metadata={
        "help": "Task to train on: a toy task or a language-model task.", "choices": TASK_NAMES,
        "label": "task"})
    task_options: tuple[tuple[str, Any], ...] = ()
    ranks: tuple[int, ...] = field(default=(1, 2, 4, 8, 16, 32, 64), metadata={
        "help": "Ranks r to train, comma-separated.", "label": "ranks"})
    methods: tuple[str, ...] = field(default=("lora", "nora"), metadata={
        "help": "Adapter methods, comma-separated: lora, nora.", "label": "methods"})
    seeds: tuple[int, ...] | int = field(default=3, metadata={
        "help": "Training seeds: a count n (seeds 0..n-1) or a comma-separated list. A seed sets "
                "the data order, the lora_A initialisation and the dropout masks.",
        "kind": "list", "label": "seeds"})
    scalings: tuple[str, ...] = field(default=("alpha_over_r",), metadata={
        "help": "Scalings, comma-separated: alpha_over_r (LoRA), alpha_over_sqrt_r (rsLoRA).",
        "label": "scalings"})
    lora_alphas: tuple[Any, ...] = field(default=("r",), metadata={
        "help": "lora_alpha modes, comma-separated: r (lora_alpha = r) or a fixed number such "
                "as 32.", "label": "lora_alpha modes"})
    nora_activations: tuple[str, ...] = field(default=("silu",), metadata={
        "help": "Activations of the NoRA bottleneck, comma-separated: "
                + ", ".join(ACTIVATIONS) + ".", "label": "NoRA activations"})
    lora_dropouts: tuple[float, ...] = field(default=(0.0,), metadata={
        "help": "Dropout probabilities, comma-separated, at each method's default position.",
        "label": "dropouts"})
    dropout_position: str | None = field(default=None, metadata={
        "help": "Where dropout acts for every variant: input or rank; empty means the method's "
                "default (input for LoRA, rank for NoRA).", "choices": DROPOUT_POSITIONS,
        "label": "dropout position"})
    targets: tuple[str, ...] = field(default=("default",), metadata={
        "help": "Adapted layers, comma-separated: default (the task's choice), a language-model "
                "preset (attention_qv, attention_all, all_linear) or module names joined by +.",
        "label": "targets"})
    variants: tuple[Variant, ...] = ()
    steps: int = field(default=1500, metadata={
        "help": "Training steps per run.", "min": 1, "max": MAX_STEPS, "unit": "steps",
        "label": "steps"})
    lr: float = field(default=3e-3, metadata={
        "help": "AdamW learning rate; with tune_lr, the centre of the default grid.",
        "min": 1e-6, "max": 10.0, "log": True, "label": "learning rate"})
    batch_size: int = field(default=128, metadata={
        "help": "Examples per training step.", "min": 1, "max": 4096, "unit": "examples",
        "label": "batch size"})
    weight_decay: float = field(default=0.0, metadata={
        "help": "AdamW weight decay.", "min": 0.0, "max": 1.0, "label": "weight decay"})
    tune_lr: bool = field(default=False, metadata={
        "help": "Train every point at each learning rate of lr_grid and report the best.",
        "label": "tune learning rate"})
    lr_grid: tuple[float, ...] = field(default=(), metadata={
        "help": "Learning rates tried with tune_lr, comma-separated; empty means lr × "
                "(0.1, 0.316, 1, 3.16).", "label": "learning-rate grid"})
    device: str = field(default="cpu", metadata={
        "help": "Device for language-model runs: cpu, cuda, mps or auto; toy tasks train on "
                "the CPU.", "choices": ("auto", "cpu", "cuda", "mps"), "label": "device"})

    def __post_init__(self) -> None:
        owner = "SweepConfig"
        set_ = object.__setattr__
        check_choice(owner, "task", self.task, TASK_NAMES)
        options = dict(self.task_options)
        set_(self, "task_options", tuple(sorted(options.items())))

        ranks = _check_tuple("ranks", self.ranks)
        for r in ranks:
            if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= MAX_RANK:
                raise ValueError(f"SweepConfig.ranks entries must be integers in [1, {MAX_RANK}], "
                                 f"got {r!r}")
        set_(self, "ranks", tuple(sorted(set(ranks))))
        for name, allowed in (("methods", METHODS), ("scalings", SCALINGS),
                              ("nora_activations", ACTIVATIONS)):
            values = _check_tuple(name, getattr(self, name))
            for value in values:
                check_choice(owner, name, value, allowed)
            set_(self, name, tuple(dict.fromkeys(values)))
        alphas = tuple(dict.fromkeys(_parse_alpha(a) for a in _check_tuple("lora_alphas", self.lora_alphas)))
        set_(self, "lora_alphas", tuple("r" if a is None else a for a in alphas))
        dropouts = _check_tuple("lora_dropouts", self.lora_dropouts)
        for p in dropouts:
            check_range(owner, "lora_dropouts", p, 0.0, 1.0, exclusive_max=True)
        set_(self, "lora_dropouts", tuple(dict.fromkeys(float(p) for p in dropouts)))
        if self.dropout_position is not None:
            check_choice(owner, "dropout_position", self.dropout_position, DROPOUT_POSITIONS)
        targets = _check_tuple("targets", self.targets)
        if not all(isinstance(t, str) and t.strip() for t in targets):
            raise ValueError(f"SweepConfig.targets entries must be non-empty names, got {targets!r}")
        set_(self, "targets", tuple(dict.fromkeys(t.strip() for t in targets)))
        set_(self, "seeds", _normalise_seeds(self.seeds))
        if not all(isinstance(v, Variant) for v in self.variants):
            raise ValueError("SweepConfig.variants must contain Variant objects")
        set_(self, "variants", tuple(self.variants))

        check_range(owner, "steps", self.steps, 1, MAX_STEPS, integer=True)
        check_range(owner, "lr", self.lr, 1e-6, 10.0)
        check_range(owner, "batch_size", self.batch_size, 1, 4096, integer=True)
        check_range(owner, "weight_decay", self.weight_decay, 0.0, 1.0)
        if not isinstance(self.tune_lr, bool):
            raise ValueError(f"SweepConfig.tune_lr must be True or False, got {self.tune_lr!r}")
        grid = tuple(self.lr_grid)
        for value in grid:
            check_range(owner, "lr_grid", value, 1e-6, 10.0)
        set_(self, "lr_grid", tuple(sorted(set(float(v) for v in grid))))
        check_choice(owner, "device", self.device, ("auto", "cpu", "cuda", "mps"))
        labels = [variant.label for variant in self.all_variants()]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"SweepConfig.variants share the label(s) {', '.join(map(repr, repeated))}; "
                             "give each variant a distinct name")

    @property
    def task_kwargs(self) -> dict[str, Any]:
        """The task options as keyword arguments of the task's config class."""
        return dict(self.task_options)

    def all_variants(self) -> tuple[Variant, ...]:
        """Return the explicit variants, or the product of the per-field lists."""
        if self.variants:
            return self.variants
        found = []
        for method in self.methods:
            activations = self.nora_activations if method == "nora" else (None,)
            for scaling in self.scalings:
                for alpha in self.lora_alphas:
                    for activation in activations:
                        for p in self.lora_dropouts:
                            for target in self.targets:
                                found.append(Variant(
                                    method=method, lora_alpha=_parse_alpha(alpha), scaling=scaling,
                                    activation=activation, lora_dropout=p,
                                    dropout_position=self.dropout_position, targets=target))
        return tuple(dict.fromkeys(found))

    def learning_rates(self) -> tuple[float, ...]:
        """Return the learning rates every point trains with: the grid in tuned mode, else lr."""
        if not self.tune_lr:
            return (self.lr,)
        if self.lr_grid:
            return self.lr_grid
        return tuple(float(f"{self.lr * factor:.4g}") for factor in DEFAULT_LR_FACTORS)

    def run_count(self) -> int:
        """Return how many training runs the sweep performs."""
        return (len(self.all_variants()) * len(self.ranks) * len(self.seeds)
                * len(self.learning_rates()))

    def to_dict(self) -> dict[str, Any]:
        """Return the config as JSON-ready values."""
        data = dataclasses.asdict(self)
        data["task_options"] = dict(self.task_options)
        data["variants"] = [dataclasses.asdict(v) for v in self.variants]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepConfig:
        """Build a config from `to_dict` output."""
        values = dict(data)
        values["task_options"] = tuple(dict(values.get("task_options", {})).items())
        values["variants"] = tuple(Variant(**v) for v in values.get("variants", ()))
        for name in ("ranks", "methods", "scalings", "lora_alphas", "nora_activations",
                     "lora_dropouts", "targets", "lr_grid"):
            if name in values:
                values[name] = tuple(values[name])
        if isinstance(values.get("seeds"), list):
            values["seeds"] = tuple(values["seeds"])
        return cls(**values)


def _normalise_seeds(seeds: Any) -> tuple[int, ...]:
    if isinstance(seeds, bool):
        raise ValueError(f"SweepConfig.seeds must be a count or a list of seeds, got {seeds!r}")
    if isinstance(seeds, int):
        if not 1 <= seeds <= MAX_SEEDS:
            raise ValueError(f"SweepConfig.seeds as a count must be in [1, {MAX_SEEDS}], got {seeds}")
        return tuple(range(seeds))
    values = _check_tuple("seeds", seeds)
    for seed in values:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31 - 1:
            raise ValueError(f"SweepConfig.seeds entries must be integers in [0, 2147483646], "
                             f"got {seed!r}")
    if len(values) > MAX_SEEDS:
        raise ValueError(f"SweepConfig.seeds may list at most {MAX_SEEDS} seeds, got {len(values)}")
    return tuple(dict.fromkeys(values))
