"""Validation and parsing of user-uploaded training data for the language-model task.

Two formats are accepted:
- JSONL: one JSON object per line with string keys "prompt" and "response"; the loss
  covers the response only. Blank lines are skipped.
- Plain text: any UTF-8 text; the loss covers every token.

Every problem raises UploadError with a message fit to show the user: it names the line
and the value that is wrong and states what to change.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

DEFAULT_MAX_UPLOAD_BYTES = 2_000_000
MIN_JSONL_EXAMPLES = 8
UPLOAD_VAL_FRACTION = 0.1


class UploadError(ValueError):
    """Uploaded data is unusable. The message states what is wrong and how to fix it."""


@dataclass(frozen=True)
class ParsedUpload:
    """Uploaded data split into training and validation parts.

    `train_pairs`/`val_pairs` hold (prompt, response) pairs for JSONL; `train_text`/
    `val_text` hold the text and its held-out tail for plain text.
    """

    format: str  # "jsonl" or "text"
    train_pairs: tuple[tuple[str, str], ...] = ()
    val_pairs: tuple[tuple[str, str], ...] = ()
    train_text: str = ""
    val_text: str = ""


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UploadError(
            f"the file is not valid UTF-8 text: invalid byte 0x{data[error.start]:02x} on line {line} "
            f"(byte offset {error.start}); save the file as UTF-8"
        ) from error


def detect_format(text: str) -> str:
    """Return "jsonl" when the first non-blank line starts with "{", else "text"."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return "jsonl" if first.lstrip().startswith("{") else "text"


def _json_type_name(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def parse_jsonl(text: str) -> list[tuple[str, str]]:
    """Parse JSONL prompt/response pairs, raising UploadError that names the bad line."""
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UploadError(
                f"line {number}: invalid JSON ({error.msg} at column {error.colno}); each line must be "
                'one JSON object such as {"prompt": "...", "response": "..."}'
            ) from error
        if not isinstance(record, dict):
            raise UploadError(
                f'line {number}: expected a JSON object with keys "prompt" and "response", '
                f"got a JSON {_json_type_name(record)}"
            )
        for key in ("prompt", "response"):
            if key not in record:
                raise UploadError(
                    f'line {number}: missing key "{key}"; every line needs "prompt" and "response" '
                    f"(found keys: {', '.join(map(repr, record)) or 'none'})"
                )
            if not isinstance(record[key], str):
                value_text = json.dumps(record[key])
                value_text = value_text if len(value_text) <= 40 else value_text[:37] + "..."
                raise UploadError(
                    f'line {number}: "{key}" must be a string, got a JSON {_json_type_name(record[key])} ({value_text})'
                )
        if not record["response"].strip():
            raise UploadError(f'line {number}: "response" is empty; the loss is computed on the response')
        pairs.append((record["prompt"], record["response"]))
    return pairs


def parse_upload(
    data: bytes,
    max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    upload_format: str = "auto",
    seed: int = 0,
) -> ParsedUpload:
    """Validate uploaded bytes and split them into training and validation data.

    JSONL pairs are shuffled with `seed` and a tenth (at least one) is held out; plain
    text keeps its last tenth for validation.

    Args:
        data: the raw file content.
        max_bytes: largest accepted size in bytes.
        upload_format: "auto" (detect from the first non-blank line), "jsonl" or "text".
        seed: seed of the JSONL shuffle before the split.

    Raises:
        UploadError: too large, empty, not UTF-8, malformed JSONL, or too few JSONL
            examples. The caller checks that plain text is long enough for its windows.
    """
    if upload_format not in ("auto", "jsonl", "text"):
        raise UploadError(f"upload_format must be 'auto', 'jsonl' or 'text', got {upload_format!r}")
    if len(data) > max_bytes:
        raise UploadError(
            f"the file is {len(data):,} bytes, above the limit of {max_bytes:,} bytes; "
            "upload a smaller file or raise the size limit"
        )
    text = _decode(data)
    if not text.strip():
        raise UploadError("the file is empty (no text besides whitespace); upload JSONL pairs or plain text")

    chosen = detect_format(text) if upload_format == "auto" else upload_format
    if chosen == "jsonl":
        pairs = parse_jsonl(text)
        if len(pairs) < MIN_JSONL_EXAMPLES:
            raise UploadError(
                f"too few examples: found {len(pairs)}, need at least {MIN_JSONL_EXAMPLES} "
                "(a tenth is held out for validation); add more lines"
            )
        random.Random(seed).shuffle(pairs)
        n_val = max(1, round(len(pairs) * UPLOAD_VAL_FRACTION))
        return ParsedUpload("jsonl", train_pairs=tuple(pairs[n_val:]), val_pairs=tuple(pairs[:n_val]))

    cut = int(len(text) * (1.0 - UPLOAD_VAL_FRACTION))
    return ParsedUpload("text", train_text=text[:cut], val_text=text[cut:])
