"""Pieces shared by the toy tasks: config validation from field metadata, named random
streams, and argument checks for the task methods.

Each toy config declares its ranges once, in `metadata={"help", "min", "max", ...}`.
`validate_fields` enforces exactly those declarations, so the widgets, the CLI flags and
the checks cannot drift apart.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from nora_core.fields import check_choice, check_range, field_specs

SEED_MAX = 2**31 - 1


def validate_fields(config: object) -> None:
    """Check every declared field of a frozen config against its type, choices and range.

    Integers given for float fields are stored as floats, so equal configs compare equal.

    Raises:
        ValueError: naming the config class, the field, the allowed range and the value.
    """
    owner = type(config).__name__
    for spec in field_specs(type(config)):
        value = getattr(config, spec.name)
        if value is None and spec.optional:
            continue
        if spec.kind == "choice":
            check_choice(owner, spec.name, value, spec.choices)
        elif spec.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{owner}.{spec.name} must be True or False, got {value!r}")
        elif spec.kind == "int":
            check_range(owner, spec.name, value, spec.minimum, spec.maximum, integer=True)
        elif spec.kind == "float":
            check_range(owner, spec.name, value, spec.minimum, spec.maximum)
            object.__setattr__(config, spec.name, float(value))


def stream_generator(seed: int, stream: str) -> torch.Generator:
    """Return a CPU generator for one named random stream of a task seed.

    Streams of one seed are independent of each other and of `torch.Generator().manual_seed(seed)`,
    so a trainer seeded with the task's seed never draws the validation inputs again.
    """
    entropy = [seed, zlib.crc32(stream.encode("utf-8"))]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def check_batch_size(batch_size: int) -> None:
    """Raise ValueError unless `batch_size` is a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def check_rank(r: int | None) -> None:
    """Raise ValueError unless `r` is None or a non-negative integer."""
    if r is None:
        return
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"r must be None or a non-negative integer, got {r!r}")
