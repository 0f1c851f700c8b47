"""Adapters on real transformers models built from tiny configs (no download): GPT-2's
Conv1D and Llama's nn.Linear, checked by hand and against PEFT's LoRA."""

import copy

import pytest
import torch

from nora_core import AdapterConfig, AdapterLayer, adapter_parameters, inject_adapters

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

# Logits of these tiny float32 models agree to ~1e-6 across implementations that sum in
# a different order; 1e-5 leaves a margin without hiding a wrong scale or transpose.
ATOL = 1e-5


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=97, n_positions=64)
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                                      max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def fill_adapters(model, seed=3):
    """Give every lora_* parameter (ours or PEFT's) random non-zero values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" not in name:
                continue
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


@pytest.mark.parametrize(("build", "target"), [(tiny_gpt2, "c_attn"), (tiny_llama, "q_proj")])
@pytest.mark.parametrize("method", ["lora", "nora"])
def test_layer_matches_hand_written(build, target, method):
    model = inject_adapters(build(), AdapterConfig(method=method, r=4, lora_alpha=12,
                                                   target_modules=[target]))
    fill_adapters(model)
    layer = next(m for m in model.modules() if isinstance(m, AdapterLayer))
    x = torch.randn(2, 5, layer.d_in)
    base = layer.base_layer
    if layer.fan_in_fan_out:
        w0x = x @ base.weight + base.bias  # Conv1D stores W0 as (d_in, d_out)
    else:
        w0x = x @ base.weight.T
    act = torch.nn.functional.silu if method == "nora" else (lambda t: t)
    expected = w0x + 3.0 * act(x @ layer.lora_A.weight.T) @ layer.lora_B.weight.T
    torch.testing.assert_close(layer(x), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_logits_unchanged_at_init(build):
    model = build()
    ids = torch.randint(0, 97, (2, 9))
    before = model(ids).logits
    inject_adapters(model, AdapterConfig(method="nora", r=4))
    torch.testing.assert_close(model(ids).logits, before, atol=0.0, rtol=0.0)


@pytest.mark.parametrize(("build", "targets"), [(tiny_gpt2, ["c_attn", "c_fc"]),
                                                (tiny_llama, ["q_proj", "v_proj", "down_proj"])])
@pytest.mark.parametrize("scaling", ["alpha_over_r", "alpha_over_sqrt_r"])
def test_lora_matches_peft(build, targets, scaling):
    base = build()
    rslora = scaling == "alpha_over_sqrt_r"
    peft_config = peft.LoraConfig(r=4, lora_alpha=10, target_modules=targets, lora_dropout=0.0,
                                  use_rslora=rslora, fan_in_fan_out=build is tiny_gpt2)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_config).eval()
    ours = inject_adapters(copy.deepcopy(base), AdapterConfig(method="lora", r=4, lora_alpha=10,
                                                              scaling=scaling,
                                                              target_modules=targets)).eval()
    fill_adapters(theirs)
    ours_state = ours.state_dict()
    copied = 0
    for key, value in theirs.state_dict().items():
        if "lora_" not in key:
            continue
        ours_key = key.removeprefix("base_model.model.").replace(".default", "")
        ours_state[ours_key].copy_(value)
        copied += 1
    assert copied == len(adapter_parameters(ours)) > 0
    ids = torch.randint(0, 97, (2, 11))
    torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=ATOL, rtol=0)
    # The adapters must move the logits well beyond the tolerance, or the parity is vacuous.
    assert (ours(ids).logits - base(ids).logits).abs().max() > 10 * ATOL
