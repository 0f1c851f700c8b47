"""Saving, loading and PEFT export of adapters on tiny transformers models (no download)."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from nora_core import AdapterConfig, adapter_parameters, inject_adapters
from nora_core.io import (CONFIG_NAME, WEIGHTS_NAME, AdapterLoadError, PeftExportError,
                          adapter_state_dict, export_peft, load_adapter, read_adapter_config,
                          save_adapter)

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

# PEFT and NoRA Lab sum the same float32 terms in a different order, which moves logits of
# these tiny models by ~1e-6; 1e-5 leaves a margin and still catches a wrong scale.
PEFT_ATOL = 1e-5


def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                                      max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=97, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def trained_like(model, seed=5):
    """Give every adapter factor random values, as after training (lora_B is no longer 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter_parameters(model):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model


def logits(model, seed=1):
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


CONFIGS = {
    "lora": AdapterConfig(method="lora", r=4, lora_alpha=12, target_modules=("q_proj", "v_proj")),
    "nora": AdapterConfig(method="nora", r=4, lora_dropout=0.1),
    "glu": AdapterConfig(method="nora", r=2, glu_gate=True, activation="gelu",
                         target_modules="model\\.layers\\.\\d\\.mlp\\.(up|down)_proj"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip_exact(tmp_path, name):
    base = tiny_llama()
    config = CONFIGS[name]
    model = trained_like(inject_adapters(copy.deepcopy(base), config)).eval()
    save_adapter(model, config, tmp_path, base_model_name="tiny-llama")

    loaded = load_adapter(copy.deepcopy(base), tmp_path, trainable=False)

    # Same tensors, same float32 operations: the outputs must agree bit for bit.
    torch.testing.assert_close(logits(loaded), logits(model), atol=0.0, rtol=0.0)
    stored_config, base_name = read_adapter_config(tmp_path)
    assert stored_config == config
    assert base_name == "tiny-llama"


def test_saved_file_holds_only_adapters(tmp_path):
    config = CONFIGS["glu"]
    model = inject_adapters(tiny_llama(), config)
    save_adapter(model, config, tmp_path)
    keys = load_file(str(tmp_path / WEIGHTS_NAME)).keys()
    assert keys
    assert all(k.endswith(("lora_A.weight", "lora_B.weight", "lora_G.weight")) for k in keys)
    assert len(keys) == len(adapter_parameters(model))
    record = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert record["format"] == "nora-lab-adapter"
    assert record["glu_gate"] is True


@pytest.mark.parametrize("trainable", [True, False])
def test_load_trainable_flag(tmp_path, trainable):
    config = CONFIGS["lora"]
    save_adapter(inject_adapters(tiny_llama(), config), config, tmp_path)
    loaded = load_adapter(tiny_llama(), tmp_path, trainable=trainable)
    params = adapter_parameters(loaded)
    assert params
    assert all(p.requires_grad == trainable for p in params)
    assert not any(p.requires_grad for n, p in loaded.named_parameters() if "lora_" not in n)


def rewrite_weights(folder, edit):
    path = folder / WEIGHTS_NAME
    tensors = dict(load_file(str(path)))
    edit(tensors)
    save_file(tensors, str(path))


def drop_one(tensors):
    del tensors["model.layers.1.self_attn.v_proj.lora_B.weight"]


def add_one(tensors):
    tensors["model.layers.0.mlp.up_proj.lora_A.weight"] = torch.zeros(4, 32)


def reshape_one(tensors):
    tensors["model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(3, 32)


@pytest.mark.parametrize(("edit", "expected"), [
    (drop_one, "missing keys: model.layers.1.self_attn.v_proj.lora_B.weight"),
    (add_one, "unexpected keys: model.layers.0.mlp.up_proj.lora_A.weight"),
    (reshape_one, "shape mismatch: model.layers.0.self_attn.q_proj.lora_A.weight: file (3, 32), "
                  "model (4, 32)"),
])
def test_load_key_mismatch_raises(tmp_path, edit, expected):
    config = CONFIGS["lora"]
    save_adapter(inject_adapters(tiny_llama(), config), config, tmp_path)
    rewrite_weights(tmp_path, edit)
    with pytest.raises(AdapterLoadError) as error:
        load_adapter(tiny_llama(), tmp_path)
    assert expected in str(error.value)


def test_load_other_base_raises(tmp_path):
    config = CONFIGS["lora"]
    save_adapter(inject_adapters(tiny_llama(), config), config, tmp_path)
    with pytest.raises(AdapterLoadError, match="matched no Linear or Conv1D layer"):
        load_adapter(tiny_gpt2(), tmp_path)


def test_load_missing_folder_raises(tmp_path):
    with pytest.raises(AdapterLoadError, match="no adapter_config.json"):
        load_adapter(tiny_llama(), tmp_path / "absent")


def test_load_peft_folder_raises(tmp_path):
    config = CONFIGS["lora"]
    export_peft(inject_adapters(tiny_llama(), config), config, tmp_path, "tiny-llama")
    with pytest.raises(AdapterLoadError, match="PeftModel.from_pretrained"):
        load_adapter(tiny_llama(), tmp_path)


def test_save_wrong_config_raises(tmp_path):
    model = inject_adapters(tiny_llama(), CONFIGS["lora"])
    with pytest.raises(ValueError, match="differs from the config"):
        save_adapter(model, CONFIGS["nora"], tmp_path)


PEFT_CASES = [
    # (base, targets, scaling): lora_alpha=12 != r=4 in every case, so a lost scale shows.
    (tiny_llama, ("q_proj", "v_proj", "down_proj"), "alpha_over_r"),
    (tiny_llama, None, "alpha_over_sqrt_r"),
    (tiny_gpt2, ("c_attn", "mlp.c_proj"), "alpha_over_r"),
    (tiny_gpt2, None, "alpha_over_sqrt_r"),
]


@pytest.mark.parametrize(("build", "targets", "scaling"), PEFT_CASES)
def test_peft_export_same_outputs(tmp_path, build, targets, scaling):
    base = build()
    config = AdapterConfig(method="lora", r=4, lora_alpha=12, scaling=scaling, target_modules=targets)
    ours = trained_like(inject_adapters(copy.deepcopy(base), config)).eval()
    export_peft(ours, config, tmp_path, base_model_name="tiny")

    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()

    torch.testing.assert_close(logits(theirs), logits(ours), atol=PEFT_ATOL, rtol=0)
    # The adapters must move the logits well beyond the tolerance, or the parity is vacuous.
    assert (logits(ours) - logits(base)).abs().max() > 100 * PEFT_ATOL
    record = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert record["fan_in_fan_out"] == (build is tiny_gpt2)
    assert record["base_model_name_or_path"] == "tiny"


def test_peft_export_identity_nora(tmp_path):
    # NoRA with the identity activation is a linear map, so PEFT can represent it.
    base = tiny_llama()
    config = AdapterConfig(method="nora", r=4, activation="identity", lora_alpha=8)
    ours = trained_like(inject_adapters(copy.deepcopy(base), config)).eval()
    export_peft(ours, config, tmp_path, base_model_name=None)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    torch.testing.assert_close(logits(theirs), logits(ours), atol=PEFT_ATOL, rtol=0)


@pytest.mark.parametrize("name", ["nora", "glu"])
def test_peft_export_nonlinear_raises(tmp_path, name):
    config = CONFIGS[name]
    model = inject_adapters(tiny_llama(), config)
    with pytest.raises(PeftExportError, match="PEFT's LoRA computes"):
        export_peft(model, config, tmp_path, base_model_name=None)
    assert not (tmp_path / WEIGHTS_NAME).exists()


def test_state_dict_cpu_copies():
    model = trained_like(inject_adapters(tiny_llama(), CONFIGS["lora"]))
    state = adapter_state_dict(model)
    state["model.layers.0.self_attn.q_proj.lora_A.weight"].zero_()
    assert model.model.layers[0].self_attn.q_proj.lora_A.weight.abs().sum() > 0
