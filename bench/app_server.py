"""Helpers of the app benchmarks: a local `streamlit run` server, Chromium pages that count
chart updates, and process memory from /proc.

Only 127.0.0.1 and localhost are accepted as targets: these benchmarks load a server
hard and must never point at anyone else's.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nora_core.monitor import rss_bytes  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LOCAL_HOSTS = ("127.0.0.1", "localhost")
STEP_PATTERN = re.compile(r"^step (\d+)")

# Counts every change of the "step N" status line: one per redraw of the live panel
# that shows new training, which is one chart update.
COUNTER_SCRIPT = r"""
() => {
  window.__noraUpdates = 0;
  window.__noraStep = null;
  const read = () => {
    for (const node of document.querySelectorAll('[data-testid="stMarkdownContainer"] strong')) {
      const found = /^step (\d+)$/.exec(node.textContent);
      if (found) { return Number(found[1]); }
    }
    return null;
  };
  const observer = new MutationObserver(() => {
    const step = read();
    if (step !== null && step !== window.__noraStep) {
      window.__noraStep = step;
      window.__noraUpdates += 1;
    }
  });
  observer.observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""


def check_local(url: str) -> str:
    """Return `url` without a trailing slash; raise ValueError unless it is on this machine."""
    host = urllib.parse.urlparse(url).hostname
    if host not in LOCAL_HOSTS:
        raise ValueError(f"refusing to load {url!r}: only http://127.0.0.1 or localhost URLs "
                         "are allowed")
    return url.rstrip("/")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalServer:
    """`streamlit run app/main.py` on 127.0.0.1 with the given `[limits]` table.

    Args:
        limits: keys and values of the limits file, e.g. {"max_concurrent_runs": 4}.
        log_path: where the server's output goes; a temporary file when None.
    """

    def __init__(self, limits: dict[str, float | int], log_path: Path | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="nora_bench_"))
        config = self.folder / "nora_lab.toml"
        config.write_text("[limits]\n" + "".join(f"{k} = {v}\n" for k, v in limits.items()))
        self.log_path = log_path or self.folder / "server.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, NORA_LAB_CONFIG=str(config), PYTHONUNBUFFERED="1")
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(self.port),
             "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not self._healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {self.log_path}")
            time.sleep(0.2)

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {self.process.returncode}; see {self.log_path}")
        try:
            with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def cpu_seconds(pid: int) -> float | None:
    """Return user + system CPU seconds of process `pid` from /proc, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # Fields 14 and 15 of /proc/<pid>/stat (utime, stime), counted after the ")" of comm.
    return (int(fields[11]) + int(fields[12])) / ticks


def child_pids(pid: int) -> list[int]:
    """Return the ids of every descendant process of `pid`, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def lower_priority(pids: list[int], niceness: int = 19) -> None:
    """Give processes the lowest CPU priority, so they use only CPU the server leaves idle."""
    for pid in pids:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, niceness)
        except OSError:
            pass


def megabytes(pid: int) -> float | None:
    """Return the resident memory of `pid` in MiB, or None."""
    value = rss_bytes(pid)
    return None if value is None else value / 2**20


def open_session(browser, url: str, timeout_s: float = 120.0):
    """Open `url` in a fresh browser context, wait for the step counter, install the counter."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda message: errors.append(f"console: {message.text}")
            if message.type == "error" else None)
    page.goto(url, timeout=timeout_s * 1000)
    page.get_by_text(STEP_PATTERN).wait_for(timeout=timeout_s * 1000)
    page.evaluate(COUNTER_SCRIPT)
    return page, errors


def read_counter(page) -> tuple[int, int | None]:
    """Return (chart updates counted, last step seen) of a page set up by `open_session`."""
    return page.evaluate("() => [window.__noraUpdates, window.__noraStep]")


def shown_exceptions(page) -> int:
    """Count the Python exceptions Streamlit shows on the page."""
    return page.locator('[data-testid="stException"]').count()
