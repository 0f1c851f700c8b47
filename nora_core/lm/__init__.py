"""Offline language-model support: the bundled tiny model, its byte tokenizer, LM tasks."""

from nora_core.lm.batches import causal_lm_loss, collate_examples, mean_loss, window_batch
from nora_core.lm.generation import generate
from nora_core.lm.models import (
    BUNDLED_MODEL,
    TARGET_PRESETS,
    ModelLoadError,
    load_base_model,
    module_names_for_targets,
    resolve_target_modules,
    target_suffixes,
)
from nora_core.lm.procedures import PROCEDURES, extract_answer
from nora_core.lm.tasks import LMTask, LMTaskConfig, cached_base_model, clear_base_model_cache
from nora_core.lm.tokenizer import load_byte_tokenizer
from nora_core.lm.upload import UploadError, parse_upload

__all__ = [
    "BUNDLED_MODEL",
    "PROCEDURES",
    "TARGET_PRESETS",
    "LMTask",
    "LMTaskConfig",
    "ModelLoadError",
    "UploadError",
    "cached_base_model",
    "causal_lm_loss",
    "clear_base_model_cache",
    "collate_examples",
    "extract_answer",
    "generate",
    "load_base_model",
    "load_byte_tokenizer",
    "mean_loss",
    "module_names_for_targets",
    "parse_upload",
    "resolve_target_modules",
    "target_suffixes",
    "window_batch",
]
