"""Shared helpers of the AppTest suites: start a page, read the step counter, join messages."""

from __future__ import annotations

import re
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from app.ui import session

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "app" / "main.py"
# The first run imports torch and builds the task; later runs take about a second.
TIMEOUT = 120


def start(query: dict[str, str] | None = None) -> AppTest:
    """Run the app's default page once, optionally opened with URL query parameters."""
    app = AppTest.from_file(str(MAIN), default_timeout=TIMEOUT)
    if query:
        app.query_params.update(query)
    app.run()
    assert not app.exception, app.exception
    return app


def step_count(app: AppTest) -> int:
    """Return the number in the "**step N**" status line."""
    for element in app.markdown:
        found = re.match(r"\*\*step (\d+)\*\*", element.value)
        if found:
            return int(found.group(1))
    raise AssertionError("no step counter on the page")


def texts(elements) -> str:
    """Join the values of message elements (errors, warnings, ...) into one string."""
    return "\n".join(str(element.value) for element in elements)


def trainer(app: AppTest):
    """Return the playground trainer of an AppTest session."""
    return app.session_state[session.RESOURCES].trainer


def wait_for_step(current, minimum: int, timeout: float = 60.0) -> int:
    """Wait until the training thread has taken `current` (a trainer) to `minimum` steps.

    Play trains in a background thread, so an AppTest run returns before it has trained.
    """
    deadline = time.monotonic() + timeout
    while current.step < minimum:
        if time.monotonic() > deadline:
            raise AssertionError(f"the trainer is at step {current.step} after {timeout} s; "
                                 f"expected at least {minimum}")
        time.sleep(0.05)
    return current.step
