"""Adapter layers on tiny models: initialisation, training, dropout, merging, equivalences."""

import copy

import pytest
import torch
from torch import nn

from nora_core import (AdapterConfig, AdapterLayer, MergeError, adapter_parameters,
                       inject_adapters, merge_adapters, unmerge_adapters)
from nora_core.adapters import reset_adapters

# float32 matmuls of width ≤ 64 agree to about 1e-6 relative. Merged and unmerged paths
# sum in different orders, and three stacked layers amplify that to about 2e-5 relative.
ATOL = 1e-5
RTOL = 1e-4


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 6))


def randomise_b(model: nn.Module, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter_parameters(model):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


@pytest.mark.parametrize("method", ["lora", "nora"])
def test_output_unchanged_at_init(method):
    model = tiny_mlp()
    x = torch.randn(16, 12)
    before = model(x)
    inject_adapters(model, AdapterConfig(method=method, r=4))
    for layer in model.modules():
        if isinstance(layer, AdapterLayer):
            assert torch.count_nonzero(layer.lora_B.weight) == 0
            assert torch.count_nonzero(layer.lora_A.weight) > 0
    torch.testing.assert_close(model(x), before, atol=0.0, rtol=0.0)


def test_state_dict_names_and_shapes():
    model = inject_adapters(tiny_mlp(), AdapterConfig(method="nora", r=3))
    state = model.state_dict()
    assert state["0.lora_A.weight"].shape == (3, 12)  # r × d_in
    assert state["0.lora_B.weight"].shape == (32, 3)  # d_out × r
    assert "0.base_layer.weight" in state
    assert sum(k.endswith("lora_A.weight") for k in state) == 3


@pytest.mark.parametrize("method", ["lora", "nora"])
def test_training_changes_only_adapters(method):
    model = inject_adapters(tiny_mlp(), AdapterConfig(method=method, r=4))
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    x, target = torch.randn(64, 12), torch.randn(64, 6)
    before = model(x).detach()
    optimizer = torch.optim.Adam(adapter_parameters(model), lr=1e-2)
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), target).backward()
        optimizer.step()
    assert not torch.allclose(model(x), before)
    for key, value in model.state_dict().items():
        if key in frozen:
            assert torch.equal(value, frozen[key]), key
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in adapter_parameters(model)}


def test_first_step_moves_b_only():
    model = inject_adapters(tiny_mlp(), AdapterConfig(method="nora", r=4))
    x, target = torch.randn(32, 12), torch.randn(32, 6)
    nn.functional.mse_loss(model(x), target).backward()
    layer = model[4]
    assert torch.count_nonzero(layer.lora_A.weight.grad) == 0  # B = 0 blocks A's gradient
    assert torch.count_nonzero(layer.lora_B.weight.grad) > 0


@pytest.mark.parametrize("position", ["input", "rank"])
@pytest.mark.parametrize("method", ["lora", "nora"])
def test_dropout_active_in_train_only(method, position):
    model = inject_adapters(tiny_mlp(), AdapterConfig(method=method, r=4, lora_dropout=0.5,
                                                      dropout_position=position))
    randomise_b(model)
    x = torch.randn(8, 12)
    model.train()
    first, second = model(x), model(x)
    assert not torch.allclose(first, second)
    model.eval()
    torch.testing.assert_close(model(x), model(x), atol=0.0, rtol=0.0)


def test_dropout_position_changes_where_masks_act():
    layer_in = AdapterLayer(nn.Linear(6, 6), AdapterConfig(method="nora", r=2, lora_dropout=0.9,
                                                           dropout_position="input"))
    layer_rank = AdapterLayer(nn.Linear(6, 6), AdapterConfig(method="nora", r=2, lora_dropout=0.9,
                                                             dropout_position="rank"))
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen[name] = args[0].shape
        return hook

    for name, layer in (("input", layer_in), ("rank", layer_rank)):
        layer.train()
        layer.lora_dropout.register_forward_hook(record(name))
        layer.adapter_delta(torch.randn(4, 6))
    assert seen["input"] == (4, 6)  # the d_in-wide input
    assert seen["rank"] == (4, 2)  # the r-wide activation


