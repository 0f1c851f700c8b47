"""Save and load adapters, and export linear adapters in PEFT's LoRA format.

A saved adapter is a folder with two files:

* `adapter_model.safetensors`: only the adapter tensors, keyed `<layer>.lora_A.weight`
  (r×d_in), `<layer>.lora_B.weight` (d_out×r) and, for the GLU variant,
  `<layer>.lora_G.weight` (r×d_in), where `<layer>` is the wrapped module's name in the
  base model;
* `adapter_config.json`: the `AdapterConfig` fields, a format tag and the base model id.

A training checkpoint adds `training_state.pt` (optimizer state, step, RNG states), written
by `save_training_state`.

`export_peft` writes the file layout of Hugging Face PEFT's LoRA instead (keys
`base_model.model.<layer>.lora_A.weight`), which `peft.PeftModel.from_pretrained` loads.
PEFT has no adapter with an activation or a gate between lora_A and lora_B, so only
linear adapters (LoRA, or NoRA with the identity activation) can be exported.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nora_core.adapters import AdapterLayer, inject_adapters
from nora_core.config import AdapterConfig

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
TRAINING_STATE_NAME = "training_state.pt"
FORMAT_TAG = "nora-lab-adapter"
FORMAT_VERSION = 1

_FACTORS = ("lora_A", "lora_B", "lora_G")
_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(AdapterConfig))
_HEADER_KEYS = ("format", "format_version", "base_model_name_or_path")


class AdapterLoadError(ValueError):
    """Raised when an adapter folder is missing, malformed or does not fit the model."""


class PeftExportError(ValueError):
    """Raised when an adapter has no equivalent in PEFT's LoRA format."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the module inside a `DistributedDataParallel` wrapper, or `model` itself."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _named_adapter_layers(model: nn.Module) -> list[tuple[str, AdapterLayer]]:
    return [(name, module) for name, module in unwrap_model(model).named_modules()
            if isinstance(module, AdapterLayer)]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the adapter tensors of `model`, keyed `<layer>.lora_A.weight` and alike.

    The tensors are detached CPU copies, so saving them never touches the training graph.
    """
    state = {}
    for name, layer in _named_adapter_layers(model):
        for factor in _FACTORS:
            linear = getattr(layer, factor)
            if linear is not None:
                state[f"{name}.{factor}.weight"] = linear.weight.detach().to("cpu", copy=True)
    return state


def _check_config_matches(model: nn.Module, config: AdapterConfig) -> list[tuple[str, AdapterLayer]]:
    layers = _named_adapter_layers(model)
    if not layers:
        raise ValueError("the model has no adapters; call inject_adapters(model, config) first")
    for name, layer in layers:
        if layer.config != config:
            raise ValueError(
                f"layer {name} was built with {layer.config}, which differs from the config "
                f"given ({config}); pass the config the adapters were injected with"
            )
    return layers


def save_adapter(model: nn.Module, config: AdapterConfig, directory: str | Path,
                 base_model_name: str | None = None) -> Path:
    """Write the adapter tensors and settings of `model` to `directory`.

    Args:
        model: a model with adapters injected by `inject_adapters` (a
            `DistributedDataParallel` wrapper is unwrapped).
        config: the config the adapters were injected with.
        directory: output folder, created if missing; existing adapter files are replaced.
        base_model_name: id or path of the base model, stored for reference.

    Returns:
        The folder path.

    Raises:
        ValueError: when the model has no adapters or was built with another config.
    """
    _check_config_matches(model, config)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model), str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    record = {"format": FORMAT_TAG, "format_version": FORMAT_VERSION,
              "base_model_name_or_path": base_model_name, **dataclasses.asdict(config)}
    (folder / CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    logger.debug("saved %s adapter to %s", config.method, folder)
    return folder


def read_adapter_config(directory: str | Path) -> tuple[AdapterConfig, str | None]:
    """Read `adapter_config.json` from a folder written by `save_adapter`.

    Returns:
        The adapter config and the stored base model id (None if none was stored).

    Raises:
        AdapterLoadError: the file is missing, is not valid JSON, is a PEFT export, or
            contains invalid settings.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise AdapterLoadError(f"no {CONFIG_NAME} in {directory}; give a folder written by save_adapter")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterLoadError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(record, dict):
        raise AdapterLoadError(f"{path} must hold a JSON object, got {type(record).__name__}")
    if record.get("format") != FORMAT_TAG:
        if record.get("peft_type"):
            raise AdapterLoadError(
                f"{path} describes a PEFT {record['peft_type']} adapter, not a NoRA Lab adapter; "
                "load it with peft.PeftModel.from_pretrained(base_model, folder)"
            )
        raise AdapterLoadError(f"{path} has format {record.get('format')!r}, expected {FORMAT_TAG!r}")
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise AdapterLoadError(
            f"{path} has format_version {version!r}; this NoRA Lab reads version {FORMAT_VERSION}"
        )
    unknown = sorted(set(record) - set(_CONFIG_FIELDS) - set(_HEADER_KEYS))
    if unknown:
        raise AdapterLoadError(f"{path} has unknown keys {unknown}; it was not written by save_adapter")
    settings = {key: record[key] for key in _CONFIG_FIELDS if key in record}
    if isinstance(settings.get("target_modules"), list):
        settings["target_modules"] = tuple(settings["target_modules"])
    try:
        config = AdapterConfig(**settings)
    except (TypeError, ValueError) as error:
        raise AdapterLoadError(f"{path} contains invalid adapter settings: {error}") from None
    return config, record.get("base_model_name_or_path")


