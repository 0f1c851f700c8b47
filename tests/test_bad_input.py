"""Bad input anywhere a user can type, click or link: each case shows a clear message on the
page, and the session stays usable (the next Step trains)."""

from __future__ import annotations

import json

import pytest

from app_helpers import ROOT, start, step_count, texts
from nora_core.limits import ServerLimits
from nora_core.lm.upload import UploadError, parse_upload

from app.ui import classroom

LM_PAGE = ROOT / "app" / "views" / "lm.py"


@pytest.fixture
def limits():
    """Let a test set the server limits; the file's limits come back afterwards."""
    yield classroom.reload_limits
    classroom.reload_limits()


def _step_works(app, key: str = "step", expected: int = 10) -> None:
    app.button(key=key).click().run()
    assert not app.exception, app.exception
    assert step_count(app) == expected


# (query parameter, value, text the warning must contain)
BAD_LINKS = [
    ("adapter.r", "0", "adapter.r='0' is invalid for rank r (both): expected a number from 1 to 64"),
    ("adapter.r", "65", "expected a number from 1 to 64"),  # the layer is 64 wide
    ("nora.r", "x", "nora.r='x' is invalid"),
    ("adapter.lora_dropout", "1", "expected a number from 0 to 0.95"),
    ("adapter.lora_dropout", "1.5", "adapter.lora_dropout='1.5' is invalid"),
    ("nora.activation", "swish",
     "expected one of empty, 'identity', 'silu', 'gelu', 'relu', 'tanh'"),
    ("train.lr", "nan", "expected a finite number from 1e-06 to 10"),
    ("train.lr", "-0.001", "train.lr='-0.001' is invalid"),
    ("train.lr", "inf", "expected a finite number"),
    ("train.seed", "-3", "train.seed='-3' is invalid"),
    ("train.batch_size", "lots", "expected an integer from 1 to 4096"),
    ("task.name", "mnist", "expected one of 'nonlinear_teacher'"),
    ("adapter.separate_r", "perhaps", "expected true or false"),
    ("log_y", "2", "expected true or false"),
]


@pytest.mark.parametrize("key, value, message", BAD_LINKS, ids=lambda x: str(x)[:20])
def test_bad_link_param(key, value, message):
    query = {key: value}
    if key == "nora.r":
        query["adapter.separate_r"] = "true"
    app = start(query)

    warnings = texts(app.warning)
    assert message in warnings
    assert "instead; change it here" in warnings
    assert not app.error, texts(app.error)
    _step_works(app)


@pytest.mark.parametrize("targets, message", [
    ("encoder", "target_modules ('encoder',) matched no Linear or Conv1D layer; layers that "
                "can be targeted: layer"),
    ("layer[", "is not a valid regular expression"),
])
def test_bad_target_layers(targets, message):
    app = start()

    app.text_input(key="adapter.target_modules").set_value(targets).run()

    assert not app.exception, app.exception
    assert message in texts(app.error)
    _step_works(app)  # the old runs go on


def test_bad_target_waits_for_reset():
    app = start()
    app.button(key="step").click().run()

    app.text_input(key="adapter.target_modules").set_value("encoder").run()
    app.button(key="reset").click().run()

    assert "Could not build the runs" in texts(app.error)
    assert "matched no Linear or Conv1D layer" in texts(app.error)
    _step_works(app, expected=20)  # Reset failed, so the trained runs are kept


def test_huge_lr_diverges_with_advice():
    app = start({"train.lr": "10", "adapter.lora_alpha": "1e18"})

    app.button(key="step").click().run()

    errors = texts(app.error)
    assert "diverged at step" in errors
    assert "Lower the learning rate (e.g. to 1) and press Reset" in errors
    app.select_slider(key="train.lr").set_value(0.003).run()
    app.number_input(key="adapter.lora_alpha").set_value(None).run()
    app.button(key="reset").click().run()
    _step_works(app)


lm_page = pytest.mark.skipif(not LM_PAGE.is_file(), reason="the Language model page is missing")


def _lm_app():
    app = start()
    app.switch_page("views/lm.py").run()
    assert not app.exception, app.exception
    return app


@lm_page
def test_unreachable_model_id():
    app = _lm_app()

    app.text_input(key="lm.model").set_value("no-such-org/no-such-model").run()

    errors = texts(app.error)
    assert "Could not load model 'no-such-org/no-such-model'" in errors
    assert "The page keeps using" in errors
    _step_works(app, key="lm.step")


JSONL_ROW = json.dumps({"prompt": "2+2", "response": " 4"}) + "\n"


@lm_page
@pytest.mark.parametrize("name, data, message", [
    ("big.jsonl", JSONL_ROW.encode() * 100, "above the limit of 1,000 bytes"),
    ("broken.jsonl", b'{"prompt": "a", "response": "b"}\n{"prompt": oops}\n', "line 2: invalid JSON"),
    ("fields.jsonl", b'{"question": "a", "answer": "b"}\n', 'line 1: missing key "prompt"'),
    ("binary.txt", b"\xff\xfe\x00junk", "not valid UTF-8 text"),
    ("empty.txt", b"   \n", "the file is empty"),
])
def test_bad_upload(limits, name, data, message):
    limits(ServerLimits(max_upload_mb=0.001))  # 1,000 bytes
    app = _lm_app()
    app.selectbox(key="lm.task").set_value("upload").run()

    app.get("file_uploader")[0].set_value((name, data, "application/octet-stream")).run()

    assert not app.exception, app.exception
    errors = texts(app.error)
    assert f"Uploaded file {name!r}" in errors
    assert message in errors
    _step_works(app, key="lm.step")


def test_upload_limit_from_server(limits):
    current = limits(ServerLimits(max_upload_mb=0.5))

    assert current.max_upload_bytes == 500_000
    with pytest.raises(UploadError, match="above the limit of 500,000 bytes"):
        parse_upload(b"x" * 500_001, max_bytes=current.max_upload_bytes)
