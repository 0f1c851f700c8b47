"""LoRA and NoRA adapter layers, and injecting them into a model in place.

Each targeted layer W0 (an `nn.Linear`, or a Hugging Face `Conv1D`, whose weight is stored
in×out) is wrapped by an `AdapterLayer` that adds a trainable low-rank branch:

    LoRA:  y = W0 x + s · B A Drop(x)
    NoRA:  y = W0 x + s · B Drop(act(A x))

`lora_A` (r×d_in) starts Kaiming-uniform as in PEFT and `lora_B` (d_out×r) starts at zero,
so the adapted model equals the base model at step 0.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Iterator

import torch
from torch import nn

from nora_core.config import AdapterConfig

logger = logging.getLogger(__name__)

_ACTIVATIONS = {
    "identity": nn.Identity,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
}


class MergeError(ValueError):
    """Raised when an adapter cannot be folded into its base weight."""


def _conv1d_class() -> type | None:
    # A model can only contain Conv1D layers once transformers is imported, and importing
    # it takes seconds, so toy models never pay for it.
    if "transformers" not in sys.modules:
        return None
    return _import_conv1d()


@functools.cache
def _import_conv1d() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


def _is_conv1d(module: nn.Module) -> bool:
    conv1d = _conv1d_class()
    return conv1d is not None and isinstance(module, conv1d)


def is_adaptable(module: nn.Module) -> bool:
    """True for the layer types an adapter can wrap: `nn.Linear` and `Conv1D`."""
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def _layer_dims(module: nn.Module) -> tuple[int, int]:
    """Return (d_in, d_out) of a Linear or Conv1D layer."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    d_in, d_out = module.weight.shape  # Conv1D stores its weight as (d_in, d_out)
    return d_in, d_out


class AdapterDropout(nn.Module):
    """Inverted dropout that draws its mask from an optional `torch.Generator`.

    A generator per training run keeps each run's masks independent of other runs, and
    of other threads that share the global RNG (such as other app sessions).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class AdapterLayer(nn.Module):
    """A frozen base layer plus a LoRA or NoRA branch; see the module docstring."""

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, name: str = "") -> None:
        super().__init__()
        if not is_adaptable(base_layer):
            raise TypeError(f"AdapterLayer wraps nn.Linear or Conv1D, got {type(base_layer).__name__}")
        d_in, d_out = _layer_dims(base_layer)
        limit = min(d_in, d_out)
        if config.r > limit:
            raise ValueError(
                f"r={config.r} is too large for layer {name or '?'} ({d_in} -> {d_out}): "
                f"r must be <= min(d_in, d_out) = {limit}; lower r or target other layers"
            )
        self.base_layer = base_layer
        self.config = config
        self.name = name
        self.d_in, self.d_out = d_in, d_out
        self.fan_in_fan_out = _is_conv1d(base_layer)
        self.scaling = config.scale
        self.merged = False
        self.capture: list[torch.Tensor] | None = None

        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.lora_A = nn.Linear(d_in, config.r, bias=False, **factory)  # weight (r, d_in)
        self.lora_B = nn.Linear(config.r, d_out, bias=False, **factory)  # weight (d_out, r)
        self.lora_G = nn.Linear(d_in, config.r, bias=False, **factory) if config.glu_gate else None
        self.activation = _ACTIVATIONS[config.activation]()
        self.lora_dropout = AdapterDropout(config.lora_dropout)
        self.reset_adapter()

    def reset_adapter(self, generator: torch.Generator | None = None) -> None:
        """Initialise A (and G) Kaiming-uniform with a=sqrt(5), as PEFT does, and B to zero."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=5 ** 0.5, generator=generator)
        if self.lora_G is not None:
            nn.init.kaiming_uniform_(self.lora_G.weight, a=5 ** 0.5, generator=generator)
        nn.init.zeros_(self.lora_B.weight)

    def adapter_delta(self, x: torch.Tensor) -> torch.Tensor:
        """Return the branch output s · B f(A x) for input x (..., d_in) as (..., d_out)."""
        x = x.to(self.lora_A.weight.dtype)
        if self.config.dropout_position == "input":
            x = self.lora_dropout(x)
        h = self.activation(self.lora_A(x))  # (..., r)
        if self.lora_G is not None:
            # GLU variant: the activation acts on a separate gate projection G x.
            h = self.activation(self.lora_G(x)) * self.lora_A(x)  # (..., r)
        if self.config.dropout_position == "rank":
            h = self.lora_dropout(h)
        return self.lora_B(h) * self.scaling  # (..., d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # (..., d_out)
        if self.merged:
            return result
        delta = self.adapter_delta(x)
        if self.capture is not None:
            self.capture.append(delta.detach().reshape(-1, self.d_out))
        return result + delta.to(result.dtype)

    def delta_weight(self) -> torch.Tensor:
        """Return ΔW = s · B A as (d_out, d_in); only meaningful for a linear adapter."""
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)  # (d_out, d_in)

    def merge(self) -> None:
        """Fold s · B A into the base weight, so inference costs no extra matmul."""
        if self.merged:
            return
        if not self.config.is_linear:
            what = "the GLU gate" if self.config.glu_gate else f"activation {self.config.activation!r}"
            raise MergeError(
                f"cannot merge the adapter of layer {self.name or '?'}: {what} sits between "
                "lora_A and lora_B, so the update is not a linear map of the input and no "
                "weight matrix equals it; keep the adapter unmerged for inference"
            )
        with torch.no_grad():
            delta = self.delta_weight().to(self.base_layer.weight.dtype)
            self.base_layer.weight += delta.T if self.fan_in_fan_out else delta
        self.merged = True

    def unmerge(self) -> None:
        """Subtract a merged update from the base weight again."""
        if not self.merged:
            return
        with torch.no_grad():
            delta = self.delta_weight().to(self.base_layer.weight.dtype)
            self.base_layer.weight -= delta.T if self.fan_in_fan_out else delta
        self.merged = False

    def extra_repr(self) -> str:
        c = self.config
        return (f"method={c.method}, r={c.r}, scaling={self.scaling:g}, activation={c.activation}, "
                f"dropout={c.lora_dropout}@{c.dropout_position}, fan_in_fan_out={self.fan_in_fan_out}")


