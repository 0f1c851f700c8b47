"""Open N Playground sessions against a local server, press Play in all, and measure.

    python bench/load_sessions.py                         # 30 sessions, 60 s, own server
    python bench/load_sessions.py --client browser --sessions 5 --seconds 30
    python bench/load_sessions.py --url http://127.0.0.1:8501 --server-pid 12345

Without --url it starts `streamlit run app/main.py` on 127.0.0.1 with the given limits.
Two kinds of client:

* `protocol` (default): each session speaks Streamlit's websocket protocol like a browser
  (first run, Play, fragment timers) but draws nothing, so the benchmark machine's CPU goes
  to the server;
* `browser`: each session is a Chromium page in its own browser context, as separate
  students would be. On a small machine the drawing of many pages competes with the server.

After every session has shown its page, all press Play, and the script measures for
--seconds: per session the chart updates per second (changes of the "step N" line), the
steps trained, whether it waits for a run slot, and errors (page errors, console errors,
Python exceptions shown on the page, dropped connections); for the server its resident
memory (RSS from /proc: before, peak, end, and after the sessions closed and were freed)
and the CPU cores it used.

Only 127.0.0.1 or localhost URLs are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import threading
import time

from app_server import (CHROMIUM, CHROMIUM_ARGS, LocalServer, check_local, cpu_seconds,
                        megabytes, open_session, read_counter, shown_exceptions)
from protocol_client import run_sessions


class MemorySampler(threading.Thread):
    """Samples the RSS of a process twice a second and keeps the peak."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()

    def run(self) -> None:
        while self.pid and not self._stop.wait(0.5):
            self.peak = max(self.peak, megabytes(self.pid) or 0.0)

    def stop(self) -> None:
        self._stop.set()


