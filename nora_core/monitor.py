"""Process-level counters for a shared server: live objects by kind, and resident memory.

`track(obj, kind)` keeps a weak reference, so tracking never keeps an object alive.
`live_count(kind)` runs the garbage collector first and counts what is left, which shows
whether the trainer of a closed browser tab was really freed. `rss_bytes` reads the
resident set size from /proc (Linux only).
"""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from pathlib import Path

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_live: dict[str, weakref.WeakSet] = {}


def track(obj: object, kind: str) -> None:
    """Count `obj` under `kind` for as long as something else keeps it alive.

    Args:
        obj: any object that supports weak references (a `PairedTrainer`, an `nn.Module`).
        kind: the counter name, e.g. "trainer".
    """
    with _lock:
        _live.setdefault(kind, weakref.WeakSet()).add(obj)


def live_count(kind: str, collect: bool = True) -> int:
    """Return how many tracked objects of `kind` are still alive.

    Args:
        kind: the counter name given to `track`.
        collect: run `gc.collect()` first, so objects kept only by reference cycles count
            as freed.
    """
    if collect:
        gc.collect()
    with _lock:
        return len(_live.get(kind, ()))


def rss_bytes(pid: int | str = "self") -> int | None:
    """Return the resident set size of process `pid` in bytes, or None where /proc is missing.

    Args:
        pid: a process id, or "self" for this process.
    """
    status = Path(f"/proc/{pid}/status")
    try:
        text = status.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            # The kernel reports the value in kB (units of 1024 bytes).
            return int(line.split()[1]) * 1024
    return None
