"""Server-wide objects that every session of one `streamlit run` process shares.

These are the only mutable objects shared between sessions, and each is thread-safe:

* the teacher's `ServerLimits`, read once from the TOML file (frozen, read-only);
* the `RunSlots` gate, which lets at most `max_concurrent_runs` sessions train at once;
* the `SessionRegistry`, which frees the trainer of a closed browser tab.

When a tab closes, Streamlit 1.67 stops its script run and keeps the session, session state
included, for `server.disconnectedSessionTTL` seconds (120 by default) in case the browser
reconnects. The registry does not wait that long. A janitor thread queries the Streamlit
runtime for the sessions that are still connected. A disconnected session's training
stops at once, and its run slot and trainer are freed once it has been disconnected for
`ServerLimits.stale_after` seconds. Only
weak references to the sessions' resources are kept here, so a session that Streamlit
drops is freed without the registry.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

import streamlit as st
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from nora_core import monitor
from nora_core.limits import RunSlots, ServerLimits, load_limits

logger = logging.getLogger(__name__)

# Session id outside a script run, e.g. in a thread that Streamlit did not start.
NO_SESSION = "no-session"
TRAINER_KIND = "trainer"

_lock = threading.Lock()
_limits: ServerLimits | None = None
_limits_error: str | None = None
_slots: RunSlots | None = None
_registry: SessionRegistry | None = None
_janitor: threading.Thread | None = None
_logging_configured = False


class Releasable(Protocol):
    """Per-session resources that the server can stop and free from another thread."""

    def stop_training(self, wait: bool = True) -> None:
        """Stop any training of the session; with `wait`, block until it has stopped."""
        ...

    def release_memory(self, reason: str) -> bool:
        """Drop the heavy objects; return False when they are busy and the call must be retried."""
        ...


class SessionRegistry:
    """Weak references to the resources of every session, and the sweep that frees closed ones.

    Args:
        is_active: session id → True while its browser is connected, False once it is
            not, None when this cannot be known (no Streamlit runtime).
        grace: seconds a session must stay disconnected before it is freed; a short
            network drop reconnects within it.
        on_free: called with the session id after its resources were freed.
        clock: the time source, replaceable in tests.
    """

    def __init__(self, is_active: Callable[[str], bool | None], grace: float,
                 on_free: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.is_active = is_active
        self.grace = grace
        self.on_free = on_free
        self._clock = clock
        self._lock = threading.Lock()
        # Session id → the resources of each page it opened (the Playground, the LM page).
        self._entries: dict[str, weakref.WeakSet] = {}
        self._gone_since: dict[str, float] = {}

    def register(self, session_id: str, resources: Releasable) -> None:
        """Track `resources` of `session_id`; a session may register one object per page."""
        with self._lock:
            tracked = self._entries.setdefault(session_id, weakref.WeakSet())
            if resources not in tracked:
                tracked.add(resources)
                logger.info("session %s registered; sessions tracked: %d", session_id,
                            len(self._entries))
            self._gone_since.pop(session_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def sweep(self) -> list[str]:
        """Free the resources of sessions disconnected for longer than `grace`; return their ids."""
        now = self._clock()
        with self._lock:
            entries = [(session_id, list(tracked)) for session_id, tracked in self._entries.items()]
        freed = []
        for session_id, resources in entries:
            if not resources:
                self._forget(session_id)  # Streamlit dropped the session and its state
                continue
            if self.is_active(session_id) is not False:
                with self._lock:
                    self._gone_since.pop(session_id, None)
                continue
            with self._lock:
                first_seen = session_id not in self._gone_since
                since = self._gone_since.setdefault(session_id, now)
            if first_seen:
                # Training stops at once; the memory waits for the grace period, in case
                # the browser reconnects.
                for item in resources:
                    item.stop_training(wait=False)
                logger.info("session %s disconnected: training stopped", session_id)
            if now - since < self.grace:
                continue
            reason = "the browser tab was closed or disconnected"
            busy = [item for item in resources if not item.release_memory(reason)]
            if busy:
                continue  # a chunk still held a lock: the next sweep retries
            self._forget(session_id)
            freed.append(session_id)
            if self.on_free is not None:
                self.on_free(session_id)
        return freed

    def _forget(self, session_id: str) -> None:
        with self._lock:
            self._entries.pop(session_id, None)
            self._gone_since.pop(session_id, None)


def _streamlit_session_active(session_id: str) -> bool | None:
    if not Runtime.exists():
        return None
    answer = Runtime.instance().is_active_session(session_id)
    # AppTest installs a mock runtime, whose methods return mocks instead of booleans.
    return answer if isinstance(answer, bool) else None


def _configure_logging() -> None:
    """Send this app's INFO logs to stderr when running under `streamlit run`.

    Streamlit configures only its own loggers; without a handler the app's slot and
    session messages would be lost. Under AppTest or pytest nothing is changed.
    """
    global _logging_configured
    # AppTest installs a `MagicMock(spec=Runtime)`, which passes isinstance checks.
    if _logging_configured or not Runtime.exists() or type(Runtime.instance()) is not Runtime:
        return
    _logging_configured = True
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("app", "nora_core"):
        target = logging.getLogger(name)
        if not target.handlers:
            target.addHandler(handler)
            target.setLevel(logging.INFO)
            target.propagate = False


def limits() -> ServerLimits:
    """Return the server's limits, read from the TOML file on first use.

    An invalid file is logged and reported by `limits_error`; the defaults apply then.
    """
    global _limits, _limits_error
    with _lock:
        if _limits is None:
            _configure_logging()
            try:
                _limits = load_limits()
            except ValueError as error:
                logger.error("invalid limits file, using the defaults: %s", error)
                _limits_error = str(error)
                _limits = ServerLimits()
        return _limits


def limits_error() -> str | None:
    """Return the error of an invalid limits file, or None."""
    limits()
    return _limits_error


def reload_limits(new: ServerLimits | None = None) -> ServerLimits:
    """Replace the limits (from `new`, else from the file again) and rebuild the slot gate.

    Meant for tests and benchmarks that change the limits inside one process. Sessions
    that hold a slot lose it and take a new one on their next chunk.
    """
    global _limits, _limits_error, _slots
    with _lock:
        _limits, _limits_error, _slots = new, None, None
    current = limits()
    if _registry is not None:
        _registry.grace = current.stale_after
    return current


def show_limits_error() -> None:
    """Draw the error of an invalid limits file, for the teacher to fix."""
    error = limits_error()
    if error:
        st.error(f"The server's limits file is invalid, so the default limits apply: {error}")


def run_slots() -> RunSlots:
    """Return the process-wide run-slot gate sized by the limits."""
    global _slots
    current = limits()
    with _lock:
        if _slots is None:
            _slots = RunSlots(current.max_concurrent_runs, stale_after=current.stale_after)
        return _slots


def session_id() -> str:
    """Return the Streamlit session id of the running script, or `NO_SESSION`."""
    ctx = get_script_run_ctx(suppress_warning=True)
    return ctx.session_id if ctx is not None else NO_SESSION


def _after_free(session_id_: str) -> None:
    run_slots().release(session_id_)
    rss = monitor.rss_bytes()
    logger.info("freed closed session %s: live trainers %d, run slots held %d of %d, RSS %s MB",
                session_id_, monitor.live_count(TRAINER_KIND), run_slots().holders(),
                run_slots().capacity, "n/a" if rss is None else f"{rss / 2**20:.0f}")


def registry() -> SessionRegistry:
    """Return the process-wide session registry, starting its janitor thread on first use."""
    global _registry, _janitor
    grace = limits().stale_after
    with _lock:
        if _registry is None:
            _registry = SessionRegistry(_streamlit_session_active, grace, on_free=_after_free)
        if _janitor is None or not _janitor.is_alive():
            _janitor = threading.Thread(target=_sweep_forever, args=(_registry,),
                                        name="nora-lab-janitor", daemon=True)
            _janitor.start()
        return _registry


def _sweep_forever(target: SessionRegistry) -> None:
    while True:
        # Sweeping a few times per grace period frees a closed tab within about 1.25 × grace.
        time.sleep(max(0.2, min(2.0, target.grace / 4)))
        try:
            target.sweep()
        except Exception:  # noqa: BLE001 - the janitor must outlive any one failed sweep
            logger.exception("session sweep failed")


def register_session(resources: Releasable) -> None:
    """Let the server stop and free `resources` once this session's browser tab is gone.

    Args:
        resources: an object with `stop_training(wait)` and `release_memory(reason)`; a
            page registers its own on every run (registering again costs a set lookup).
    """
    registry().register(session_id(), resources)


def track_trainer(trainer: object) -> None:
    """Count `trainer` among the live trainers (a weak reference)."""
    monitor.track(trainer, TRAINER_KIND)


def status_line() -> str:
    """Return a one-line server status: runs training, the limit, and the server's memory."""
    slots = run_slots()
    rss = monitor.rss_bytes()
    memory = "" if rss is None else f" · server memory {rss / 2**30:.2f} GB"
    sessions = len(registry())
    return (f"Server: {slots.holders()} of {slots.capacity} training slots in use · "
            f"{sessions} session{'' if sessions == 1 else 's'}{memory}")
