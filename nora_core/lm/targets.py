"""Selection of the linear layers of a causal LM that receive adapters: presets and free lists.

A target is a module-name suffix matched at a dot boundary, the rule PEFT applies to a
list of `target_modules`: "q_proj" matches "model.layers.0.self_attn.q_proj", and
"attn.c_proj" matches GPT-2's attention output but not its MLP's "mlp.c_proj".
Targetable modules are `nn.Linear` and GPT-2's `Conv1D`, except the output head.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from transformers.pytorch_utils import Conv1D

TARGET_PRESETS: dict[str, str] = {
    "attention_qv": "query and value projections of every attention block (Llama q_proj, v_proj; "
    "GPT-2 and GPT-NeoX use one fused query-key-value layer)",
    "attention_all": "every attention projection: query, key, value and output",
    "all_linear": "every linear layer of every block, the MLP included, except the output head",
}

# Attention presets per architecture family. GPT-2 and GPT-NeoX compute q, k and v in one
# fused layer, so "attention_qv" there also adapts k.
_ATTENTION_SUFFIXES: dict[str, dict[str, tuple[str, ...]]] = {
    "llama": {
        "attention_qv": ("q_proj", "v_proj"),
        "attention_all": ("q_proj", "k_proj", "v_proj", "o_proj"),
    },
    "gpt2": {
        "attention_qv": ("attn.c_attn",),
        "attention_all": ("attn.c_attn", "attn.c_proj"),
    },
    "gpt_neox": {
        "attention_qv": ("attention.query_key_value",),
        "attention_all": ("attention.query_key_value", "attention.dense"),
    },
}


def module_names_for_targets(model: nn.Module) -> list[str]:
    """List the full names of the modules that can take an adapter (Linear, Conv1D, no head)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and module is not head
    ]


def _matches(module_name: str, target: str) -> bool:
    return module_name == target or module_name.endswith("." + target)


def _architecture_family(model: nn.Module, names: list[str]) -> str | None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in ("gpt2", "gpt_neox"):
        return model_type
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    if {"q_proj", "k_proj", "v_proj", "o_proj"} <= leaves:
        return "llama"  # Llama, Mistral, Qwen2 and others name their projections alike.
    return None


def target_suffixes(model: nn.Module, preset: str) -> list[str]:
    """Resolve a preset to module-name suffixes for this model's architecture.

    Args:
        model: the causal LM the adapters go into.
        preset: a key of TARGET_PRESETS.
    """
    if preset not in TARGET_PRESETS:
        raise ValueError(f"unknown target preset {preset!r}; choose one of {', '.join(TARGET_PRESETS)}")
    names = module_names_for_targets(model)
    if preset == "all_linear":
        leaves = [n.rsplit(".", 1)[-1] for n in names]
        return list(dict.fromkeys(leaves))
    family = _architecture_family(model, names)
    if family is None:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(
            f"target preset {preset!r} has no mapping for model type {model_type!r}; use "
            f"'all_linear' or list module names from: {', '.join(_valid_suffixes(names))}"
        )
    return list(_ATTENTION_SUFFIXES[family][preset])


def _valid_suffixes(names: list[str]) -> list[str]:
    """Return leaf names plus parent.leaf names, the short forms a user is likely to type."""
    leaves = [n.rsplit(".", 1)[-1] for n in names]
    pairs = [".".join(n.split(".")[-2:]) for n in names]
    return list(dict.fromkeys(leaves + pairs))


def resolve_target_modules(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Return the full names of the modules selected by a preset or a list of suffixes.

    Args:
        model: the causal LM the adapters go into.
        targets: a TARGET_PRESETS key, or module-name suffixes such as ["q_proj", "v_proj"].

    Raises:
        ValueError: unknown preset, empty list, or a name that matches no targetable
            module; the message lists the valid names.
    """
    names = module_names_for_targets(model)
    if isinstance(targets, str):
        if targets not in TARGET_PRESETS:
            raise ValueError(
                f"unknown target preset {targets!r}; choose one of {', '.join(TARGET_PRESETS)}, "
                "or pass a list of module names"
            )
        suffixes = target_suffixes(model, targets)
    else:
        suffixes = [str(t).strip() for t in targets]
        if not suffixes:
            raise ValueError(f"no target modules given; choose from: {', '.join(_valid_suffixes(names))}")

    unknown = [s for s in suffixes if not any(_matches(n, s) for n in names)]
    if unknown:
        raise ValueError(
            f"unknown target module name(s) {', '.join(map(repr, unknown))}; valid names: "
            f"{', '.join(_valid_suffixes(names))}"
        )
    return [n for n in names if any(_matches(n, s) for s in suffixes)]
