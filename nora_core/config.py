"""Adapter configuration shared by LoRA and NoRA.

LoRA (Hu et al., 2021):  y = W0 x + s · B A Drop(x)
NoRA:                    y = W0 x + s · B Drop(act(A x))

`A` is r×d_in and `B` is d_out×r. NoRA applies the activation to the r-dimensional
bottleneck and its dropout after that activation. With the identity activation, no
dropout and the same scale, NoRA computes exactly what LoRA computes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from nora_core.fields import check_choice, check_range

Method = Literal["lora", "nora"]
Scaling = Literal["alpha_over_r", "alpha_over_sqrt_r"]
Activation = Literal["identity", "silu", "gelu", "relu", "tanh"]
DropoutPosition = Literal["input", "rank"]

METHODS: tuple[str, ...] = ("lora", "nora")
SCALINGS: tuple[str, ...] = ("alpha_over_r", "alpha_over_sqrt_r")
ACTIVATIONS: tuple[str, ...] = ("identity", "silu", "gelu", "relu", "tanh")
DROPOUT_POSITIONS: tuple[str, ...] = ("input", "rank")

# Largest rank the tool accepts; a layer's own width may limit r further at injection.
MAX_RANK = 4096

DEFAULT_ACTIVATION = {"lora": "identity", "nora": "silu"}
DEFAULT_DROPOUT_POSITION = {"lora": "input", "nora": "rank"}


@dataclass(frozen=True)
class AdapterConfig:
    """Settings of one LoRA or NoRA adapter, applied to every targeted layer.

    `lora_alpha=None` means `lora_alpha = r`, so the scale is 1 with "alpha_over_r".
    `activation=None` and `dropout_position=None` take the method's default:
    identity and "input" for LoRA, SiLU and "rank" for NoRA.
    `target_modules=None` targets every linear layer except an `lm_head`. A tuple matches
    module names equal to an entry or ending in "." + entry. A string is a regular
    expression that must match the whole module name.
    """

    method: Method = field(default="lora", metadata={
        "help": "Adapter family: LoRA (linear low-rank update) or NoRA (activation on the "
                "r-dim bottleneck).", "label": "method"})
    r: int = field(default=8, metadata={
        "help": "Rank: width of the bottleneck between lora_A and lora_B.",
        "min": 1, "max": MAX_RANK, "log": True, "label": "rank r",
        # torchrun reads a bare `--r` as an abbreviation of its own options; `--rank` is safe.
        "aliases": ("rank",)})
    lora_alpha: float | None = field(default=None, metadata={
        "help": "Scale numerator; empty means lora_alpha = r.", "min": 0.0,
        "label": "lora_alpha"})
    scaling: Scaling = field(default="alpha_over_r", metadata={
        "help": "How the update is scaled: lora_alpha / r (LoRA) or lora_alpha / sqrt(r) "
                "(rsLoRA).", "label": "scaling"})
    activation: Activation | None = field(default=None, metadata={
        "help": "Activation on the r-dim bottleneck; empty means the method's default "
                "(identity for LoRA, silu for NoRA).", "label": "activation"})
    lora_dropout: float = field(default=0.0, metadata={
        "help": "Dropout probability during training.", "min": 0.0, "max": 0.95,
        "label": "dropout"})
    dropout_position: DropoutPosition | None = field(default=None, metadata={
        "help": "Where dropout acts: on the layer input (LoRA) or on the r-dim activation "
                "(NoRA); empty means the method's default.", "label": "dropout position"})
    target_modules: tuple[str, ...] | str | None = field(default=None, metadata={
        "help": "Module names to adapt (comma-separated suffixes) or a regular expression; "
                "empty means every linear layer except lm_head.", "label": "target modules"})
    glu_gate: bool = field(default=False, metadata={
        "help": "Variant: a GLU-style gate with its own projection, B (act(G x) * A x).",
        "label": "GLU gate (variant)"})

    def __post_init__(self) -> None:
        owner = "AdapterConfig"
        check_choice(owner, "method", self.method, METHODS)
        check_range(owner, "r", self.r, 1, MAX_RANK, integer=True)
        if self.lora_alpha is None:
            object.__setattr__(self, "lora_alpha", float(self.r))
        check_range(owner, "lora_alpha", self.lora_alpha, 0.0)
        object.__setattr__(self, "lora_alpha", float(self.lora_alpha))
        check_choice(owner, "scaling", self.scaling, SCALINGS)
        if self.activation is None:
            object.__setattr__(self, "activation", DEFAULT_ACTIVATION[self.method])
        check_choice(owner, "activation", self.activation, ACTIVATIONS)
        check_range(owner, "lora_dropout", self.lora_dropout, 0.0, 1.0, exclusive_max=True)
        if self.dropout_position is None:
            object.__setattr__(self, "dropout_position", DEFAULT_DROPOUT_POSITION[self.method])
        check_choice(owner, "dropout_position", self.dropout_position, DROPOUT_POSITIONS)
        object.__setattr__(self, "target_modules", _normalise_targets(self.target_modules))
        if not isinstance(self.glu_gate, bool):
            raise ValueError(f"AdapterConfig.glu_gate must be True or False, got {self.glu_gate!r}")

    @property
    def scale(self) -> float:
        """The factor s that multiplies B f(A x)."""
        if self.scaling == "alpha_over_r":
            return self.lora_alpha / self.r
        return self.lora_alpha / math.sqrt(self.r)

    @property
    def is_linear(self) -> bool:
        """True when the adapter is a linear map of its input, so it can be merged."""
        return self.activation == "identity" and not self.glu_gate

    def label(self) -> str:
        """Return a short name for legends, e.g. "NoRA r=4 silu"."""
        name = "LoRA" if self.method == "lora" else "NoRA"
        text = f"{name} r={self.r}"
        if self.activation != DEFAULT_ACTIVATION[self.method]:
            text += f" {self.activation}"
        if self.lora_dropout:
            text += f" drop={self.lora_dropout:g}@{self.dropout_position}"
        if self.lora_alpha != self.r:
            text += f" α={self.lora_alpha:g}"
        return text


def _normalise_targets(targets):
    if targets is None:
        return None
    if isinstance(targets, str):
        text = targets.strip()
        if not text:
            return None
        if "," in text or re.fullmatch(r"[\w.]+", text):
            # A plain name or a comma list is a list of suffixes, not a pattern.
            names = tuple(t.strip() for t in text.split(",") if t.strip())
            return names or None
        try:
            re.compile(text)
        except re.error as error:
            raise ValueError(
                f"AdapterConfig.target_modules {text!r} is not a valid regular expression "
                f"({error}); give module names separated by commas or a valid pattern"
            ) from None
        return text
    names = tuple(targets)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(
            "AdapterConfig.target_modules must be None, a regular expression or a non-empty "
            f"list of module names, got {targets!r}"
        )
    return tuple(n.strip() for n in names)
