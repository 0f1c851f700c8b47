"""Language-model tasks for the paired trainer: style shift, generated procedures, uploads.

- "style_shift": the bundled base model was pre-trained on Shakespeare's tragedies; the
  adapters fit random windows of the six comedies (loss on every token). The last 10 % of
  each comedy is held out for validation.
- "arithmetic", "reverse", "sort": generated prompt → worked steps → answer examples
  (see `nora_core.lm.procedures`); the loss covers the response and the final eos only.
- "upload": user data, JSONL prompt/response pairs (loss on the response) or plain text
  (loss on every token).

Every task shares one read-only base model per (model, device, dtype) and hands out deep
copies, so training a copy never changes the cached weights.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass, field, fields
from typing import Literal, get_args

import torch
from torch import nn

from nora_core.fields import check_choice, check_range
from nora_core.lm.batches import Batch, causal_lm_loss, collate_examples, encode_prompt_response, window_batch
from nora_core.lm.corpus import COMEDIES, WindowSampler, load_play_splits, tiled_windows
from nora_core.lm.generation import generate
from nora_core.lm.models import BUNDLED_MODEL, downloads_allowed, load_base_model
from nora_core.lm.procedures import PROCEDURES, extract_answer, generate_examples
from nora_core.lm.upload import DEFAULT_MAX_UPLOAD_BYTES, UploadError, parse_upload

logger = logging.getLogger(__name__)

LMTaskName = Literal["style_shift", "arithmetic", "reverse", "sort", "upload"]
UploadFormat = Literal["auto", "jsonl", "text"]
DtypeName = Literal["float32", "bfloat16", "float16"]


def _option(default, help: str, unit: str = "", **limits):
    return field(default=default, metadata={"help": help, "unit": unit, **limits})


@dataclass(frozen=True)
class LMTaskConfig:
    """Choices of a language-model task; the app and the CLI build their inputs from the metadata."""

    task: LMTaskName = _option(
        "style_shift",
        "what the adapters learn: Shakespeare comedies (style_shift), a generated procedure "
        "(arithmetic, reverse, sort) or uploaded data (upload)",
    )
    model_name: str = _option(
        BUNDLED_MODEL, "base model: the bundled model, a local folder, or a hub id in the local cache"
    )
    seq_len: int = _option(128, "window length for text; longest example for prompt/response data", "tokens", min=8, max=4096)
    n_train: int = _option(1500, "generated training examples (procedures only)", "examples", min=1, max=100_000)
    n_val: int = _option(64, "held-out examples or text windows for the validation loss", "examples", min=1, max=10_000)
    eval_batch_size: int = _option(32, "examples per validation batch", "examples", min=1, max=1024)
    spectrum_examples: int = _option(16, "held-out examples whose adapter outputs give the spectra", "examples", min=1, max=1024)
    seed: int = _option(0, "seed of the generated examples and of the upload split", min=0, max=2**31 - 1)
    max_upload_bytes: int = _option(DEFAULT_MAX_UPLOAD_BYTES, "largest accepted upload", "bytes", min=1, max=100_000_000)
    upload_format: UploadFormat = _option("auto", "upload format: detect, JSONL prompt/response pairs, or plain text")
    device: str = _option("cpu", "torch device of the model")
    dtype: DtypeName = _option("float32", "dtype of the model weights")

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "task", self.task, get_args(LMTaskName))
        check_choice(owner, "upload_format", self.upload_format, get_args(UploadFormat))
        check_choice(owner, "dtype", self.dtype, get_args(DtypeName))
        for spec in fields(self):
            if "min" in spec.metadata:
                check_range(
                    owner, spec.name, getattr(self, spec.name), spec.metadata["min"], spec.metadata["max"], integer=True
                )
        if not isinstance(self.model_name, str) or not self.model_name.strip():
            raise ValueError(
                f"{owner}.model_name must be a model id or folder path, got {self.model_name!r}; "
                f"use {BUNDLED_MODEL!r} for the bundled model"
            )


_BASE_CACHE: dict[tuple[str, str, str], tuple[nn.Module, object]] = {}
_BASE_CACHE_LOCK = threading.Lock()


def cached_base_model(name: str, device: str = "cpu", dtype: str = "float32") -> tuple[nn.Module, object]:
    """Return the shared frozen (model, tokenizer) for this key, loading it on first use.

    The returned model must not be trained or modified: deep-copy it first.
    """
    key = (name, str(device), dtype)
    with _BASE_CACHE_LOCK:
        if key not in _BASE_CACHE:
            _BASE_CACHE[key] = load_base_model(name, device=device, dtype=getattr(torch, dtype),
                                               allow_download=downloads_allowed())
        return _BASE_CACHE[key]


def clear_base_model_cache() -> None:
    """Drop every cached base model (for example to free memory)."""
    with _BASE_CACHE_LOCK:
        _BASE_CACHE.clear()


class LMTask:
    """A language-model task implementing the trainer's Task protocol."""

    kind = "lm"

    def __init__(self, config: LMTaskConfig, upload_data: bytes | None = None) -> None:
        """Load the base model and build the data.

        Args:
            config: the task choices.
            upload_data: raw bytes of the uploaded file; required when config.task is "upload".

        Raises:
            ModelLoadError: the base model cannot be loaded.
            UploadError: the upload is missing or invalid.
            ValueError: seq_len exceeds the model's positions, or the procedure cannot
                produce n_train + n_val distinct examples.
        """
        self.config = config
        self.name = config.task
        self._base, self.tokenizer = cached_base_model(config.model_name, config.device, config.dtype)
        max_positions = _max_positions(self._base)
        if max_positions is not None and config.seq_len > max_positions:
            raise ValueError(
                f"seq_len must be at most {max_positions} for model {config.model_name!r} "
                f"(its position limit), got {config.seq_len}"
            )
        self._sampler: WindowSampler | None = None
        self._train_examples: list[tuple[list[int], list[int]]] = []
        self._val_examples: list[tuple[list[int], list[int]]] = []
        self.val_prompts: list[tuple[str, str]] = []  # (prompt, reference response)
        self._val_windows: torch.Tensor | None = None

        if config.task == "style_shift":
            train_parts, val_parts = load_play_splits(COMEDIES)
            self._set_text(train_parts, val_parts)
        elif config.task in PROCEDURES:
            train, val = generate_examples(config.task, config.n_train, config.n_val, config.seed)
            self._set_pairs(train, val)
        else:
            self._load_upload(upload_data)

    # Data construction

    def _encode_text(self, text: str) -> torch.Tensor:
        # verbose=False: long texts are cut into windows later, so the length warning is noise.
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def _set_text(self, train_parts: list[str], val_parts: list[str]) -> None:
        window = self.config.seq_len
        self._sampler = WindowSampler([self._encode_text(t) for t in train_parts], window)
        self._val_windows = tiled_windows([self._encode_text(t) for t in val_parts], window, self.config.n_val)

    def _set_pairs(self, train: list[tuple[str, str]], val: list[tuple[str, str]]) -> None:
        self._train_examples = [self._encode_pair(p, r) for p, r in train]
        self._val_examples = [self._encode_pair(p, r) for p, r in val[: self.config.n_val]]
        self.val_prompts = list(val[: self.config.n_val])
        eos = self.tokenizer.eos_token_id
        truncated = sum(labels[-1] != eos for _, labels in self._train_examples + self._val_examples)
        if truncated:
            logger.warning(
                "%d of %d examples are longer than seq_len=%d tokens and were cut, losing their ends",
                truncated, len(self._train_examples) + len(self._val_examples), self.config.seq_len,
            )

    def _encode_pair(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        ids, labels = encode_prompt_response(self.tokenizer, prompt, response, self.config.seq_len)
        if all(label == -100 for label in labels[1:]):
            error_type = UploadError if self.config.task == "upload" else ValueError
            raise error_type(
                f"an example's prompt fills all {self.config.seq_len} tokens of seq_len, so no response "
                f"token is left to train on (prompt begins {prompt[:40]!r}); raise seq_len or shorten the prompt"
            )
        return ids, labels

    def _load_upload(self, upload_data: bytes | None) -> None:
        if upload_data is None:
            raise UploadError("the upload task needs a file: upload JSONL prompt/response pairs or plain text")
        parsed = parse_upload(
            upload_data, self.config.max_upload_bytes, self.config.upload_format, self.config.seed
        )
        if parsed.format == "jsonl":
            self._set_pairs(list(parsed.train_pairs), list(parsed.val_pairs))
            return
        train_ids, val_ids = self._encode_text(parsed.train_text), self._encode_text(parsed.val_text)
        window = self.config.seq_len
        if len(val_ids) < window or len(train_ids) < window:
            raise UploadError(
                f"the text is too short for seq_len={window}: the training part has {len(train_ids)} tokens "
                f"and the held-out last tenth {len(val_ids)}, and each needs at least {window}; "
                f"upload at least about {10 * window:,} tokens of text or lower seq_len"
            )
        self._sampler = WindowSampler([train_ids], window)
        self._val_windows = tiled_windows([val_ids], window, self.config.n_val)

    # Task protocol

    @property
    def is_prompt_response(self) -> bool:
        """Whether examples are prompt/response pairs (loss on the response only)."""
        return self._sampler is None

    def base_model(self) -> nn.Module:
        """Return a deep copy of the frozen base model in train mode (parameters stay frozen)."""
        model = copy.deepcopy(self._base)
        model.train()
        return model

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> Batch:
        """Draw random text windows or random training examples (with replacement)."""
        if self._sampler is not None:
            return window_batch(self._sampler.sample(generator, batch_size))
        rows = torch.randint(0, len(self._train_examples), (batch_size,), generator=generator)  # (B,)
        return collate_examples([self._train_examples[int(i)] for i in rows], self.tokenizer.pad_token_id)

    def validation_batches(self) -> list[Batch]:
        """Return the fixed held-out batches, `eval_batch_size` examples each."""
        size = self.config.eval_batch_size
        if self._val_windows is not None:
            return [window_batch(self._val_windows[i : i + size]) for i in range(0, len(self._val_windows), size)]
        return [
            collate_examples(self._val_examples[i : i + size], self.tokenizer.pad_token_id)
            for i in range(0, len(self._val_examples), size)
        ]

    def spectrum_batch(self) -> Batch:
        """Return the first `spectrum_examples` held-out examples as one batch."""
        count = self.config.spectrum_examples
        if self._val_windows is not None:
            return window_batch(self._val_windows[:count])
        return collate_examples(self._val_examples[:count], self.tokenizer.pad_token_id)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Return the mean next-token cross-entropy over label positions != -100."""
        device = next(model.parameters()).device
        return causal_lm_loss(model, {key: value.to(device) for key, value in batch.items()})

    def floor(self, r: int | None) -> float | None:
        """Return None: no theory floor is known for language-model losses."""
        return None

    # Generation and answer accuracy

    def sample_prompts(self, count: int = 3) -> list[str]:
        """Return held-out prompts for side-by-side generations (text tasks: an opening of each window)."""
        if self.is_prompt_response:
            return [prompt for prompt, _ in self.val_prompts[:count]]
        return [self.tokenizer.decode(window[:48], skip_special_tokens=True) for window in self._val_windows[:count]]

    def answer_accuracy(self, model: nn.Module, count: int = 32, max_new_tokens: int = 96) -> float:
        """Return the share of held-out prompts whose greedy "answer: ..." line is correct.

        Args:
            model: the model to evaluate.
            count: number of held-out examples to generate for.
            max_new_tokens: generation limit per example.
        """
        if not self.is_prompt_response:
            raise ValueError(f"answer accuracy needs prompt/response examples; task {self.name!r} is plain text")
        pairs = self.val_prompts[:count]
        correct = 0
        for prompt, reference in pairs:
            expected = extract_answer(reference)
            produced = extract_answer(generate(model, self.tokenizer, prompt, max_new_tokens))
            correct += int(expected is not None and produced == expected)
        return correct / max(1, len(pairs))


def _max_positions(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