def _fmt(value: float | None, pattern: str = "{:.0f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def browser_sessions(url: str, count: int, seconds: float, open_timeout: float) -> tuple:
    """Run the measurement with Chromium pages; return (rows, open seconds, measured seconds)."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        sessions, failed = [], []
        opened = time.perf_counter()
        for index in range(count):
            try:
                sessions.append(open_session(browser, url, open_timeout))
            except PlaywrightError as error:
                failed.append(f"session {index}: could not open: {str(error).splitlines()[0]}")
        open_seconds = time.perf_counter() - opened
        for page, _ in sessions:
            page.get_by_role("button", name="Play").click()
        counters0 = [read_counter(page) for page, _ in sessions]
        started = time.perf_counter()
        sessions[0][0].wait_for_timeout(seconds * 1000)
        elapsed = time.perf_counter() - started
        for index, ((page, errors), before) in enumerate(zip(sessions, counters0)):
            updates, step = read_counter(page)
            status = page.locator('[data-testid="stMarkdownContainer"] p',
                                  has_text=re.compile(r"^step \d+")).first.inner_text()
            problems = errors + [f"{shown_exceptions(page)} exceptions shown"] * bool(
                shown_exceptions(page))
            rows.append({"updates_per_s": (updates - before[0]) / elapsed,
                         "steps": (step or 0) - (before[1] or 0),
                         "waiting": "waiting for a slot" in status, "errors": problems})
        rows += [{"updates_per_s": 0.0, "steps": 0, "waiting": False, "errors": [line]}
                 for line in failed]
        for page, _ in sessions:
            page.context.close()
        browser.close()
    return rows, open_seconds, elapsed


def protocol_sessions(url: str, count: int, seconds: float) -> tuple:
    """Run the measurement with protocol clients; return (rows, open seconds, measured seconds)."""
    sessions, open_seconds, elapsed = asyncio.run(run_sessions(url, count, seconds))
    rows = [{"updates_per_s": s.updates / elapsed, "steps": s.end_step - s.start_step,
             "waiting": s.waiting, "errors": s.errors} for s in sessions]
    return rows, open_seconds, elapsed


def _wait_for_frees(server: LocalServer, timeout: float) -> int | None:
    """Wait until the server logs that no trainer is alive; return the last count logged."""
    deadline = time.monotonic() + timeout
    found: list[str] = []
    while time.monotonic() < deadline:
        found = re.findall(r"live trainers (\d+)", server.log())
        if found and found[-1] == "0":
            return 0
        time.sleep(0.5)
    return int(found[-1]) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=30, help="Sessions to open.")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="Measuring time after every session pressed Play.")
    parser.add_argument("--client", choices=("protocol", "browser"), default="protocol",
                        help="How each session talks to the server (see above).")
    parser.add_argument("--url", default=None, help="A running server on 127.0.0.1.")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="Process id of the server given by --url, for its memory and CPU.")
    parser.add_argument("--max-runs", type=int, default=4,
                        help="max_concurrent_runs of the server this script starts.")
    parser.add_argument("--stale-after", type=float, default=5.0,
                        help="stale_after of the server this script starts, in seconds.")
    parser.add_argument("--open-timeout", type=float, default=180.0,
                        help="Seconds one browser page may take to show the Playground.")
    args = parser.parse_args()

    server = None
    if args.url is None:
        server = LocalServer({"max_concurrent_runs": args.max_runs, "max_steps": 10_000_000,
                              "stale_after": args.stale_after})
        url, pid = server.url, server.pid
        print(f"started {url} (pid {pid}), max_concurrent_runs = {args.max_runs}; "
              f"log: {server.log_path}")
    else:
        url, pid = check_local(args.url), args.server_pid
    rss_start = megabytes(pid) if pid else None
    sampler = MemorySampler(pid)
    sampler.start()
    cpu0, wall0 = (cpu_seconds(pid) if pid else None), time.perf_counter()

    live, freed_rss = None, None
    try:
        if args.client == "browser":
            rows, open_seconds, elapsed = browser_sessions(url, args.sessions, args.seconds,
                                                           args.open_timeout)
        else:
            rows, open_seconds, elapsed = protocol_sessions(url, args.sessions, args.seconds)
        cpu1, wall1 = (cpu_seconds(pid) if pid else None), time.perf_counter()
        rss_end = megabytes(pid) if pid else None
        if server is not None:
            live = _wait_for_frees(server, args.stale_after * 4 + 30)
            freed_rss = megabytes(pid)
    finally:
        sampler.stop()
        if server is not None:
            server.stop()

    print(f"\n{args.sessions} {args.client} sessions; all pages shown after {open_seconds:.1f} s")
    print(f"{'session':>7} {'updates/s':>9} {'steps':>7} {'waits':>5} {'errors':>6}")
    for index, row in enumerate(rows):
        first = row["errors"][0][:100] if row["errors"] else ""
        print(f"{index:>7} {row['updates_per_s']:>9.2f} {row['steps']:>7} "
              f"{'yes' if row['waiting'] else 'no':>5} {len(row['errors']):>6}  {first}")
    training = [row for row in rows if not row["waiting"]]
    rates = [row["updates_per_s"] for row in training]
    print(f"\nsessions training at the end: {len(training)}; waiting for a slot: "
          f"{len(rows) - len(training)}; sessions that trained at all: "
          f"{sum(row['steps'] > 0 for row in rows)}")
    if rates:
        print(f"chart updates/s of the training sessions: mean {statistics.mean(rates):.2f}, "
              f"min {min(rates):.2f}, max {max(rates):.2f}")
    print(f"steps/s, all sessions together: {sum(row['steps'] for row in rows) / elapsed:.0f}")
    print(f"errors: {sum(len(row['errors']) for row in rows)}")
    if pid:
        cores = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / (wall1 - wall0)
        print(f"server RSS: start {_fmt(rss_start)} MiB, peak {_fmt(sampler.peak)} MiB, end "
              f"{_fmt(rss_end)} MiB, after the sessions closed and were freed "
              f"{_fmt(freed_rss)} MiB; server CPU {_fmt(cores, '{:.2f}')} cores on average")
    if live is not None:
        print(f"live trainers after the sessions closed: {live}")


if __name__ == "__main__":
    main()
