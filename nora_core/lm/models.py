"""Loading of causal language models: the bundled tiny model, local folders, cached hub ids.

`load_base_model` returns a frozen (requires_grad=False, eval mode) model and its
tokenizer; callers deep-copy the model before injecting adapters. Loading never
executes code from a model repository (`trust_remote_code=False`), and hub downloads
happen only when the caller allows them and offline mode is off, so a missing model
fails fast instead of waiting on the network.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from nora_core.lm.corpus import DATA_DIR
from nora_core.lm.tokenizer import BYTE_VOCAB_SIZE, EOS_TOKEN_ID, PAD_TOKEN_ID

# Re-exported so callers find the target helpers next to the loader.
from nora_core.lm.targets import (  # noqa: F401
    TARGET_PRESETS,
    module_names_for_targets,
    resolve_target_modules,
    target_suffixes,
)

logger = logging.getLogger(__name__)

BUNDLED_MODEL = "bundled:tiny-shakespeare"
BUNDLED_MODEL_DIR = DATA_DIR / "models" / "tiny-shakespeare"
BUNDLED_MODELS = {BUNDLED_MODEL: BUNDLED_MODEL_DIR}

_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class ModelLoadError(ValueError):
    """A model or its tokenizer could not be loaded. The message gives the reason and the fallback."""


def tiny_llama_config(
    hidden_size: int = 128,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    intermediate_size: int = 344,
    max_position_embeddings: int = 512,
) -> LlamaConfig:
    """Return the Llama configuration of the bundled model for the 259-id byte vocabulary.

    Args:
        hidden_size: model width d.
        num_hidden_layers: number of decoder blocks.
        num_attention_heads: attention heads per block (no grouped-query sharing).
        intermediate_size: width of the SwiGLU MLP (about 8/3 · d).
        max_position_embeddings: maximum sequence length, in tokens (bytes).
    """
    return LlamaConfig(
        vocab_size=BYTE_VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=PAD_TOKEN_ID,
        bos_token_id=None,
        eos_token_id=EOS_TOKEN_ID,
    )


def _is_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARIABLES)


def _fallback_hint() -> str:
    return f"Use the bundled model {BUNDLED_MODEL!r} or a local folder path."


def _load_from(
    source: str, local_only: bool, device: str | torch.device, dtype: torch.dtype | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    config = AutoConfig.from_pretrained(source, local_files_only=local_only, trust_remote_code=False)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, local_files_only=local_only, trust_remote_code=False, dtype=dtype
        )
    except ValueError as error:
        if "Unrecognized configuration class" in str(error):
            raise ModelLoadError(
                f"Could not load model {source!r}: it is not a causal language model "
                f"(model_type {config.model_type!r}). {_fallback_hint()}"
            ) from error
        raise
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only, trust_remote_code=False)
    return model.to(device), tokenizer


def _prepare(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(
            f"Could not use model {name!r}: its tokenizer has no end-of-sequence token, "
            f"which the tasks append to every example. {_fallback_hint()}"
        )
    if tokenizer.pad_token_id is None:
        # GPT-2 and Pythia ship without a pad token. Batches mask padding by attention_mask,
        # so a pad id equal to eos never hides a real end-of-sequence label.
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def _load_hub_model(
    name: str, device: str | torch.device, dtype: torch.dtype | None, allow_download: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        return _load_from(name, True, device, dtype)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as local_error:
        if _is_offline() or not allow_download:
            reason = (
                "the Hugging Face hub is unreachable (offline)"
                if _is_offline()
                else "downloading from the Hugging Face hub is turned off (start the app with "
                f"{DOWNLOAD_ENV}=1, or pass --allow-download to the command line)"
            )
            raise ModelLoadError(
                f"Could not load model {name!r}: not found locally and {reason}. {_fallback_hint()}"
            ) from local_error
    # NOTE: this download path has no test, because the test machine has no network.
    logger.info("model %r not in the local cache; trying the Hugging Face hub", name)
    try:
        return _load_from(name, False, device, dtype)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as hub_error:
        raise ModelLoadError(
            f"Could not load model {name!r}: not found locally and the Hugging Face hub "
            f"download failed ({hub_error}). {_fallback_hint()}"
        ) from hub_error


DOWNLOAD_ENV = "NORA_LAB_ALLOW_DOWNLOAD"


def downloads_allowed() -> bool:
    """Return True when the environment lets the app fetch hub models (`NORA_LAB_ALLOW_DOWNLOAD=1`)."""
    return os.environ.get(DOWNLOAD_ENV) == "1"


def load_base_model(
    name_or_path: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    allow_download: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, frozen and in eval mode.

    Args:
        name_or_path: `BUNDLED_MODEL`, a local folder written by `save_pretrained`, or a
            Hugging Face hub id (found in the local cache, or downloaded when allowed).
        device: torch device for the weights.
        dtype: weight dtype; None keeps the checkpoint's dtype.
        allow_download: try the hub when the id is not cached locally. Ignored (no
            network) when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set.

    Raises:
        ModelLoadError: the model is missing, unreachable, not a causal LM, or its
            tokenizer is unusable. The message names the id and the fallback.
    """
    name = name_or_path.strip()
    if name in BUNDLED_MODELS:
        folder = BUNDLED_MODELS[name]
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"Could not load model {name!r}: the checkpoint folder {folder} is missing or "
                "incomplete. Recreate it with `python scripts/pretrain_tiny_lm.py`."
            )
        source = str(folder)
    elif Path(name).expanduser().exists():
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"Could not load model {name!r}: the folder has no config.json, so it is not a "
                f"saved Hugging Face model. {_fallback_hint()}"
            )
        source = str(folder)
    elif name.startswith((".", "/", "~", "\\")):
        # Hub ids never start like a path, so this is a folder that does not exist.
        raise ModelLoadError(f"Could not load model {name!r}: no such folder. {_fallback_hint()}")
    else:
        source = ""

    if source:
        try:
            model, tokenizer = _load_from(source, True, device, dtype)
        except (OSError, ValueError, KeyError) as error:
            if isinstance(error, ModelLoadError):
                raise
            raise ModelLoadError(f"Could not load model {name!r}: {error}. {_fallback_hint()}") from error
    else:
        model, tokenizer = _load_hub_model(name, device, dtype, allow_download)

    _prepare(model, tokenizer, name)
    n_parameters = sum(p.numel() for p in model.parameters())
    logger.info("loaded model %r (%s, %d parameters) on %s", name, model.config.model_type, n_parameters, device)
    return model, tokenizer


def count_parameters(model: nn.Module) -> int:
    """Return the number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())
