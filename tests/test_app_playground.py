"""AppTest checks of the playground page: it runs, trains on Step and Play, reports setting
changes on screen, and survives a diverged run."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.ui import charts, panels, session
from app_helpers import wait_for_step

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "app" / "main.py"
# The first run imports torch and builds the task; later runs take about a second.
TIMEOUT = 120


def _start() -> AppTest:
    app = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
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


def test_page_step_draws_charts():
    app = _start()
    assert _step_count(app) == 0

    app.button(key="step").click().run()

    assert not app.exception, app.exception
    assert _step_count(app) == 10  # TrainConfig.eval_every defaults to 10 steps
    assert len(app.get("plotly_chart")) >= 3  # loss, spectra, effective rank
    assert not app.error, _texts(app.error)


def test_page_play_trains_and_pause_stops():
    app = _start()

    app.button(key="play").click().run()
    assert not app.exception, app.exception
    trainer = app.session_state[session.RESOURCES].trainer
    wait_for_step(trainer, 1)  # the training thread trains while the page is shown
    assert app.button(key="pause").disabled is False

    app.button(key="pause").click().run()
    assert not app.exception, app.exception
    played = trainer.step
    assert played > 0
    assert _step_count(app) == played  # Pause waits for the chunk, then the page redraws
    assert app.button(key="play").disabled is False

    app.run()
    assert trainer.step == played  # paused: a rerun draws but does not train


def test_rank_change_waits_for_reset():
    app = _start()
    app.button(key="step").click().run()

    app.select_slider(key="adapter.r").set_value(16).run()

    assert not app.exception, app.exception
    notice = _texts(app.warning)
    assert "apply on Reset" in notice
    assert "LoRA rank r: 8 → 16" in notice
    assert "NoRA rank r: 8 → 16" in notice
    assert _step_count(app) == 10  # the running trainer was kept

    app.button(key="reset").click().run()
    assert not app.exception, app.exception
    assert not app.warning
    assert _step_count(app) == 0
    parameters = [m.value for m in app.metric if m.label == "trainable parameters"]
    assert parameters == ["2,048", "2,048"]  # r=16 × (64 + 64) per run


def test_widgets_restart_from_running_settings(tmp_path):
    # A two-page app: leaving the playground drops its widget state in Streamlit.
    (tmp_path / "other.py").write_text("import streamlit as st\nst.write('other page')\n")
    (tmp_path / "main.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import streamlit as st\n"
        f"st.navigation([st.Page({str(ROOT / 'app' / 'views' / 'playground.py')!r}, default=True),\n"
        "               st.Page('other.py')]).run()\n")
    app = AppTest.from_file(str(tmp_path / "main.py"), default_timeout=TIMEOUT)
    app.run()
    app.select_slider(key="adapter.r").set_value(16).run()
    app.button(key="step").click().run()

    app.switch_page("other.py").run()
    app.switch_page(str(ROOT / "app" / "views" / "playground.py")).run()

    assert not app.exception, app.exception
    assert app.select_slider(key="adapter.r").value == 16
    assert app.number_input(key="adapter.lora_alpha").value is None
    assert not app.warning, _texts(app.warning)
    assert _step_count(app) == 10


def test_learning_rate_applies_now():
    app = _start()
    app.button(key="step").click().run()

    app.select_slider(key="train.lr").set_value(0.01).run()

    assert not app.exception, app.exception
    assert "applies now" in _texts(app.success)
    assert not app.warning
    trainer = app.session_state[session.RESOURCES].trainer
    assert trainer.train_config.lr == 0.01
    lrs = {group["lr"] for run in trainer.runs.values() for group in run.optimizer.param_groups}
    assert lrs == {0.01}


def test_invalid_task_setting_keeps_page_running():
    app = _start()
    app.button(key="step").click().run()

    # The teacher's hidden width must not exceed d = 64; the config rejects 65.
    app.slider(key="task.nonlinear_teacher.hidden_width").set_value(65).run()

    assert not app.exception, app.exception
    assert "hidden_width must be <= d = 64" in _texts(app.error)
    assert len(app.get("plotly_chart")) >= 3
    assert _step_count(app) == 10


def test_diverged_lora_reports_and_nora_goes_on():
    app = _start()
    app.button(key="step").click().run()
    trainer = app.session_state[session.RESOURCES].trainer
    # Adam bounds each update by about lr, so no allowed lr overflows these toy losses
    # within a test. An infinite weight reproduces what a blown-up run looks like.
    trainer.runs["LoRA"].model.layer.lora_B.weight.data.fill_(math.inf)

    app.button(key="step").click().run()

    assert not app.exception, app.exception
    errors = _texts(app.error)
    assert "LoRA diverged at step 11: the loss became non-finite" in errors
    assert "Lower the learning rate (e.g. to 0.0003) and press Reset" in errors
    assert "NoRA diverged" not in errors
    assert trainer.runs["NoRA"].step == 20
    assert len(app.get("plotly_chart")) >= 3


def test_huge_lr_and_scale_diverge_both_runs():
    app = _start()
    # Adam steps are about lr in size whatever the gradient, so only the largest lr together
    # with a huge scale s = lora_alpha / r overflows the float32 loss within a few steps.
    app.select_slider(key="train.lr").set_value(10.0).run()
    app.number_input(key="adapter.lora_alpha").set_value(1e18).run()
    app.button(key="step").click().run()

    assert not app.exception, app.exception
    errors = _texts(app.error)
    assert "LoRA diverged at step 2" in errors
    assert "NoRA diverged at step 2" in errors
    assert "Lower the learning rate (e.g. to 1) and press Reset" in errors
    assert "lower lora_alpha" in errors
    assert app.button(key="play").disabled is True
    assert len(app.get("plotly_chart")) >= 3


@pytest.mark.parametrize("task", ["linear_teacher", "classification_2d"])
def test_other_tasks_render(task):
    app = _start()
    app.selectbox(key="task.name").set_value(task).run()
    app.button(key="step").click().run()

    assert not app.exception, app.exception
    assert _step_count(app) == 10
    expected = 4 if task == "classification_2d" else 3  # plus the decision regions
    assert len(app.get("plotly_chart")) == expected


def test_spirals_three_classes_render():
    app = _start()
    app.selectbox(key="task.name").set_value("classification_2d").run()
    app.selectbox(key="task.classification_2d.dataset").set_value("spirals").run()
    app.slider(key="task.classification_2d.n_classes").set_value(3).run()
    app.button(key="step").click().run()

    assert not app.exception, app.exception
    assert not app.error, _texts(app.error)
    assert len(app.get("plotly_chart")) == 4


def test_separate_nora_rank_applies_before_training():
    app = _start()
    app.checkbox(key="adapter.separate_r").check().run()
    app.select_slider(key="nora.r").set_value(2).run()

    assert not app.exception, app.exception
    # Nothing was trained yet, so the runs are rebuilt at once and no notice waits.
    assert not app.warning
    parameters = [m.value for m in app.metric if m.label == "trainable parameters"]
    assert parameters == ["1,024", "256"]  # r × (64 + 64): LoRA r=8, NoRA r=2


def test_loss_figure_keeps_last_finite_point():
    rows = [{"step": 1, "train_loss": 1.0, "val_loss": 1.0},
            {"step": 2, "train_loss": 0.5, "val_loss": None},
            {"step": 3, "train_loss": None, "val_loss": None, "diverged": True},
            {"step": 4, "train_loss": math.nan, "val_loss": math.inf}]
    figure = charts.loss_figure({"LoRA": rows}, [charts.FloorLine(0.0, "floor")], log_y=True)

    train = next(trace for trace in figure.data if trace.name == "LoRA train")
    assert list(train.x) == [1, 2]
    assert list(train.y) == [1.0, 0.5]
    # A floor of 0 cannot be drawn on a log axis.
    assert all(trace.name != "floor" for trace in figure.data)


@pytest.mark.parametrize("lr, expected", [(3e-3, 3e-4), (10.0, 1.0), (1e-5, 1e-6), (2e-6, 1e-6)])
def test_suggested_learning_rate(lr, expected):
    assert panels.suggested_learning_rate(lr) == pytest.approx(expected)
