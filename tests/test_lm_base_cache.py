"""The base model in `st.cache_resource` is shared by every session and never trained.

Two AppTest sessions in one process share Streamlit's resource cache, as the sessions of
one server do. Each trains its own LoRA and NoRA runs; afterwards the cached weights must
equal a fresh load of the checkpoint exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.ui import lm_session
from nora_core.adapters import adapter_layers
from nora_core.lm import BUNDLED_MODEL, cached_base_model, load_base_model

PAGE = Path(__file__).resolve().parents[1] / "app" / "views" / "lm.py"
TIMEOUT = 240
SMALL = {"lm.train.batch_size": "4", "lm.task.seq_len": "64", "lm.task.n_val": "8",
         "lm.task.spectrum_examples": "4"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _train_session(seed: str):
    app = AppTest.from_file(str(PAGE), default_timeout=TIMEOUT)
    app.query_params.update({**SMALL, "lm.train.seed": seed})
    app.run()
    app.button(key="lm.step").click().run()
    assert not app.exception, app.exception
    trainer = app.session_state[lm_session.TRAINER]
    assert trainer.step == 10
    return trainer


def test_cached_base_unchanged_by_two_sessions():
    trainers = [_train_session("0"), _train_session("1")]

    cached, _ = lm_session.shared_base(BUNDLED_MODEL)
    fresh, _ = load_base_model(BUNDLED_MODEL)
    cached_state, fresh_state = cached.state_dict(), fresh.state_dict()
    assert cached_state.keys() == fresh_state.keys()  # no adapter was injected into it
    for name, tensor in fresh_state.items():
        assert torch.equal(cached_state[name], tensor), name  # exact: nothing may train it
    assert not any(p.requires_grad for p in cached.parameters())
    assert not cached.training

    # Both sessions read the model that the library's cache and Streamlit's cache share.
    assert cached is cached_base_model(BUNDLED_MODEL)[0]
    shared_storage = {p.data_ptr() for p in cached.parameters()}
    for trainer in trainers:
        for run in trainer.runs.values():
            assert not shared_storage & {p.data_ptr() for p in run.model.parameters()}
            moved = [layer.lora_B.weight.abs().sum() for layer in adapter_layers(run.model)]
            assert sum(moved) > 0  # the session's own copy did train