def load_adapter_weights(model: nn.Module, directory: str | Path) -> nn.Module:
    """Copy the tensors of `directory/adapter_model.safetensors` into the adapters of `model`.

    The file must hold exactly the model's adapter tensors with the same shapes. Values are
    cast to each adapter's own dtype and device.

    Raises:
        AdapterLoadError: the file is missing, or keys are missing, unexpected or of the
            wrong shape; the message lists every offending key.
    """
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterLoadError(f"no {WEIGHTS_NAME} in {directory}; give a folder written by save_adapter")
    stored = load_file(str(path))
    targets = {}
    for name, layer in _named_adapter_layers(model):
        for factor in _FACTORS:
            if getattr(layer, factor) is not None:
                targets[f"{name}.{factor}.weight"] = getattr(layer, factor).weight
    missing = sorted(set(targets) - set(stored))
    unexpected = sorted(set(stored) - set(targets))
    wrong_shape = sorted(
        f"{key}: file {tuple(stored[key].shape)}, model {tuple(targets[key].shape)}"
        for key in set(stored) & set(targets) if stored[key].shape != targets[key].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatch: {'; '.join(wrong_shape)}")
    if problems:
        raise AdapterLoadError(
            f"{path} does not fit the model's adapters ({' | '.join(problems)}); load it into the "
            "base model and adapter config it was saved from"
        )
    with torch.no_grad():
        for key, param in targets.items():
            param.copy_(stored[key])
    return model


def load_adapter(base_model: nn.Module, directory: str | Path, trainable: bool = True) -> nn.Module:
    """Inject the adapter saved in `directory` into `base_model` (in place) and load its weights.

    Args:
        base_model: the base model the adapter was trained on, without adapters.
        directory: a folder written by `save_adapter`.
        trainable: keep the adapter parameters trainable; False freezes them and puts the
            model in eval mode, for inference.

    Returns:
        The same model object, now with adapters; its outputs equal those of the saved model.

    Raises:
        AdapterLoadError: see `read_adapter_config` and `load_adapter_weights`.
    """
    config, _ = read_adapter_config(directory)
    try:
        model = inject_adapters(base_model, config)
    except ValueError as error:
        raise AdapterLoadError(f"cannot inject the adapter from {directory}: {error}") from None
    load_adapter_weights(model, directory)
    for _, layer in _named_adapter_layers(model):
        for name, param in layer.named_parameters():
            if name.startswith("lora_"):
                param.requires_grad_(trainable)
    if not trainable:
        model.eval()
    return model


def _peft_alpha(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def export_peft(model: nn.Module, config: AdapterConfig, directory: str | Path,
                base_model_name: str | None) -> Path:
    """Write a linear adapter in PEFT's LoRA format, loadable by `PeftModel.from_pretrained`.

    `target_modules` lists the full name of every adapted layer, so PEFT adapts exactly the
    same layers. GPT-2 style `Conv1D` layers set `fan_in_fan_out`.

    Args:
        model: a model with adapters injected by `inject_adapters`.
        config: the config the adapters were injected with.
        directory: output folder, created if missing.
        base_model_name: hub id or path of the base model, written as
            `base_model_name_or_path`.

    Returns:
        The folder path.

    Raises:
        PeftExportError: the adapter has a non-identity activation or a GLU gate (NoRA),
            which PEFT's LoRA cannot represent.
    """
    if not config.is_linear:
        reason = "a GLU gate" if config.glu_gate else f"the {config.activation!r} activation"
        raise PeftExportError(
            f"cannot export a {config.method} adapter with {reason} to PEFT: PEFT's LoRA computes "
            "s · B A x and has no adapter with a non-linearity between lora_A and lora_B; "
            "save it with save_adapter instead, or train with activation='identity'"
        )
    layers = _check_config_matches(model, config)
    if config.lora_dropout > 0 and config.dropout_position == "rank":
        logger.warning("PEFT applies lora_dropout to the layer input, not to the rank-r bottleneck; "
                       "outputs in eval mode are the same, training in PEFT would differ")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, layer in layers:
        for factor in ("lora_A", "lora_B"):
            weight = getattr(layer, factor).weight
            tensors[f"base_model.model.{name}.{factor}.weight"] = weight.detach().to("cpu").contiguous()
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    record = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if hasattr(unwrap_model(model), "generate") else None,
        "base_model_name_or_path": base_model_name,
        "r": config.r,
        "lora_alpha": _peft_alpha(config.lora_alpha),
        "use_rslora": config.scaling == "alpha_over_sqrt_r",
        "lora_dropout": config.lora_dropout,
        "target_modules": [name for name, _ in layers],
        "fan_in_fan_out": any(layer.fan_in_fan_out for _, layer in layers),
        "bias": "none",
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
    (folder / CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    logger.debug("exported %d LoRA layers in PEFT format to %s", len(layers), folder)
    return folder


def save_training_state(directory: str | Path, state: dict) -> Path:
    """Write the resumable part of a training run (optimizer, step, RNG states) next to an adapter.

    Args:
        directory: a checkpoint folder, usually one that `save_adapter` also wrote to.
        state: tensors, numbers, strings and nested lists or dicts of them, such as
            {"step": 10, "optimizer": optimizer.state_dict(), "rng": [...]}.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / TRAINING_STATE_NAME)
    return folder


def load_training_state(directory: str | Path) -> dict:
    """Read what `save_training_state` wrote, without running any pickled code.

    Raises:
        AdapterLoadError: the file is missing or unreadable.
    """
    path = Path(directory) / TRAINING_STATE_NAME
    if not path.is_file():
        raise AdapterLoadError(
            f"no {TRAINING_STATE_NAME} in {directory}; give a checkpoint folder written during training"
        )
    try:
        # weights_only=True refuses arbitrary pickled objects, so a checkpoint cannot run code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError) as error:
        raise AdapterLoadError(f"{path} could not be read: {error}") from None
