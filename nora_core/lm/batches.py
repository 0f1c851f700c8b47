"""Batch construction and the causal-LM loss shared by every language-model task.

A batch is {"input_ids", "attention_mask", "labels"}, LongTensors of shape (B, T).
`labels` is aligned with `input_ids`, as in Hugging Face models: position t contains the
token the model should predict after reading positions 0..t-1, and -100 marks a
position without a target. Padding is marked through the attention mask and the
example's own label list, never by comparing ids with pad_token_id, because GPT-2
style tokenizers use the end-of-sequence id as the pad id.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100

Batch = dict[str, torch.Tensor]


def window_batch(windows: torch.Tensor) -> Batch:
    """Turn (B, T) token windows into a batch that trains on every token."""
    return {
        "input_ids": windows,
        "attention_mask": torch.ones_like(windows),
        "labels": windows.clone(),
    }


def collate_examples(examples: list[tuple[list[int], list[int]]], pad_token_id: int) -> Batch:
    """Right-pad (input_ids, labels) pairs to the longest example.

    Args:
        examples: per example, token ids and labels of equal length (-100 where no loss).
        pad_token_id: id written into padded input positions; their labels are -100.
    """
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for row, (ids, example_labels) in enumerate(examples):
        if len(ids) != len(example_labels):
            raise ValueError(f"example {row}: {len(ids)} token ids but {len(example_labels)} labels")
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.tensor(example_labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def encode_prompt_response(
    tokenizer, prompt: str, response: str, max_length: int
) -> tuple[list[int], list[int]]:
    """Encode prompt + response + eos with loss on the response and the eos only.

    The sequence is cut at `max_length` tokens; the caller rejects examples whose prompt
    leaves no response token.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return ids, labels


def causal_lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Return the mean next-token cross-entropy over label positions that are not -100."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    shifted_logits = logits[:, :-1, :].float()  # (B, T-1, V)
    shifted_labels = batch["labels"][:, 1:]  # (B, T-1)
    if not bool((shifted_labels != IGNORE_INDEX).any()):
        raise ValueError("the batch has no label positions (every label is -100), so its loss is undefined")
    return F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[Batch]) -> float:
    """Return the label-weighted mean loss over several batches, in eval mode.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            n_labels = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += float(causal_lm_loss(model, batch)) * n_labels
            count += n_labels
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the validation batches have no label positions")
    return total / count
