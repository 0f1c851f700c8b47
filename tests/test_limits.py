"""Server limits from a TOML file, and the run-slot gate shared by sessions."""

import threading

import pytest

from nora_core.limits import RunSlots, ServerLimits, load_limits


def test_defaults_without_file(tmp_path, monkeypatch):
    monkeypatch.delenv("NORA_LAB_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert load_limits() == ServerLimits()


def test_file_from_environment(tmp_path, monkeypatch):
    path = tmp_path / "class.toml"
    path.write_text("[limits]\nmax_concurrent_runs = 2\nmax_upload_mb = 0.5\n")
    monkeypatch.setenv("NORA_LAB_CONFIG", str(path))
    limits = load_limits()
    assert limits.max_concurrent_runs == 2
    assert limits.max_upload_bytes == 500_000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits]\nmax_steps = 0\n", "max_steps"),
        ("[limits]\nmax_concurent_runs = 3\n", "unknown key"),
        ("[limits\n", "not valid TOML"),
        ("[limits]\ncpu_threads_per_run = 1.5\n", "cpu_threads_per_run"),
    ],
)
def test_bad_file_rejected(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load_limits(path)
    assert "bad.toml" in str(error.value)


def test_missing_explicit_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_limits(tmp_path / "absent.toml")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_slots_cap_and_release():
    slots = RunSlots(capacity=2, stale_after=10, clock=FakeClock())
    assert slots.acquire("a")
    assert slots.acquire("b")
    assert not slots.acquire("c")
    assert slots.acquire("a")  # renewing a held slot always works
    slots.release("a")
    assert slots.acquire("c")


def test_silent_session_slot_freed():
    clock = FakeClock()
    slots = RunSlots(capacity=1, stale_after=10, clock=clock)
    assert slots.acquire("closed-tab")
    clock.now = 5.0
    assert not slots.acquire("waiting")
    clock.now = 16.0
    assert slots.acquire("waiting")
    assert slots.holders() == 1


def test_slots_thread_safe():
    slots = RunSlots(capacity=3)
    granted = []

    def take(i):
        if slots.acquire(f"s{i}"):
            granted.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 3
