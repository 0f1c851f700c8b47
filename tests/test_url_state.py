"""Shareable settings: controls read valid URL parameters, reject bad ones with a warning,
and write every value back, so a copied link reproduces the page."""

from __future__ import annotations

import math

import pytest

from app_helpers import start, step_count, texts, trainer
from nora_core.config import AdapterConfig
from nora_core.fields import field_specs
from nora_core.trainer import TrainConfig

from app.ui import url_state

SPECS = {spec.name: spec for spec in field_specs(AdapterConfig)}
TRAIN_SPECS = {spec.name: spec for spec in field_specs(TrainConfig)}


@pytest.mark.parametrize("value, text", [
    (None, ""), (True, "true"), (False, "false"), (0.003, "0.003"), (1e-05, "1e-05"),
    (16, "16"), ("silu", "silu"), (("q_proj", "v_proj"), "q_proj,v_proj"),
])
def test_encode_values(value, text):
    assert url_state.encode(value) == text


@pytest.mark.parametrize("spec, text, expected", [
    (TRAIN_SPECS["lr"], "0.003", 0.003),
    (TRAIN_SPECS["seed"], "42", 42),
    (SPECS["r"], "16", 16),
    (SPECS["lora_alpha"], "", None),
    (SPECS["lora_alpha"], "32", 32.0),
    (SPECS["activation"], "gelu", "gelu"),
    (SPECS["glu_gate"], "true", True),
])
def test_decode_valid(spec, text, expected):
    assert url_state.decode(spec, text) == expected


@pytest.mark.parametrize("spec, text, maximum, message", [
    (TRAIN_SPECS["lr"], "nan", None, "expected a finite number from 1e-06 to 10"),
    (TRAIN_SPECS["lr"], "-1", None, "expected a number from 1e-06 to 10"),
    (TRAIN_SPECS["lr"], "fast", None, "expected a number"),
    (SPECS["r"], "0", 64, "expected a number from 1 to 64"),
    (SPECS["r"], "128", 64, "expected a number from 1 to 64"),
    (SPECS["r"], "8.5", 64, "expected an integer"),
    (SPECS["lora_dropout"], "1", None, "from 0 to 0.95"),
    (SPECS["activation"], "swish", None, "expected one of empty, 'identity', 'silu'"),
    (SPECS["glu_gate"], "maybe", None, "expected true or false"),
])
def test_decode_rejects(spec, text, maximum, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        url_state.decode(spec, text, maximum=maximum)


def test_page_writes_every_control():
    app = start()
    params = app.query_params

    assert params["train.seed"] == "0"
    assert params["train.lr"] == "0.003"
    assert params["adapter.r"] == "8"
    assert params["adapter.lora_alpha"] == ""  # empty: lora_alpha = r
    assert params["task.name"] == "nonlinear_teacher"
    assert params["nora.activation"] == "silu"
    assert params["log_y"] == "false"


def test_link_sets_controls_and_trainer():
    query = {"task.name": "linear_teacher", "adapter.r": "4", "train.seed": "7",
             "train.lr": "0.01", "nora.activation": "gelu", "adapter.lora_alpha": "2"}
    app = start(query)

    assert not app.warning, texts(app.warning)
    settings = app.session_state["playground_resources"].settings
    assert settings.task_name == "linear_teacher"
    assert settings.lora.r == 4
    assert settings.nora.r == 4
    assert settings.train.seed == 7
    assert settings.train.lr == 0.01
    assert settings.nora.activation == "gelu"
    assert settings.lora.lora_alpha == 2.0
    assert app.query_params["train.seed"] == "7"


def test_off_grid_value_kept_exactly():
    # 0.0042 is not on the slider's 1-2-3-5 grid; the grid gains it, so the link is exact.
    app = start({"train.lr": "0.0042"})

    assert app.select_slider(key="train.lr").value == 0.0042
    assert trainer(app).train_config.lr == 0.0042


def test_bad_param_warns_and_falls_back():
    app = start({"train.lr": "nan", "adapter.r": "999"})

    warnings = texts(app.warning)
    assert "Link parameter train.lr='nan' is invalid for learning rate" in warnings
    assert "Using 0.003 instead" in warnings
    assert "Link parameter adapter.r='999' is invalid" in warnings
    assert "from 1 to 64" in warnings
    assert trainer(app).train_config.lr == 0.003
    assert app.query_params["train.lr"] == "0.003"  # the link now has the value in use

    app.button(key="step").click().run()
    assert not app.exception, app.exception
    assert step_count(app) == 10


def test_warning_clears_on_change():
    app = start({"train.lr": "nan"})
    assert app.warning

    app.select_slider(key="train.lr").set_value(0.01).run()

    assert "train.lr" not in texts(app.warning)


def test_switching_task_prunes_stale_params():
    app = start()
    assert "task.nonlinear_teacher.d" in app.query_params

    app.selectbox(key="task.name").set_value("linear_teacher").run()

    assert not app.exception, app.exception
    assert "task.nonlinear_teacher.d" not in app.query_params
    assert "task.linear_teacher.d" in app.query_params


def test_same_link_same_curves():
    first = start({"train.seed": "3", "adapter.r": "4"})
    first.button(key="step").click().run()
    first.button(key="step").click().run()
    link = dict(first.query_params)

    second = start(link)
    second.button(key="step").click().run()
    second.button(key="step").click().run()

    for name in ("LoRA", "NoRA"):
        losses = [row["val_loss"] for row in trainer(first).runs[name].history
                  if row["val_loss"] is not None]
        again = [row["val_loss"] for row in trainer(second).runs[name].history
                 if row["val_loss"] is not None]
        assert len(losses) == 3  # step 0, 10 and 20
        # Same seed, same settings, same float32 operations on one thread: bit-identical.
        assert losses == again
        assert all(math.isfinite(value) for value in losses)


def test_share_box_shows_query():
    app = start({"train.seed": "5"})

    codes = [element.value for element in app.code]
    assert any("train.seed=5" in code for code in codes), codes
