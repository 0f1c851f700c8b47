"""Tests of model loading, target presets, LM tasks and generation on real tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaForCausalLM,
                          T5Config)

from nora_core.lm.batches import IGNORE_INDEX, mean_loss, window_batch
from nora_core.lm.corpus import TRAGEDIES, load_play_splits, tiled_windows
from nora_core.lm.generation import generate
from nora_core.lm.models import BUNDLED_MODEL, ModelLoadError, load_base_model, tiny_llama_config
from nora_core.lm.targets import module_names_for_targets, resolve_target_modules, target_suffixes
from nora_core.lm.tasks import LMTask, LMTaskConfig, cached_base_model
from nora_core.lm.tokenizer import BYTE_VOCAB_SIZE, load_byte_tokenizer
from nora_core.lm.upload import UploadError


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                              intermediate_size=64, max_position_embeddings=64))


def _tiny_gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=BYTE_VOCAB_SIZE, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                      bos_token_id=1, eos_token_id=1))


def _tiny_neox():
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=BYTE_VOCAB_SIZE, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64))


@pytest.fixture
def gpt2_folder(tmp_path):
    """A saved tiny GPT-2 with a byte tokenizer that, like GPT-2's, has no pad token."""
    _tiny_gpt2().save_pretrained(tmp_path)
    tokenizer = load_byte_tokenizer(model_max_length=128)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    return tmp_path


def test_bundled_model_loads_offline(offline):
    model, tokenizer = load_base_model(BUNDLED_MODEL)

    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.config.vocab_size == BYTE_VOCAB_SIZE
    assert len(tokenizer) == BYTE_VOCAB_SIZE
    assert tokenizer.pad_token_id == 0
    assert tokenizer.eos_token_id == 1


