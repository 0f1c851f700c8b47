"""A shared server: run slots with a waiting message, the step limit, freeing closed tabs,
and sessions that never see each other's settings or trainers."""

from __future__ import annotations

import dataclasses

import pytest

from app_helpers import ROOT, start, step_count, texts, trainer, wait_for_step
from nora_core import monitor
from nora_core.config import AdapterConfig
from nora_core.limits import ServerLimits, load_limits
from nora_core.tasks.toy import make_toy_task
from nora_core.trainer import PairedTrainer, TrainConfig

from app.ui import classroom, live, session

OTHER = "another-browser-tab"


@pytest.fixture
def limits():
    """Let a test set the server limits; the file's limits and fresh slots come back after."""
    yield classroom.reload_limits
    classroom.reload_limits()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeResources:
    def __init__(self, busy: int = 0) -> None:
        self.busy = busy
        self.released: list[str] = []
        self.stops = 0

    def stop_training(self, wait: bool = True) -> None:
        self.stops += 1

    def release_memory(self, reason: str) -> bool:
        if self.busy:
            self.busy -= 1
            return False
        self.released.append(reason)
        return True


def _registry(active: dict[str, bool | None], clock: FakeClock, freed: list[str]):
    return classroom.SessionRegistry(active.get, grace=10.0, on_free=freed.append, clock=clock)


def test_registry_frees_after_grace():
    clock, freed, active = FakeClock(), [], {"a": True}
    registry = _registry(active, clock, freed)
    resources = FakeResources()
    registry.register("a", resources)

    active["a"] = False
    assert registry.sweep() == []  # disconnected at t = 0
    assert resources.stops == 1  # training stops at once
    clock.now = 9.0
    assert registry.sweep() == []
    assert resources.released == []
    clock.now = 10.5
    assert registry.sweep() == ["a"]

    assert freed == ["a"]
    assert len(resources.released) == 1
    assert len(registry) == 0


def test_registry_reconnect_within_grace():
    clock, freed, active = FakeClock(), [], {"a": False}
    registry = _registry(active, clock, freed)
    resources = FakeResources()
    registry.register("a", resources)
    registry.sweep()

    clock.now = 5.0
    active["a"] = True
    registry.sweep()
    active["a"] = False
    clock.now = 12.0
    assert registry.sweep() == []  # the grace period restarted at the new disconnect

    clock.now = 22.5
    assert registry.sweep() == ["a"]


@pytest.mark.parametrize("state", [True, None])
def test_registry_keeps_connected_or_unknown(state):
    clock, freed = FakeClock(), []
    registry = _registry({"a": state}, clock, freed)
    resources = FakeResources()
    registry.register("a", resources)

    registry.sweep()
    clock.now = 1000.0

    assert registry.sweep() == []
    assert len(registry) == 1
    assert resources.released == []


def test_registry_retries_busy_session():
    clock, freed = FakeClock(), []
    registry = _registry({"a": False}, clock, freed)
    resources = FakeResources(busy=1)
    registry.register("a", resources)
    registry.sweep()
    clock.now = 11.0

    assert registry.sweep() == []  # a chunk held the lock
    assert registry.sweep() == ["a"]


def test_registry_frees_every_page():
    clock, freed = FakeClock(), []
    registry = _registry({"a": False}, clock, freed)
    playground, language_model = FakeResources(), FakeResources(busy=1)
    registry.register("a", playground)
    registry.register("a", language_model)
    registry.sweep()
    assert (playground.stops, language_model.stops) == (1, 1)

    clock.now = 11.0
    assert registry.sweep() == []  # one page was busy
    assert registry.sweep() == ["a"]
    assert language_model.released and playground.released


def test_registry_drops_collected_sessions():
    registry = _registry({"a": True}, FakeClock(), [])
    registry.register("a", FakeResources())  # nothing else keeps it alive

    registry.sweep()

    assert len(registry) == 0


def test_release_frees_trainer():
    task = make_toy_task("nonlinear_teacher")
    configs = {"LoRA": AdapterConfig(method="lora", r=4), "NoRA": AdapterConfig(method="nora", r=4)}
    resources = session.PlaygroundResources(history_size=3)
    resources.trainer = PairedTrainer(task, configs, TrainConfig())
    resources.settings = session.PlaygroundSettings("nonlinear_teacher", task.config,
                                                    configs["LoRA"], configs["NoRA"], TrainConfig())
    resources.trainer.advance(20)
    monitor.track(resources.trainer, "trainer-under-test")
    assert monitor.live_count("trainer-under-test") == 1

    assert resources.release_memory("the tab closed")

    assert resources.trainer is None
    assert monitor.live_count("trainer-under-test") == 0
    assert len(resources.history) == 1
    assert resources.freed_reason == "the tab closed"


def test_release_waits_for_chunk():
    resources = session.PlaygroundResources(history_size=3)
    with resources.lock:
        assert resources.release_memory("closed") is False
    assert resources.freed_reason is None


def test_full_slots_make_play_wait(limits):
    # A long stale_after keeps the other tab's slot while the app starts up.
    limits(ServerLimits(max_concurrent_runs=1, stale_after=3600.0))
    assert classroom.run_slots().acquire(OTHER)
    app = start()

    app.button(key="play").click().run()

    assert not app.exception, app.exception
    assert "1 run is training, the limit is 1; yours starts when one finishes." in texts(app.info)
    assert trainer(app).step == 0
    assert "waiting for a slot" in texts(app.markdown)

    classroom.run_slots().release(OTHER)
    app.run()  # the waiting panel takes the free slot and starts training

    assert not app.exception, app.exception
    wait_for_step(trainer(app), 1)
    assert "yours starts" not in texts(app.info)
    app.button(key="pause").click().run()
    assert classroom.run_slots().holders() == 0


