"""AppTest checks of the Language-model page on the bundled model: it steps and draws its
charts, survives a bad model id, a malformed upload and a diverged run, and generates."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.ui import lm_charts, lm_session
from app.ui.lm_panels import format_perplexity
from app.ui.lm_spectra import (MAX_SNAPSHOTS, SpectrumSnapshot, append_snapshot, layer_and_target,
                               rank_grid)

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "app" / "views" / "lm.py"
# The first run imports torch and transformers and builds the task. After that, a Step of
# 10 small steps takes a few seconds on a busy 2-core machine.
TIMEOUT = 240
# Small settings, passed as a shared link would pass them, keep each step cheap.
SMALL = {"lm.train.batch_size": "4", "lm.task.seq_len": "64", "lm.task.n_val": "8",
         "lm.task.spectrum_examples": "4"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _start(**params: str) -> AppTest:
    app = AppTest.from_file(str(PAGE), default_timeout=TIMEOUT)
    app.query_params.update({**SMALL, **params})
    app.run()
    assert not app.exception, app.exception
    return app


def _step_count(app: AppTest) -> int:
    for element in app.markdown:
        found = re.match(r"\*\*step (\d+)\*\*", element.value)
        if found:
            return int(found.group(1))
    raise AssertionError("no step counter on the page")


def _texts(elements) -> str:
    return "\n".join(element.value for element in elements)


def _metrics(app: AppTest, label: str) -> list[str]:
    return [metric.value for metric in app.metric if metric.label == label]


def test_page_step_draws_charts():
    app = _start()
    assert _step_count(app) == 0
    assert not app.error, _texts(app.error)

    app.button(key="lm.step").click().run()

    assert not app.exception, app.exception
    assert not app.error, _texts(app.error)
    assert _step_count(app) == 10  # the page's eval_every default
    # loss, perplexity, effective-rank heatmap, averaged spectrum, effective rank over time
    assert len(app.get("plotly_chart")) == 5
    # attention q,v of 4 blocks: 8 layers × r=8 × (128 + 128)
    assert _metrics(app, "trainable parameters") == ["16,384", "16,384"]
    trainer = app.session_state[lm_session.TRAINER]
    for name, shown in zip(trainer.runs, _metrics(app, "perplexity")):
        expected = math.exp(trainer.runs[name].last_finite["val_loss"])
        assert float(shown) == pytest.approx(expected, rel=1e-3)  # shown with 4 digits
    steps = [snapshot.step for snapshot in app.session_state[lm_session.SNAPSHOTS]]
    assert steps == [0, 10]  # the page measures spectra every 10 steps

    app.button(key="lm.step").click().run()

    steps = [snapshot.step for snapshot in app.session_state[lm_session.SNAPSHOTS]]
    assert steps == [0, 10, 20]
    assert app.select_slider(key="lm.spectra.step").value == 20  # follows the latest

    app.select_slider(key="lm.spectra.step").set_value(10).run()
    app.button(key="lm.step").click().run()

    assert app.select_slider(key="lm.spectra.step").value == 10  # stays where the user put it
    assert "step 10" in app.get("plotly_chart")[2].proto.spec


def test_bad_model_id_shows_error_and_steps():
    app = _start()

    app.text_input(key="lm.model").set_value("no-such-org/no-such-model").run()

    assert not app.exception, app.exception
    errors = _texts(app.error)
    assert "Could not load model 'no-such-org/no-such-model'" in errors
    assert "keeps using 'bundled:tiny-shakespeare'" in errors
    app.button(key="lm.step").click().run()
    assert not app.exception, app.exception
    assert _step_count(app) == 10


def test_malformed_upload_names_line():
    app = _start()
    lines = [json.dumps({"prompt": f"q{i}\n", "response": f"a{i}"}) for i in range(12)]
    lines[2] = '{"prompt": "q2", "response": }'

    app.selectbox(key="lm.task").set_value("upload").run()
    app.file_uploader(key="lm.upload").set_value(
        ("pairs.jsonl", "\n".join(lines).encode(), "application/jsonl")).run()

    assert not app.exception, app.exception
    assert "Uploaded file 'pairs.jsonl': line 3: invalid JSON" in _texts(app.error)
    app.button(key="lm.step").click().run()
    assert not app.exception, app.exception
    assert _step_count(app) == 10  # the style-shift runs go on
    assert app.session_state[lm_session.ACTIVE].task.task == "style_shift"


def test_valid_upload_trains():
    app = _start()
    lines = [json.dumps({"prompt": f"echo {i}\n", "response": f"{i} {i}"}) for i in range(20)]

    app.selectbox(key="lm.task").set_value("upload").run()
    app.file_uploader(key="lm.upload").set_value(
        ("pairs.jsonl", "\n".join(lines).encode(), "application/jsonl")).run()
    app.button(key="lm.step").click().run()

    assert not app.exception, app.exception
    assert not app.error, _texts(app.error)
    settings = app.session_state[lm_session.ACTIVE]
    assert settings.task.task == "upload"
    assert settings.upload_name == "pairs.jsonl"
    assert _step_count(app) == 10


def test_custom_targets_validated():
    app = _start()
    app.selectbox(key="lm.targets").set_value("custom").run()

    app.text_input(key="lm.targets.custom").set_value("q_proj, nonexistent_proj").run()

    assert not app.exception, app.exception
    errors = _texts(app.error)
    assert "unknown target module name(s) 'nonexistent_proj'" in errors
    assert "o_proj" in errors  # the message lists the valid names

    app.text_input(key="lm.targets.custom").set_value("mlp.down_proj").run()

    assert not app.error, _texts(app.error)
    # untouched runs are rebuilt at once: 4 down_proj layers × r=8 × (344 + 128)
    assert _metrics(app, "trainable parameters") == ["15,104", "15,104"]


def test_diverged_run_shows_diverged():
    app = _start()
    app.button(key="lm.step").click().run()
    trainer = app.session_state[lm_session.TRAINER]
    # Adam bounds each update by about lr, so no allowed setting reliably blows up within a
    # test. An infinite weight reproduces what a blown-up run looks like.
    layer = trainer.runs["LoRA"].model.model.layers[0].self_attn.q_proj
    layer.lora_B.weight.data.fill_(math.inf)

    app.button(key="lm.step").click().run()

    assert not app.exception, app.exception
    assert "LoRA diverged at step 11" in _texts(app.error)
    assert _metrics(app, "perplexity")[0] == "diverged"
    assert _metrics(app, "perplexity")[1] != "diverged"
    assert trainer.runs["NoRA"].step == 20

    app.button(key="lm.generate").click().run()

    assert not app.exception, app.exception
    samples = app.session_state[lm_session.SAMPLES]
    assert samples.texts["LoRA"] == "(diverged at step 11: no sample)"
    assert set(samples.texts) == {"base", "LoRA", "NoRA"}


def test_generate_shows_three_samples():
    app = _start()
    app.button(key="lm.step").click().run()
    app.text_area(key="lm.sample.prompt").set_value("ROMEO.\n").run()
    app.slider(key="lm.sample.max_new_tokens").set_value(12).run()

    app.button(key="lm.generate").click().run()

    assert not app.exception, app.exception
    samples = app.session_state[lm_session.SAMPLES]
    assert samples.prompt == "ROMEO.\n"
    assert samples.step == 10
    assert len(app.code) == 3
    for text in samples.texts.values():
        assert 0 < len(text.encode()) <= 12  # byte tokens: at most 12 new bytes


def test_answer_check_on_procedure():
    app = _start(**{"lm.task": "sort"})
    assert not app.button(key="lm.answers.check").disabled
    app.slider(key="lm.answers.count").set_value(4).run()

    app.button(key="lm.answers.check").click().run()

    assert not app.exception, app.exception
    result = app.session_state[lm_session.ACCURACY]
    assert result.prompts == 4
    assert set(result.shares) == {"base", "LoRA", "NoRA"}
    shown = [m.value for m in app.metric if m.label.endswith("correct answers")]
    assert shown == [f"{share:.0%}" for share in result.shares.values()]
    assert result.shares["base"] == 0.0  # the base model never saw the sort format


def test_answer_check_hidden_for_text():
    app = _start()
    assert not app.button(key="lm.step").disabled
    with pytest.raises(KeyError):
        app.button(key="lm.answers.check")


@pytest.mark.parametrize("name, expected", [
    ("model.layers.3.self_attn.q_proj", ("3", "self_attn.q_proj")),
    ("model.layers.12.mlp.down_proj", ("12", "mlp.down_proj")),
    ("transformer.h.0.attn.c_attn", ("0", "attn.c_attn")),
    ("gpt_neox.layers.1.attention.query_key_value", ("1", "attention.query_key_value")),
    ("score", ("-", "score")),
])
def test_layer_and_target_split(name, expected):
    assert layer_and_target(name) == expected


def test_rank_grid_layout():
    ranks = {"model.layers.10.self_attn.q_proj": 3.0, "model.layers.2.self_attn.q_proj": 2.0,
             "model.layers.2.self_attn.v_proj": 0.0, "model.layers.10.self_attn.v_proj": None}

    grid = rank_grid(ranks)

    assert grid.layers == ["2", "10"]  # numeric order, not text order
    assert grid.targets == ["self_attn.q_proj", "self_attn.v_proj"]
    assert grid.values[0, 0] == 2.0
    assert grid.values[1, 0] == 3.0
    assert math.isnan(grid.values[0, 1])  # an all-zero update has no effective rank
    assert math.isnan(grid.values[1, 1])  # a non-finite spectrum has none either


def test_snapshots_thin_past_limit():
    snapshots = []
    for step in range(0, 10 * (MAX_SNAPSHOTS + 1), 10):
        append_snapshot(snapshots, SpectrumSnapshot(step))

    steps = [snapshot.step for snapshot in snapshots]
    assert len(steps) <= MAX_SNAPSHOTS
    assert steps[0] == 0
    assert steps[-1] == 10 * MAX_SNAPSHOTS
    assert steps == sorted(steps)


def test_snapshot_same_step_replaced():
    snapshots = [SpectrumSnapshot(10)]
    append_snapshot(snapshots, SpectrumSnapshot(10, average={"LoRA": None}))
    assert len(snapshots) == 1
    assert snapshots[0].average == {"LoRA": None}


@pytest.mark.parametrize("value, diverged, shown", [
    (None, False, "n/a"),
    (math.inf, False, "overflow"),
    (5.5934, False, "5.593"),
    (5.5934, True, "diverged"),
    (None, True, "diverged"),
])
def test_format_perplexity_cases(value, diverged, shown):
    assert format_perplexity(value, diverged) == shown


def test_prompt_follows_task_change():
    app = _start()
    first = app.text_area(key="lm.sample.prompt").value
    assert first  # a held-out opening of the comedies

    app.selectbox(key="lm.task").set_value("sort").run()

    assert not app.exception, app.exception
    assert app.text_area(key="lm.sample.prompt").value.startswith("sort ")


@pytest.mark.parametrize("values, axis", [
    ([6.3, 5.5], None),  # less than a decade: linear, with Plotly's own ticks
    ([1.6e5, 50.0], "log"),
])
def test_perplexity_figure_axis(values, axis):
    rows = [{"step": 10 * i, "val_perplexity": v} for i, v in enumerate(values)]
    rows.append({"step": 99, "val_perplexity": math.inf})  # an overflowed value

    figure = lm_charts.perplexity_figure({"LoRA": rows})

    assert figure.layout.yaxis.type == axis
    assert list(figure.data[0].y) == values  # the infinite value is left out
