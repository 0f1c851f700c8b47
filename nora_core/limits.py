"""Server limits a teacher sets for a shared NoRA Lab server, and the run-slot gate.

The limits come from a TOML file: the path in the environment variable `NORA_LAB_CONFIG`,
else `nora_lab.toml` in the working directory, else the defaults below. Example:

    [limits]
    max_concurrent_runs = 4
    max_steps = 20000
    max_upload_mb = 5
    cpu_threads_per_run = 1

`RunSlots` lets at most `max_concurrent_runs` sessions train at once. A session keeps its
slot only while it keeps calling `acquire`, as each training chunk does. A slot not renewed
for `stale_after` seconds, such as the slot of a closed browser tab, is freed for the next
session that requests one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from nora_core.fields import check_range

logger = logging.getLogger(__name__)

CONFIG_ENV = "NORA_LAB_CONFIG"
DEFAULT_CONFIG_FILE = "nora_lab.toml"


@dataclass(frozen=True)
class ServerLimits:
    """Limits that protect a shared server; every session obeys the same ones."""

    max_concurrent_runs: int = field(default=4, metadata={
        "help": "Sessions that may train at the same time; the others wait with a message.",
        "min": 1, "max": 256, "unit": "sessions"})
    max_steps: int = field(default=20000, metadata={
        "help": "Training steps one run may take before it stops.", "min": 1,
        "max": 10_000_000, "unit": "steps"})
    max_upload_mb: float = field(default=5.0, metadata={
        "help": "Largest dataset file a user may upload.", "min": 0.001, "max": 1024.0,
        "unit": "MB"})
    cpu_threads_per_run: int = field(default=1, metadata={
        "help": "Torch CPU threads for training; the pool is process-wide, so all runs share "
                "threads of this count.", "min": 1, "max": 256, "unit": "threads"})
    history_size: int = field(default=5, metadata={
        "help": "Finished runs each session keeps for the overlay on the loss chart.",
        "min": 0, "max": 50, "unit": "runs"})
    chunk_seconds: float = field(default=0.25, metadata={
        "help": "Training time per live update of the page.", "min": 0.02, "max": 5.0,
        "unit": "seconds"})
    stale_after: float = field(default=10.0, metadata={
        "help": "Seconds after which the run slot of a silent session (a closed tab) is freed.",
        "min": 1.0, "max": 3600.0, "unit": "seconds"})

    def __post_init__(self) -> None:
        for spec in fields(self):
            meta = spec.metadata
            value = getattr(self, spec.name)
            check_range("ServerLimits", spec.name, value, meta.get("min"), meta.get("max"),
                        integer=spec.type in ("int", int))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)


def load_limits(path: str | os.PathLike | None = None) -> ServerLimits:
    """Read `ServerLimits` from a TOML file's `[limits]` table.

    Args:
        path: the file; None means `$NORA_LAB_CONFIG`, else `./nora_lab.toml` if it exists,
            else the defaults.

    Raises:
        ValueError: for a missing explicit file, invalid TOML, an unknown key or a bad value,
            with the file name in the message.
    """
    explicit = path is not None or os.environ.get(CONFIG_ENV)
    source = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)
    if not source.is_file():
        if explicit:
            raise ValueError(f"limits file {str(source)!r} not found; fix {CONFIG_ENV} or the path")
        return ServerLimits()
    try:
        table = tomllib.loads(source.read_text(encoding="utf-8")).get("limits", {})
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"limits file {str(source)!r} is not valid TOML: {error}") from None
    known = {f.name for f in fields(ServerLimits)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"limits file {str(source)!r} has unknown key(s) {', '.join(unknown)}; "
                         f"valid keys: {', '.join(sorted(known))}")
    try:
        limits = ServerLimits(**table)
    except ValueError as error:
        raise ValueError(f"limits file {str(source)!r}: {error}") from None
    logger.info("server limits from %s: %s", source, limits)
    return limits


class RunSlots:
    """A process-wide gate that lets at most `capacity` sessions train at once.

    Thread-safe: Streamlit runs each session's script in its own thread.
    """

    def __init__(self, capacity: int, stale_after: float = 10.0, clock=time.monotonic) -> None:
        self.capacity = capacity
        self.stale_after = stale_after
        self._clock = clock
        self._lock = threading.Lock()
        self._holders: dict[str, float] = {}  # session id -> time of its last renewal

    def _reap(self, now: float) -> None:
        for session_id, seen in list(self._holders.items()):
            if now - seen > self.stale_after:
                del self._holders[session_id]
                logger.info("freed the run slot of silent session %s", session_id)

    def acquire(self, session_id: str) -> bool:
        """Take or renew a slot for `session_id`; False when all slots are held by others."""
        with self._lock:
            now = self._clock()
            self._reap(now)
            if session_id in self._holders or len(self._holders) < self.capacity:
                self._holders[session_id] = now
                return True
            return False

    def release(self, session_id: str) -> None:
        """Free the slot of `session_id`; do nothing if it has none."""
        with self._lock:
            self._holders.pop(session_id, None)

    def holders(self) -> int:
        """Count the sessions holding a slot now."""
        with self._lock:
            self._reap(self._clock())
            return len(self._holders)