def adaptable_module_names(model: nn.Module) -> list[str]:
    """List the names of every Linear or Conv1D layer in `model`."""
    return [name for name, module in model.named_modules() if name and is_adaptable(module)]


def _matches(name: str, targets: tuple[str, ...] | str | None) -> bool:
    if targets is None:
        return name.split(".")[-1] != "lm_head"
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def inject_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Wrap every targeted layer of `model` in an `AdapterLayer`, in place, and freeze the rest.

    Adapter weights are named `<layer>.lora_A.weight` (r×d_in) and `<layer>.lora_B.weight`
    (d_out×r); the wrapped layer's own weight moves to `<layer>.base_layer.weight`.

    Args:
        model: any module containing `nn.Linear` or `Conv1D` layers.
        config: the adapter settings; `config.target_modules` selects layers.

    Returns:
        The same model object. Its output is unchanged until `lora_B` moves away from zero.

    Raises:
        ValueError: when no layer matches, listing the names that could be targeted, or
            when `r` exceeds a matched layer's `min(d_in, d_out)`.
    """
    if any(isinstance(m, AdapterLayer) for m in model.modules()):
        raise ValueError("model already contains adapters; inject into a fresh copy of the base model")
    candidates = adaptable_module_names(model)
    names = [n for n in candidates if _matches(n, config.target_modules)]
    if not names:
        shown = ", ".join(candidates[:40]) + (" ..." if len(candidates) > 40 else "")
        raise ValueError(
            f"target_modules {config.target_modules!r} matched no Linear or Conv1D layer; "
            f"layers that can be targeted: {shown or 'none'}"
        )
    for param in model.parameters():
        param.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, AdapterLayer(getattr(parent, child), config, name=name))
    logger.debug("injected %s adapters into %d layers", config.method, len(names))
    return model


def adapter_layers(model: nn.Module) -> Iterator[AdapterLayer]:
    """Yield every `AdapterLayer` of `model` in module order."""
    for module in model.modules():
        if isinstance(module, AdapterLayer):
            yield module


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Return the trainable adapter parameters (lora_A, lora_B and lora_G weights)."""
    params = []
    for layer in adapter_layers(model):
        for name, param in layer.named_parameters():
            if name.startswith("lora_"):
                params.append(param)
    return params


def count_trainable(model: nn.Module) -> int:
    """Count the scalars in the adapter parameters."""
    return sum(p.numel() for p in adapter_parameters(model))


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every linear adapter into its base weight; raise `MergeError` for NoRA.

    The check runs on every layer before any weight changes, so a refused merge leaves
    the model as it was.
    """
    layers = list(adapter_layers(model))
    for layer in layers:
        if not layer.config.is_linear:
            layer.merge()  # raises MergeError with the reason
    for layer in layers:
        layer.merge()
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    """Undo `merge_adapters`."""
    for layer in adapter_layers(model):
        layer.unmerge()
    return model


def reset_adapters(model: nn.Module, seed: int) -> None:
    """Re-initialise every adapter from `seed`, independent of the global RNG and the device.

    Two models with the same targeted layers and ranks get identical `lora_A` weights.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter_layers(model):
            for factor in (layer.lora_A, layer.lora_G):
                if factor is None:
                    continue
                fresh = torch.empty(factor.weight.shape)  # drawn on the CPU, then copied
                nn.init.kaiming_uniform_(fresh, a=5 ** 0.5, generator=generator)
                factor.weight.copy_(fresh)
            layer.lora_B.weight.zero_()


def set_dropout_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    """Make every adapter dropout in `model` draw its masks from `generator`."""
    for layer in adapter_layers(model):
        layer.lora_dropout.generator = generator