def test_identity_nora_equals_lora():
    lora = inject_adapters(tiny_mlp(), AdapterConfig(method="lora", r=4, lora_alpha=8))
    nora = inject_adapters(tiny_mlp(), AdapterConfig(method="nora", r=4, lora_alpha=8,
                                                     activation="identity"))
    randomise_b(lora)
    nora.load_state_dict(lora.state_dict())
    x = torch.randn(20, 12)
    torch.testing.assert_close(nora(x), lora(x), atol=0.0, rtol=0.0)


def test_silu_nora_differs_from_lora():
    lora = inject_adapters(tiny_mlp(), AdapterConfig(method="lora", r=4))
    nora = inject_adapters(tiny_mlp(), AdapterConfig(method="nora", r=4))
    randomise_b(lora)
    nora.load_state_dict(lora.state_dict())
    x = torch.randn(20, 12)
    assert (nora(x) - lora(x)).abs().max() > 1e-3


def test_hand_written_forward():
    base = nn.Linear(10, 7)
    config = AdapterConfig(method="nora", r=3, lora_alpha=6, activation="tanh")
    layer = AdapterLayer(copy.deepcopy(base), config)
    randomise_b(layer)
    x = torch.randn(5, 10)
    a, b = layer.lora_A.weight, layer.lora_B.weight
    expected = base(x) + 2.0 * torch.tanh(x @ a.T) @ b.T
    torch.testing.assert_close(layer(x), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("scaling", ["alpha_over_r", "alpha_over_sqrt_r"])
def test_merge_equals_unmerged(scaling):
    model = inject_adapters(tiny_mlp(), AdapterConfig(method="lora", r=4, lora_alpha=16,
                                                      scaling=scaling))
    randomise_b(model)
    model.eval()
    x = torch.randn(16, 12)
    unmerged = model(x)
    merge_adapters(model)
    torch.testing.assert_close(model(x), unmerged, atol=ATOL, rtol=RTOL)
    unmerge_adapters(model)
    torch.testing.assert_close(model(x), unmerged, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("kwargs", [{"method": "nora"}, {"method": "lora", "glu_gate": True}])
def test_merge_refused_for_nonlinear(kwargs):
    model = inject_adapters(tiny_mlp(), AdapterConfig(r=4, **kwargs))
    randomise_b(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MergeError, match="not a linear map"):
        merge_adapters(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_no_match_lists_candidates():
    with pytest.raises(ValueError) as error:
        inject_adapters(tiny_mlp(), AdapterConfig(r=2, target_modules=["q_proj"]))
    message = str(error.value)
    assert "q_proj" in message
    assert "0, 2, 4" in message


def test_rank_above_width_rejected():
    with pytest.raises(ValueError, match=r"min\(d_in, d_out\) = 6"):
        inject_adapters(tiny_mlp(), AdapterConfig(r=8))


def test_regex_targets():
    model = inject_adapters(tiny_mlp(), AdapterConfig(r=2, target_modules=r"[24]"))
    assert isinstance(model[2], AdapterLayer)
    assert isinstance(model[4], AdapterLayer)
    assert isinstance(model[0], nn.Linear)


def test_reset_adapters_reproducible():
    first = inject_adapters(tiny_mlp(), AdapterConfig(method="lora", r=4))
    second = inject_adapters(tiny_mlp(), AdapterConfig(method="nora", r=4))
    reset_adapters(first, seed=7)
    reset_adapters(second, seed=7)
    torch.testing.assert_close(first[0].lora_A.weight, second[0].lora_A.weight, atol=0.0, rtol=0.0)


def test_bf16_base_with_fp32_adapter():
    base = nn.Linear(16, 16).to(torch.bfloat16)
    layer = AdapterLayer(base, AdapterConfig(method="nora", r=4))
    layer.lora_A.float()
    layer.lora_B.float()
    out = layer(torch.randn(3, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert layer.lora_B.weight.grad is not None
