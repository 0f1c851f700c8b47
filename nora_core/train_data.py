"""Training data for `python -m nora_core train`: files or hub datasets, tokenized and sharded.

Sources:

* a JSONL file, one object per line with "prompt" and "response"; the loss covers the
  response and the end-of-sequence token only;
* a plain-text file, cut into non-overlapping windows of `seq_len` tokens; the loss
  covers every token;
* a Hugging Face hub dataset such as "TIGER-Lab/MathInstruct" (instruction/output
  records) or "Open-Orca/SlimOrca" (ShareGPT conversations), when the `datasets` package
  is installed and the hub is reachable.

`EpochSampler` decides which examples each process trains on at each step from the seed
and the step number alone, so a resumed run trains on exactly the batches an uninterrupted
run would have seen.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from nora_core.lm.batches import IGNORE_INDEX, encode_prompt_response
from nora_core.lm.upload import UPLOAD_VAL_FRACTION, UploadError, parse_upload

logger = logging.getLogger(__name__)

Example = tuple[list[int], list[int]]  # (token ids, labels with -100 where no loss)

# Short names for the instruction datasets that the NoRA paper fine-tunes on.
HUB_ALIASES = {
    "MathInstruct": "TIGER-Lab/MathInstruct",
    "SlimOrca": "Open-Orca/SlimOrca",
}

# Seed of the held-out split of hub data, as parse_upload's default for files; fixed so that
# every training seed is evaluated on the same examples.
SPLIT_SEED = 0

_FILE_SUFFIXES = (".jsonl", ".json", ".txt", ".text", ".md")

_ROLE_NAMES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
               "assistant": "assistant"}


class DataError(ValueError):
    """Raised when training data is missing, malformed or too small for the settings."""


@dataclass
class TokenizedData:
    """Tokenized training and validation examples, all at most `seq_len` tokens long."""

    train: list[Example]
    validation: list[Example]
    kind: str  # "pairs" or "text"
    source: str


def record_to_pair(record: dict, where: str) -> tuple[str, str]:
    """Turn one dataset record into (prompt, response).

    Accepts {"prompt", "response"}, the Alpaca/MathInstruct layout {"instruction",
    "output"} with an optional "input", and the ShareGPT/SlimOrca layout {"conversations":
    [{"from", "value"}, ...]}, whose last assistant turn is the response.

    Args:
        record: one JSON object.
        where: position shown in error messages, such as "data.jsonl line 3".
    """
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "prompt" in record and "response" in record:
        prompt, response = record["prompt"], record["response"]
    elif "instruction" in record and "output" in record:
        extra = record.get("input") or ""
        prompt = record["instruction"] + (f"\n\n{extra}" if extra else "") + "\n\n"
        response = record["output"]
    elif isinstance(record.get("conversations"), list):
        prompt, response = _conversation_pair(record["conversations"], where)
    else:
        raise DataError(
            f"{where}: found keys {sorted(record)}; each record needs \"prompt\" and \"response\" "
            "(or \"instruction\" and \"output\", or a \"conversations\" list)"
        )
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise DataError(f"{where}: prompt and response must be strings")
    if not response:
        raise DataError(f"{where}: the response is empty, so the example has nothing to learn")
    return prompt, response


def _conversation_pair(turns: list, where: str) -> tuple[str, str]:
    lines = []
    for turn in turns:
        if not isinstance(turn, dict) or "value" not in turn:
            raise DataError(f"{where}: every conversation turn needs \"from\" and \"value\"")
        lines.append((_ROLE_NAMES.get(str(turn.get("from")), str(turn.get("from"))), str(turn["value"])))
    if not lines or lines[-1][0] != "assistant":
        raise DataError(f"{where}: the conversation must end with an assistant (\"gpt\") turn")
    context = "".join(f"{role}: {text}\n" for role, text in lines[:-1])
    return context + "assistant: ", lines[-1][1]


def read_hub_pairs(name: str) -> list[tuple[str, str]]:
    """Download the train split of a hub dataset and turn its records into pairs."""
    repo = HUB_ALIASES.get(name, name)
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{name!r} is not a local file, and reading the hub dataset {repo!r} needs the "
            "`datasets` package: run `pip install datasets` (it downloads from the Hugging Face "
            "hub), or pass a local JSONL or text file"
        ) from None
    # NOTE: this path has no test, because the test machine has no network access.
    try:
        dataset = datasets.load_dataset(repo, split="train")
    except Exception as error:  # datasets raises many types for network and name errors
        raise DataError(
            f"could not load the hub dataset {repo!r} ({type(error).__name__}: {error}); check the "
            "name and the network connection, or pass a local JSONL or text file"
        ) from error
    return [record_to_pair(dict(record), f"{repo} row {i}") for i, record in enumerate(dataset)]


def _tokenize_pairs(pairs: list[tuple[str, str]], tokenizer, seq_len: int) -> list[Example]:
    examples = []
    for prompt, response in pairs:
        ids, labels = encode_prompt_response(tokenizer, prompt, response, seq_len)
        if any(label != IGNORE_INDEX for label in labels[1:]):
            examples.append((ids, labels))
    skipped = len(pairs) - len(examples)
    if skipped:
        logger.warning("skipped %d of %d examples whose prompt fills all %d tokens", skipped,
                       len(pairs), seq_len)
    if not examples:
        raise DataError(f"every prompt is at least {seq_len} tokens long; raise --seq-len")
    return examples


def _text_windows(text: str, tokenizer, seq_len: int) -> list[Example]:
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return [(ids[i:i + seq_len], ids[i:i + seq_len]) for i in range(0, len(ids) - seq_len + 1, seq_len)]


def load_training_data(source: str, tokenizer, seq_len: int, max_eval_examples: int) -> TokenizedData:
    """Read, split and tokenize the training data named by `source`.

    Files follow the app's upload rules (`nora_core.lm.upload.parse_upload`): JSONL pairs
    are shuffled with a fixed seed and a tenth is held out, plain text keeps its last tenth
    for validation. Hub datasets are split like JSONL files.

    Args:
        source: path of a JSONL or plain-text file, or a hub dataset name (see HUB_ALIASES).
        tokenizer: the base model's tokenizer.
        seq_len: maximum example length, in tokens; text is cut into windows of exactly this length.
        max_eval_examples: most validation examples kept, to bound evaluation time.

    Raises:
        DataError: the source is missing, malformed, or too small for the settings.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        raise DataError(f"--data {source!r} is a folder; give a JSONL or text file")
    if path.is_file():
        data = path.read_bytes()
        try:
            parsed = parse_upload(data, max_bytes=max(1, len(data)))
        except UploadError as error:
            raise DataError(f"{path}: {error}") from None
        if parsed.format == "jsonl":
            return _tokenize_pairs_split(list(parsed.train_pairs), list(parsed.val_pairs), tokenizer,
                                         seq_len, max_eval_examples, source)
        return _tokenize_text_split(parsed.train_text, parsed.val_text, tokenizer, seq_len,
                                    max_eval_examples, source)
    looks_like_path = path.suffix.lower() in _FILE_SUFFIXES or source.startswith((".", "/", "~"))
    if source in HUB_ALIASES or (source.count("/") == 1 and not looks_like_path):
        pairs = read_hub_pairs(source)
        if len(pairs) < 2:
            raise DataError(f"{source} has {len(pairs)} example; training and validation need at least 2")
        random.Random(SPLIT_SEED).shuffle(pairs)
        n_val = max(1, round(len(pairs) * UPLOAD_VAL_FRACTION))
        return _tokenize_pairs_split(pairs[n_val:], pairs[:n_val], tokenizer, seq_len,
                                     max_eval_examples, source)
    raise DataError(
        f"--data {source!r}: file not found, and it is not a hub dataset name such as "
        f"{', '.join(HUB_ALIASES.values())}; check the path"
    )


