"""Guided lessons: the data is valid, and starting a lesson opens the Playground with its
settings applied, its prompt shown, and the student's earlier run kept in the history."""

from __future__ import annotations

import re

import pytest

from app_helpers import start, step_count, texts, trainer
from nora_core.lessons import LESSONS, Lesson, lesson_by_id

from app.ui import lesson_ui, session

REQUIRED = {"linear-ceiling", "lora-home-turf", "scaling-confound", "identity-is-lora",
            "dropout-effective-rank", "spectrum-views"}


def _sentences(text: str) -> int:
    # A sentence ends with ". " or a final "."; decimals such as 0.3 have no space after the dot.
    return len(re.findall(r"[.!?](?:\s|$)", text))


def test_catalogue_covers_topics():
    assert REQUIRED <= {lesson.id for lesson in LESSONS}


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda lesson: lesson.id)
def test_lesson_texts(lesson):
    assert 2 <= _sentences(lesson.explanation) <= 3, lesson.explanation
    assert lesson.look_for.strip()
    assert lesson.settings


@pytest.mark.parametrize("bad, message", [
    (dict(id="Bad Id"), "lowercase words"),
    (dict(title=" "), "title must not be empty"),
    (dict(page="nowhere"), "page must be one of"),
    (dict(settings=(("adapter.r", 4), ("adapter.r", 8))), "set twice"),
])
def test_lesson_rejects(bad, message):
    fields = dict(id="ok", title="t", explanation="e.", look_for="l", settings=())
    fields.update(bad)
    with pytest.raises(ValueError, match=message):
        Lesson(**fields)


def test_unknown_lesson_lists_known():
    with pytest.raises(ValueError, match="linear-ceiling"):
        lesson_by_id("nope")


def _open_lesson(app, lesson_id):
    app.switch_page("views/lessons.py").run()
    assert not app.exception, app.exception
    app.button(key=f"lesson.start.{lesson_id}").click().run()
    assert not app.exception, app.exception
    # The click's run ends on the Playground, but AppTest reruns the page that its own
    # switch_page chose last. Pointing it at the Playground keeps later runs there.
    app.switch_page("views/playground.py")
    return app


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda lesson: lesson.id)
def test_lesson_applies_settings(lesson):
    app = _open_lesson(start(), lesson.id)

    assert not app.warning, texts(app.warning)  # every setting is a valid control value
    assert not app.error, texts(app.error)
    assert f"Lesson: {lesson.title}" in texts(app.markdown)
    assert app.query_params["lesson"] == lesson.id
    for key, value in lesson.settings:
        assert app.query_params[key] == lesson_ui.url_state.encode(value), key

    app.button(key="step").click().run()
    assert not app.exception, app.exception
    assert step_count(app) == 10


def test_lesson_settings_reach_trainer():
    app = _open_lesson(start(), "scaling-confound")

    settings = app.session_state[session.RESOURCES].settings
    assert settings.task_name == "linear_teacher"
    assert settings.lora.r == 64
    assert settings.lora.scale == pytest.approx(1 / 16)  # lora_alpha 4 at r = 64
    assert settings.nora.scale == pytest.approx(1.0)  # lora_alpha empty: = r


def test_lesson_resets_trained_run():
    app = start({"adapter.r": "4", "train.lr": "0.01"})
    app.button(key="step").click().run()
    assert step_count(app) == 10

    app = _open_lesson(app, "linear-ceiling")

    assert step_count(app) == 0
    # Settings the lesson does not name start at their defaults, not at the old run's.
    assert trainer(app).train_config.lr == 0.003
    assert trainer(app).runs["LoRA"].config.r == 16
    assert len(app.session_state[session.RESOURCES].history) == 1


def test_student_changes_after_lesson():
    app = _open_lesson(start(), "identity-is-lora")
    app.button(key="step").click().run()

    app.selectbox(key="nora.activation").set_value("silu").run()

    assert "NoRA activation: identity → silu" in texts(app.warning)
    assert app.query_params["nora.activation"] == "silu"
    assert app.query_params["lesson"] == "identity-is-lora"


def test_identity_lesson_curves_coincide():
    app = _open_lesson(start(), "identity-is-lora")
    for _ in range(3):
        app.button(key="step").click().run()

    runs = trainer(app).runs
    lora = [row["train_loss"] for row in runs["LoRA"].history]
    nora = [row["train_loss"] for row in runs["NoRA"].history]
    assert len(lora) == 31
    # Identity activation, no dropout, same seed and batches: the same float32 operations.
    assert lora == nora


def test_bad_lesson_param_warns():
    app = start({"lesson": "no-such-lesson"})

    assert "Link parameter lesson='no-such-lesson' is invalid" in texts(app.warning)
    assert "lesson" not in app.query_params
    app.button(key="step").click().run()
    assert step_count(app) == 10


def test_leave_lesson_hides_box():
    app = _open_lesson(start(), "linear-ceiling")

    app.button(key="lesson.leave").click().run()

    assert "lesson" not in app.query_params
    assert "Lesson: The linear ceiling" not in texts(app.markdown)
