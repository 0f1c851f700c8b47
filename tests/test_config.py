"""AdapterConfig and TrainConfig validation: each bad value raises and names itself."""

import math

import pytest

from nora_core import AdapterConfig
from nora_core.fields import field_specs
from nora_core.trainer import TrainConfig


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"method": "dora"}, "method"),
        ({"r": 0}, "r"),
        ({"r": -3}, "r"),
        ({"r": 2.5}, "r"),
        ({"r": True}, "r"),
        ({"lora_alpha": -1.0}, "lora_alpha"),
        ({"lora_alpha": math.nan}, "lora_alpha"),
        ({"scaling": "alpha"}, "scaling"),
        ({"activation": "softmax"}, "activation"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"lora_dropout": -0.1}, "lora_dropout"),
        ({"dropout_position": "output"}, "dropout_position"),
        ({"target_modules": "q_proj["}, "target_modules"),
        ({"target_modules": ["q_proj", ""]}, "target_modules"),
        ({"glu_gate": "yes"}, "glu_gate"),
    ],
)
def test_adapter_config_rejects(kwargs, named):
    with pytest.raises(ValueError) as error:
        AdapterConfig(**kwargs)
    assert named in str(error.value)
    # The message shows the offending value so the user can find it.
    shown = kwargs[named]
    if isinstance(shown, (list, tuple)):
        return
    assert repr(shown) in str(error.value) or str(shown) in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"lr": math.inf}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"device": "tpu"}, "device"),
        ({"grad_clip": -1.0}, "grad_clip"),
    ],
)
def test_train_config_rejects(kwargs, named):
    with pytest.raises(ValueError, match=named):
        TrainConfig(**kwargs)


def test_method_defaults():
    lora = AdapterConfig(method="lora", r=8)
    nora = AdapterConfig(method="nora", r=8)
    assert (lora.activation, lora.dropout_position) == ("identity", "input")
    assert (nora.activation, nora.dropout_position) == ("silu", "rank")
    assert lora.lora_alpha == 8.0
    assert lora.scale == 1.0


def test_scale_modes():
    assert AdapterConfig(r=16, lora_alpha=32).scale == pytest.approx(2.0)
    assert AdapterConfig(r=16, lora_alpha=32, scaling="alpha_over_sqrt_r").scale == pytest.approx(8.0)


def test_target_modules_forms():
    assert AdapterConfig(target_modules="q_proj, v_proj").target_modules == ("q_proj", "v_proj")
    assert AdapterConfig(target_modules=["c_attn"]).target_modules == ("c_attn",)
    assert AdapterConfig(target_modules=r".*\.(q|v)_proj").target_modules == r".*\.(q|v)_proj"
    assert AdapterConfig(target_modules="").target_modules is None


def test_field_specs_cover_widgets():
    specs = {s.name: s for s in field_specs(AdapterConfig)}
    assert specs["activation"].choices == ("identity", "silu", "gelu", "relu", "tanh")
    assert specs["activation"].optional
    assert specs["r"].kind == "int"
    assert specs["r"].minimum == 1
    assert specs["lora_dropout"].kind == "float"
    assert specs["glu_gate"].kind == "bool"
