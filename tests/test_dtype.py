"""Adapters on a bfloat16 base model: created in the base dtype, float32 adapters mixed in,
one training step on the CPU, and the train CLI with --dtype bfloat16."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from nora_core import AdapterConfig, adapter_parameters, inject_adapters
from nora_core.__main__ import main
from nora_core.adapters import adapter_layers
from nora_core.device import autocast, autocast_dtype
from nora_core.io import load_adapter, save_adapter
from nora_core.lm.batches import causal_lm_loss
from nora_core.lm.models import tiny_llama_config
from nora_core.lm.tokenizer import load_byte_tokenizer

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "lora": AdapterConfig(method="lora", r=4, lora_dropout=0.1),
    "nora": AdapterConfig(method="nora", r=4, lora_dropout=0.1),
    "glu": AdapterConfig(method="nora", r=4, glu_gate=True),
}


def bf16_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                                      max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).to(torch.bfloat16)


def token_batch():
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def test_adapters_take_base_dtype():
    model = inject_adapters(bf16_llama(), CONFIGS["glu"])
    layers = list(adapter_layers(model))
    assert layers
    for layer in layers:
        assert layer.lora_A.weight.dtype == layer.base_layer.weight.dtype == torch.bfloat16
        assert layer.lora_A.weight.device == layer.base_layer.weight.device


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("adapter_dtype", [torch.bfloat16, torch.float32])
def test_bf16_base_trains_step(name, adapter_dtype):
    model = inject_adapters(bf16_llama(), CONFIGS[name]).train()
    for layer in adapter_layers(model):
        for factor in (layer.lora_A, layer.lora_B, layer.lora_G):
            if factor is not None:
                factor.to(adapter_dtype)
    optimizer = torch.optim.AdamW(adapter_parameters(model), lr=1e-2)
    batch = token_batch()

    for _ in range(2):  # step 1 moves only lora_B (lora_B = 0 gives lora_A no gradient)
        loss = causal_lm_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    assert torch.isfinite(loss)
    assert all(p.dtype == adapter_dtype for p in adapter_parameters(model))
    assert all(torch.isfinite(p.grad).all() for p in adapter_parameters(model))
    assert any(layer.lora_B.weight.abs().sum() > 0 for layer in adapter_layers(model))
    assert model(batch["input_ids"]).logits.dtype == torch.bfloat16


def test_fp32_adapter_loads_into_bf16_base(tmp_path):
    config = CONFIGS["nora"]
    source = inject_adapters(bf16_llama().float(), config)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in adapter_parameters(source):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    save_adapter(source, config, tmp_path)

    loaded = load_adapter(bf16_llama(), tmp_path)

    stored = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert all(param.dtype == torch.bfloat16 for param in adapter_parameters(loaded))
    for layer in adapter_layers(loaded):
        expected = stored[f"{layer.name}.lora_A.weight"].to(torch.bfloat16)
        assert torch.equal(layer.lora_A.weight, expected)


def test_cpu_autocast_is_float32():
    device = torch.device("cpu")
    assert autocast_dtype(device) is None
    with autocast(device):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_cli_bf16_base_step(tmp_path):
    folder = tmp_path / "tiny-llama"
    torch.manual_seed(0)
    config = tiny_llama_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=172)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    load_byte_tokenizer().save_pretrained(folder)
    data = tmp_path / "notes.txt"
    data.write_text("To be, or not to be, that is the question. " * 40, encoding="utf-8")
    out = tmp_path / "out"

    status = main(["train", "--model", str(folder), "--data", str(data), "--dtype", "bfloat16",
                   "--device", "cpu", "--seq-len", "32", "--batch-size", "2", "--max-steps", "2",
                   "--method", "nora", "--out", str(out)])

    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_loss"] is not None
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    # Adapters keep float32 master weights on a bfloat16 base.
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}
    assert any(tensor.abs().sum() > 0 for key, tensor in saved.items() if key.endswith("lora_B.weight"))
