"""Text generation for side-by-side samples: greedy by default, seeded sampling otherwise."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 0.0,
    seed: int = 0,
    stop_at_eos: bool = True,
) -> str:
    """Continue `prompt` and return only the generated text (special tokens removed).

    Args:
        model: a causal LM; it runs in eval mode and its mode is restored afterwards.
        tokenizer: the model's tokenizer.
        prompt: text to continue; may be empty.
        max_new_tokens: maximum number of tokens to generate, at least 1.
        temperature: 0 picks the most likely token (greedy); above 0 samples from the
            softmax of logits / temperature.
        seed: seed of the sampling generator, so the same call gives the same text.
        stop_at_eos: stop at the end-of-sequence token.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be 0 (greedy) or positive, got {temperature}")

    device = next(model.parameters()).device
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        # An empty prompt starts after an end-of-sequence token, like a new document.
        ids = [tokenizer.eos_token_id]
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_positions is None:
        max_positions = getattr(getattr(model, "config", None), "n_positions", None)
    if max_positions is not None:
        # Keep the end of a long prompt so prompt and continuation fit the position table.
        # NOTE: with max_new_tokens >= max_positions the sequence still outgrows the table,
        # which GPT-2's learned positions reject; callers keep max_new_tokens small.
        ids = ids[-max(1, max_positions - max_new_tokens) :]

    generator = torch.Generator(device="cpu").manual_seed(seed)
    was_training = model.training
    model.eval()
    new_ids: list[int] = []
    try:
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
        output = model(input_ids=input_ids, use_cache=True)
        for _ in range(max_new_tokens):
            logits = output.logits[0, -1].float().cpu()  # (V,)
            if temperature == 0:
                next_id = int(torch.argmax(logits))
            else:
                probabilities = torch.softmax(logits / temperature, dim=-1)  # (V,)
                next_id = int(torch.multinomial(probabilities, 1, generator=generator))
            if stop_at_eos and next_id == tokenizer.eos_token_id:
                break
            new_ids.append(next_id)
            step_ids = torch.tensor([[next_id]], dtype=torch.long, device=device)  # (1, 1)
            # transformers 5 returns the key/value cache as "cache", 4.x as "past_key_values".
            cache_key = "cache" if "cache" in output else "past_key_values"
            output = model(input_ids=step_ids, use_cache=True, **{cache_key: output[cache_key]})
    finally:
        model.train(was_training)
    return tokenizer.decode(new_ids, skip_special_tokens=True)