def test_bundled_model_beats_uniform(offline):
    model, tokenizer = cached_base_model(BUNDLED_MODEL)
    _, val_text = load_play_splits(TRAGEDIES)
    segments = [torch.tensor(tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"]) for t in val_text]
    windows = tiled_windows(segments, window=128, max_windows=12)

    loss = mean_loss(model, [window_batch(windows)])
    assert loss < math.log(BYTE_VOCAB_SIZE)  # ln 259 is the loss of a uniform guess over bytes


def test_unknown_hub_id_fails_fast(offline):
    with pytest.raises(ModelLoadError) as caught:
        load_base_model("no-such-org/no-such-model-xyz")
    message = str(caught.value)
    assert "'no-such-org/no-such-model-xyz'" in message
    assert "offline" in message
    assert BUNDLED_MODEL in message


def test_folder_without_config_rejected(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_base_model(str(tmp_path))


def test_non_causal_model_rejected(tmp_path, offline):
    T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=BYTE_VOCAB_SIZE).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_base_model(str(tmp_path))


def test_gpt2_folder_pad_set_to_eos(gpt2_folder, offline):
    model, tokenizer = load_base_model(str(gpt2_folder))
    assert model.config.model_type == "gpt2"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 1
    text = generate(model, tokenizer, "ab", max_new_tokens=5, stop_at_eos=False)
    assert len(text.encode("utf-8")) <= 5  # at most 5 byte tokens, fewer if some are special


def test_task_keeps_eos_label_when_pad_equals_eos(gpt2_folder, offline):
    task = LMTask(LMTaskConfig(task="arithmetic", model_name=str(gpt2_folder), n_train=64, n_val=16, seq_len=64))
    batch = task.sample_batch(torch.Generator().manual_seed(0), 16)
    eos = task.tokenizer.eos_token_id

    for row in range(16):
        real = int(batch["attention_mask"][row].sum())
        assert batch["labels"][row, real - 1].item() == eos  # the example's own end-of-sequence label
        assert (batch["labels"][row, real:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == eos).all()  # padding uses the eos id
    assert torch.isfinite(task.loss(task.base_model(), batch))


ATTN_QV = {"self_attn.q_proj", "self_attn.v_proj"}
ATTN_ALL = ATTN_QV | {"self_attn.k_proj", "self_attn.o_proj"}
PRESET_CASES = [
    (_tiny_llama, "attention_qv", ATTN_QV, 4),
    (_tiny_llama, "attention_all", ATTN_ALL, 8),
    (_tiny_llama, "all_linear", ATTN_ALL | {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}, 14),
    (_tiny_gpt2, "attention_qv", {"attn.c_attn"}, 2),
    (_tiny_gpt2, "attention_all", {"attn.c_attn", "attn.c_proj"}, 4),
    (_tiny_gpt2, "all_linear", {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}, 8),
    (_tiny_neox, "attention_qv", {"attention.query_key_value"}, 2),
    (_tiny_neox, "attention_all", {"attention.query_key_value", "attention.dense"}, 4),
    (_tiny_neox, "all_linear", {"attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h",
                                "mlp.dense_4h_to_h"}, 8),
]


@pytest.mark.parametrize("build,preset,expected,count", PRESET_CASES)
def test_target_presets_resolve(build, preset, expected, count):
    model = build()
    names = resolve_target_modules(model, preset)
    suffixes = target_suffixes(model, preset)

    assert len(names) == count
    assert {".".join(n.split(".")[-2:]) for n in names} == expected
    assert all(any(n == s or n.endswith("." + s) for s in suffixes) for n in names)
    assert not any(n.endswith("lm_head") for n in module_names_for_targets(model))


def test_target_list_unknown_name_lists_valid():
    with pytest.raises(ValueError) as caught:
        resolve_target_modules(_tiny_llama(), ["q_proj", "query"])
    assert "'query'" in str(caught.value)
    assert "v_proj" in str(caught.value)


def test_target_list_suffix_match():
    names = resolve_target_modules(_tiny_gpt2(), ["mlp.c_proj"])
    assert names == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]


def test_cached_base_unchanged_after_training(offline):
    task = LMTask(LMTaskConfig(task="reverse", n_train=64, n_val=8))
    cached, _ = cached_base_model(BUNDLED_MODEL)
    before = {k: v.clone() for k, v in cached.state_dict().items()}

    model = task.base_model()
    assert model.training
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    task.loss(model, task.sample_batch(torch.Generator().manual_seed(0), 8)).backward()
    optimizer.step()

    after = cached.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in cached.parameters())


def test_task_batches_reproducible(offline):
    task = LMTask(LMTaskConfig(task="sort", n_train=64, n_val=20, eval_batch_size=8, spectrum_examples=4))
    first = task.sample_batch(torch.Generator().manual_seed(5), 6)
    second = task.sample_batch(torch.Generator().manual_seed(5), 6)

    assert all(torch.equal(first[k], second[k]) for k in first)
    assert [len(b["input_ids"]) for b in task.validation_batches()] == [8, 8, 4]
    assert task.spectrum_batch()["input_ids"].shape[0] == 4
    assert task.floor(4) is None
    assert task.floor(None) is None
    assert task.kind == "lm"


def test_style_shift_windows(offline):
    task = LMTask(LMTaskConfig(task="style_shift", seq_len=64, n_val=10, eval_batch_size=4))
    batch = task.sample_batch(torch.Generator().manual_seed(0), 3)

    assert batch["input_ids"].shape == (3, 64)
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert sum(len(b["input_ids"]) for b in task.validation_batches()) == 10


def test_upload_text_too_short(offline):
    with pytest.raises(UploadError, match="too short for seq_len=128"):
        LMTask(LMTaskConfig(task="upload", seq_len=128), upload_data=b"To be or not to be.\n" * 20)


def test_upload_missing_data(offline):
    with pytest.raises(UploadError, match="needs a file"):
        LMTask(LMTaskConfig(task="upload"))


def test_upload_jsonl_task(offline):
    lines = [f'{{"prompt": "Q{i}: ", "response": "A{i}"}}' for i in range(10)]
    task = LMTask(LMTaskConfig(task="upload"), upload_data="\n".join(lines).encode("utf-8"))
    batch = task.validation_batches()[0]

    assert len(batch["input_ids"]) == 1
    assert batch["labels"][0, :4].tolist() == [IGNORE_INDEX] * 4  # "Qi: " is prompt


def test_seq_len_above_positions(gpt2_folder, offline):
    with pytest.raises(ValueError, match="seq_len must be at most 128"):
        LMTask(LMTaskConfig(task="reverse", model_name=str(gpt2_folder), seq_len=256))


def test_generate_greedy_and_seeded(offline):
    model, tokenizer = cached_base_model(BUNDLED_MODEL)
    greedy = generate(model, tokenizer, "Ham.\n", max_new_tokens=20)
    sampled = [generate(model, tokenizer, "Ham.\n", max_new_tokens=20, temperature=1.0, seed=s) for s in (1, 1, 2)]

    assert greedy == generate(model, tokenizer, "Ham.\n", max_new_tokens=20)
    assert isinstance(greedy, str) and greedy
    assert sampled[0] == sampled[1]
    assert sampled[0] != sampled[2]  # 20 sampled bytes from two seeds almost never coincide
    assert not model.training
