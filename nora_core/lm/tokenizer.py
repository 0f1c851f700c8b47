"""Byte-level tokenizer for the bundled language model.

The tokenizer is `transformers.ByT5Tokenizer` without sentinel tokens: ids 0, 1 and 2 are
`<pad>`, `</s>` (end of sequence) and `<unk>`, and byte b has id b + 3, so the vocabulary
has 259 ids. It needs no vocabulary file, so it works offline, and it round-trips any
UTF-8 text, including non-ASCII characters, byte for byte.
"""

from __future__ import annotations

from transformers import ByT5Tokenizer

PAD_TOKEN_ID = 0
EOS_TOKEN_ID = 1
UNK_TOKEN_ID = 2
BYTE_OFFSET = 3
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET  # 259


def load_byte_tokenizer(model_max_length: int = 512, pad_to_eos: bool = False) -> ByT5Tokenizer:
    """Build the byte tokenizer (no download, no files read).

    Args:
        model_max_length: maximum sequence length the model accepts, stored in the tokenizer config.
        pad_to_eos: use `</s>` as the pad token too, as GPT-2 setups do. Tests use it to
            check that padding never masks a real end-of-sequence label.
    """
    if pad_to_eos:
        return ByT5Tokenizer(extra_ids=0, pad_token="</s>", model_max_length=model_max_length)
    return ByT5Tokenizer(extra_ids=0, model_max_length=model_max_length)