def test_full_slots_make_step_wait(limits):
    # A long stale_after keeps the other tab's slot while the app starts up.
    limits(ServerLimits(max_concurrent_runs=1, stale_after=3600.0))
    assert classroom.run_slots().acquire(OTHER)
    app = start()

    app.button(key="step").click().run()

    assert "press Step again when one finishes" in texts(app.info)
    assert step_count(app) == 0
    classroom.run_slots().release(OTHER)
    app.button(key="step").click().run()
    assert step_count(app) == 10
    assert classroom.run_slots().holders() == 0  # Step gives its slot back at once


def test_pause_frees_slot(limits):
    limits(ServerLimits(max_concurrent_runs=2))
    app = start()

    app.button(key="play").click().run()
    wait_for_step(trainer(app), 1)
    assert classroom.run_slots().holders() == 1  # the training thread has it

    app.button(key="pause").click().run()
    assert classroom.run_slots().holders() == 0
    stopped = trainer(app).step
    app.run()
    assert trainer(app).step == stopped


def test_step_limit_stops_run(limits):
    limits(ServerLimits(max_steps=15))
    app = start()

    app.button(key="step").click().run()
    app.button(key="step").click().run()

    assert step_count(app) == 15
    assert "reached the server's limit of 15 steps per run" in texts(app.info)

    app.button(key="play").click().run()
    app.run()  # the next redraw finds the training thread stopped at the limit

    assert not app.exception, app.exception
    assert trainer(app).step == 15
    assert "reached the server's limit of 15 steps per run" in texts(app.info)
    assert app.button(key="play").disabled is False  # paused again
    assert classroom.run_slots().holders() == 0

    app.button(key="reset").click().run()
    app.button(key="step").click().run()
    assert step_count(app) == 10


def test_play_stops_at_step_limit(limits):
    limits(ServerLimits(max_steps=40))
    app = start()

    app.button(key="play").click().run()
    wait_for_step(trainer(app), 40)
    # The thread records why it stopped just after its last step; wait for that.
    app.session_state[session.RESOURCES].worker.join(timeout=30)
    app.run()

    assert trainer(app).step == 40
    assert "reached the server's limit of 40 steps per run" in texts(app.info)
    assert app.button(key="pause").disabled is True


def test_play_after_limit_and_reset(limits):
    limits(ServerLimits(max_steps=20))
    app = start()
    app.button(key="play").click().run()
    wait_for_step(trainer(app), 20)
    app.session_state[session.RESOURCES].worker.join(timeout=30)
    app.run()
    assert "limit of 20 steps" in texts(app.info)

    app.button(key="reset").click().run()
    app.button(key="play").click().run()

    # The old thread's "limit reached" outcome must not pause the new run: it trains up to
    # its own limit. Checking the Pause button instead would race with that limit, because
    # 20 steps take a few milliseconds.
    new_trainer = trainer(app)
    wait_for_step(new_trainer, 20)
    app.session_state[session.RESOURCES].worker.join(timeout=30)
    app.run()
    assert new_trainer.step == 20
    assert "limit of 20 steps" in texts(app.info)


def test_silent_page_stops_training(monkeypatch):
    monkeypatch.setattr(live, "HEARTBEAT_TIMEOUT", 1.0)
    app = start()
    app.button(key="play").click().run()
    current = trainer(app)
    wait_for_step(current, 1)
    worker = app.session_state[session.RESOURCES].worker

    # AppTest never reruns the fragment by itself: like a frozen tab, the page stays silent.
    worker.join(timeout=30)

    assert worker.outcome == "silent"
    assert classroom.run_slots().holders() == 0
    stopped = current.step
    app.run()  # the page is back: training resumes
    wait_for_step(current, stopped + 1)
    app.button(key="pause").click().run()


def test_freed_session_starts_again():
    app = start()
    app.button(key="step").click().run()
    resources = app.session_state[session.RESOURCES]

    assert resources.release_memory("the browser tab was closed or disconnected")
    app.run()

    assert not app.exception, app.exception
    assert step_count(app) == 0
    assert "The server freed this tab's earlier run" in texts(app.info)
    assert len(resources.history) == 1


def test_sessions_isolated():
    first = start()
    second = start()

    first.select_slider(key="adapter.r").set_value(16).run()
    first.button(key="step").click().run()
    second.button(key="step").click().run()

    assert trainer(first) is not trainer(second)
    assert trainer(second).runs["LoRA"].config.r == 8
    assert second.query_params["adapter.r"] == "8"
    assert second.select_slider(key="adapter.r").value == 8
    assert step_count(second) == 10


def test_example_limits_match_defaults():
    assert load_limits(ROOT / "nora_lab.example.toml") == ServerLimits()


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(ServerLimits)])
def test_teacher_docs_cover_limit(field):
    docs = (ROOT / "docs" / "TEACHERS.md").read_text()
    example = (ROOT / "nora_lab.example.toml").read_text()
    default = getattr(ServerLimits(), field)

    assert f"| `{field}` | {default} |" in docs
    assert f"\n{field} = " in example