def _tokenize_pairs_split(train_pairs, val_pairs, tokenizer, seq_len, max_eval_examples,
                          source) -> TokenizedData:
    validation = _tokenize_pairs(val_pairs[:max_eval_examples], tokenizer, seq_len)
    train = _tokenize_pairs(train_pairs, tokenizer, seq_len)
    return TokenizedData(train, validation, "pairs", source)


def _tokenize_text_split(train_text, val_text, tokenizer, seq_len, max_eval_examples,
                         source) -> TokenizedData:
    train = _text_windows(train_text, tokenizer, seq_len)
    validation = _text_windows(val_text, tokenizer, seq_len)[:max_eval_examples]
    if not train or not validation:
        raise DataError(
            f"{source} is too short: its first 90 % and its last 10 % (held out for validation) "
            f"must each hold at least one window of {seq_len} tokens; lower --seq-len or use "
            "more text"
        )
    return TokenizedData(train, validation, "text", source)


class EpochSampler:
    """Pick each process's examples for every step from (seed, step) alone.

    Every epoch is a fresh permutation of the training examples, the same on every
    process. Step k of an epoch takes the next `batch_size × world_size` indices of it,
    and process `rank` takes its own `batch_size` of those, so the processes see disjoint
    shards. The last incomplete global batch of each epoch is dropped, so every process
    runs the same number of steps.
    """

    def __init__(self, n_examples: int, batch_size: int, world_size: int, rank: int, seed: int) -> None:
        global_batch = batch_size * world_size
        if n_examples < global_batch:
            raise DataError(
                f"the training split has {n_examples} examples, fewer than one global batch of "
                f"batch size {batch_size} × {world_size} processes = {global_batch}; lower "
                "--batch-size, start fewer processes or use more data"
            )
        self.n_examples = n_examples
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.steps_per_epoch = n_examples // global_batch
        self._epoch: int | None = None
        self._order: list[int] = []

    def indices(self, step: int) -> list[int]:
        """Return this process's example indices for the step that follows `step` done steps."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order = torch.randperm(self.n_examples, generator=generator).tolist()
            self._epoch = epoch
        start = (position * self.world_size + self.rank) * self.batch_size
        return self._order[start:start + self.batch_size]
