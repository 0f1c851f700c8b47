"""A batched adapter layer: one frozen `nn.Linear` with the LoRA or NoRA branches of many
training runs side by side, for training all ranks of a rank sweep at once.

Each run k computes the same function as an `AdapterLayer` with its config,

    LoRA:  y = W0 x + s · B A Drop(x)        NoRA:  y = W0 x + s · B Drop(act(A x)),

with its own factors, scale, activation and dropout masks. The products are grouped
differently, so results agree with `AdapterLayer` up to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nora_core.config import AdapterConfig

# Same functions as the activation modules of `AdapterLayer` (nn.GELU defaults to the exact erf form).
_ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda z: z,
    "silu": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
    "tanh": torch.tanh,
}


class BatchedAdapterLayer(nn.Module):
    """A frozen `nn.Linear` plus the LoRA or NoRA branches of K runs side by side.

    The factors of all runs are concatenated along the rank axis: run k owns rows
    offset_k … offset_k + r_k of `lora_A` (R, d_in) and the same columns of `lora_B`
    (d_out, R), with R = Σ r_k, so nothing is padded. Consecutive runs of equal rank
    form a bucket, whose factors are viewed as stacks (K_b, r, ·) for batched products.
    Ordering the runs by rank gives one bucket per distinct rank.

    An input (N, d_in) is shared by all runs, and an input (K, N, d_in) contains one
    slice per run. The output is always (K, N, d_out).
    """

    def __init__(self, base_layer: nn.Linear, configs: list[AdapterConfig], name: str) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.name = name
        self.configs = configs
        self.ranks = [config.r for config in configs]
        self.offsets = [sum(self.ranks[:k]) for k in range(len(configs))]
        total = sum(self.ranks)
        self.d_in, self.d_out = base_layer.in_features, base_layer.out_features
        dtype = base_layer.weight.dtype
        self.lora_A = nn.Parameter(torch.zeros(total, self.d_in, dtype=dtype))  # (R, d_in)
        self.lora_B = nn.Parameter(torch.zeros(self.d_out, total, dtype=dtype))  # (d_out, R)
        scaling = torch.tensor([config.scale for config in configs], dtype=dtype)
        self.register_buffer("scaling", scaling.view(-1, 1, 1), persistent=False)  # (K, 1, 1)

        # Buckets: (first run, end run, rank, first column) of consecutive runs of equal rank.
        self.buckets: list[tuple[int, int, int, int]] = []
        start = 0
        while start < len(configs):
            stop = start
            while stop < len(configs) and self.ranks[stop] == self.ranks[start]:
                stop += 1
            self.buckets.append((start, stop, self.ranks[start], self.offsets[start]))
            start = stop
        self.activations = [config.activation for config in configs]
        self.input_dropout = [k for k, c in enumerate(configs)
                              if c.lora_dropout > 0 and c.dropout_position == "input"]
        self.rank_dropout = [k for k, c in enumerate(configs)
                             if c.lora_dropout > 0 and c.dropout_position == "rank"]
        self.generators: list[torch.Generator | None] = [None] * len(configs)
        self.capture: list[torch.Tensor] | None = None

    def reset_run(self, k: int, generator: torch.Generator) -> None:
        """Initialise run k as `reset_adapters` does: Kaiming-uniform (a=√5) lora_A, zero lora_B."""
        r, offset = self.ranks[k], self.offsets[k]
        fresh = torch.empty(r, self.d_in)  # (r, d_in), drawn on the CPU like reset_adapters
        nn.init.kaiming_uniform_(fresh, a=5 ** 0.5, generator=generator)
        with torch.no_grad():
            self.lora_A[offset:offset + r].copy_(fresh)
            self.lora_B[:, offset:offset + r].zero_()

    def _drop_input(self, x: torch.Tensor) -> torch.Tensor:
        """Return per-run inputs (K, N, d_in) with each input-dropout run's mask applied."""
        runs = len(self.ranks)
        slices = list((x.unsqueeze(0).expand(runs, -1, -1) if x.dim() == 2 else x).unbind(0))
        for k in self.input_dropout:
            p = self.configs[k].lora_dropout
            keep = torch.rand(slices[k].shape, generator=self.generators[k], device=x.device) >= p
            # (x · keep) / (1 − p) in this order, as AdapterDropout computes it.
            slices[k] = slices[k] * keep.to(x.dtype) / (1.0 - p)
        return torch.stack(slices)

    def _activate(self, z: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Apply each run's activation to its slice of z (K_b, N, r)."""
        names = self.activations[start:stop]
        if len(set(names)) == 1:
            return _ACTIVATION_FUNCTIONS[names[0]](z)
        h = z
        for name in sorted(set(names) - {"identity"}):
            selected = torch.tensor([n == name for n in names]).view(-1, 1, 1)  # (K_b, 1, 1)
            h = torch.where(selected, _ACTIVATION_FUNCTIONS[name](z), h)
        return h

    def _drop_rank(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Apply each rank-dropout run's mask to its slice of h (K_b, N, r)."""
        chosen = [k for k in self.rank_dropout if start <= k < stop]
        if not chosen:
            return h
        keep = torch.ones_like(h)  # (K_b, N, r)
        denominator = torch.ones(h.shape[0], 1, 1, dtype=h.dtype)  # (K_b, 1, 1)
        for k in chosen:
            p = self.configs[k].lora_dropout
            draw = torch.rand(h.shape[1:], generator=self.generators[k], device=h.device)
            keep[k - start] = (draw >= p).to(h.dtype)
            denominator[k - start] = 1.0 - p
        # (h · keep) / (1 − p) in this order, as AdapterDropout computes it.
        return h * keep / denominator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)  # (N, d_out) or (K, N, d_out)
        if self.training and self.input_dropout:
            x = self._drop_input(x)  # (K, N, d_in)
        shared = x.dim() == 2
        if shared:
            # A shared input meets every run's lora_A in one matrix product.
            z_all = x @ self.lora_A.T  # (N, R)

        outputs = []
        for start, stop, r, column in self.buckets:
            runs, width = stop - start, (stop - start) * r
            if shared:
                z = z_all[:, column:column + width].view(-1, runs, r).transpose(0, 1)  # (K_b, N, r)
            else:
                a = self.lora_A[column:column + width].view(runs, r, self.d_in)  # (K_b, r, d_in)
                z = torch.bmm(x[start:stop], a.transpose(1, 2))  # (K_b, N, r)
            h = self._activate(z, start, stop)
            if self.training:
                h = self._drop_rank(h, start, stop)
            b = self.lora_B[:, column:column + width].view(self.d_out, runs, r)  # (d_out, K_b, r)
            # The scale s multiplies the small factor instead of the (K_b, N, d_out) output.
            b = (b * self.scaling[start:stop].view(1, runs, 1)).permute(1, 2, 0)  # (K_b, r, d_out)
            if self.capture is not None:
                self.capture.append(torch.bmm(h, b).detach())  # Δy (K_b, N, d_out)
            base = result if shared else result[start:stop]
            outputs.append(torch.baddbmm(base, h, b))  # W0 x + Δy, (K_b, N, d_out)
        return torch.cat(outputs)  # (K, N, d_out)

    def trainable_params(self, k: int) -> int:
        """Count the scalars run k's adapter would have on its own: r_k (d_in + d_out)."""
        return self.ranks[k] * (self.d_in + self.d_out)
