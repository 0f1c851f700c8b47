"""The whole app in a real browser: `streamlit run` on 127.0.0.1, driven by Debian's Chromium
through Playwright. Play, a slider, a shared link, a lesson, a CSV download, and a closed
tab that frees its run slot and trainer on the server."""

from __future__ import annotations

import csv
import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Bounds of the waits, in seconds: the first page load imports torch and builds the task.
START_TIMEOUT = 90
PAGE_TIMEOUT = 60
STEP_PATTERN = re.compile(r"^step (\d+)")

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is missing; install Debian's chromium package to run the "
                "real-browser tests", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")
expect = playwright.expect


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout: float, description: str):
    """Poll `condition` until it returns a true value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {description}")


class Server:
    """A `streamlit run app/main.py` subprocess and its log."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "server.log"
        limits = tmp / "nora_lab.toml"
        # A closed tab is freed 1 s after it disconnects, so the test can watch it happen.
        limits.write_text("[limits]\nstale_after = 1.0\nmax_concurrent_runs = 4\n")
        env = dict(os.environ, NORA_LAB_CONFIG=str(limits), PYTHONUNBUFFERED="1")
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(self.port),
             "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        wait_until(self._healthy, START_TIMEOUT, "the server's health check")

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"streamlit exited early:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("server"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    opened = context.new_page()
    opened.set_default_timeout(PAGE_TIMEOUT * 1000)
    yield opened
    opened.screenshot(path=str(tmp_path / "last.png"))
    context.close()


def _open(page, url: str) -> None:
    page.goto(url)
    expect(page.get_by_text(STEP_PATTERN)).to_be_visible(timeout=START_TIMEOUT * 1000)


def _step(page) -> int:
    return int(STEP_PATTERN.match(page.get_by_text(STEP_PATTERN).inner_text()).group(1))


def test_play_grows_curves(server, page):
    _open(page, server.url)
    assert _step(page) == 0

    page.get_by_role("button", name="Play").click()
    first = wait_until(lambda: _step(page) > 0 and _step(page), PAGE_TIMEOUT, "a first chunk")
    wait_until(lambda: _step(page) > first, PAGE_TIMEOUT, "the step counter to grow again")
    page.get_by_role("button", name="Pause").click()

    expect(page.get_by_text(re.compile(r"paused"))).to_be_visible()
    paused = _step(page)
    assert paused > first
    # Both validation curves have points beyond step 0.
    legend = page.locator(".js-plotly-plot").first
    expect(legend.get_by_text("LoRA validation")).to_be_visible()
    expect(legend.get_by_text("NoRA validation")).to_be_visible()


def test_slider_and_shared_link(server, page, browser):
    _open(page, server.url)

    page.get_by_role("slider", name="rank r (both)").focus()
    page.keyboard.press("ArrowRight")  # r: 8 → 16, the next power of two
    expect(page).to_have_url(re.compile(r"adapter\.r=16"))
    page.get_by_role("slider", name="learning rate").focus()
    page.keyboard.press("ArrowLeft")  # lr: 0.003 → 0.002
    expect(page).to_have_url(re.compile(r"train\.lr=0\.002"))
    page.get_by_role("button", name="Step").click()
    expect(page.get_by_text(STEP_PATTERN)).to_have_text(re.compile(r"^step 10\b"))
    link = page.url

    friend = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    try:
        _open(friend, link)
        expect(friend.get_by_role("slider", name="rank r (both)")).to_have_attribute(
            "aria-valuetext", "16")
        expect(friend.get_by_role("slider", name="learning rate")).to_have_attribute(
            "aria-valuetext", "0.002")
        friend.get_by_role("button", name="Step").click()
        expect(friend.get_by_text(STEP_PATTERN)).to_have_text(re.compile(r"^step 10\b"))
        # Same settings and seed: the same metrics (validation losses, parameter counts,
        # effective ranks), to the digits shown. Metrics of the finished run replace the
        # faded ones of the previous run, so the expectation retries until they match.
        metrics = page.get_by_test_id("stMetricValue")
        expect(metrics).to_have_count(6)
        values = metrics.all_inner_texts()
        assert values[0] != "1.002"  # trained: below the base model's loss
        expect(friend.get_by_test_id("stMetricValue")).to_have_text(values)
    finally:
        friend.context.close()


def test_lesson_opens_playground(server, page):
    _open(page, server.url)

    page.get_by_role("link", name="Lessons").click()
    page.get_by_role("button", name="Start this lesson").first.click()

    expect(page.get_by_text("Lesson: The linear ceiling")).to_be_visible()
    expect(page).to_have_url(re.compile(r"lesson=linear-ceiling"))
    expect(page.get_by_role("slider", name="rank r (both)")).to_have_attribute("aria-valuetext",
                                                                               "16")
    page.get_by_role("button", name="Step").click()
    expect(page.get_by_text(STEP_PATTERN)).to_have_text(re.compile(r"^step 10\b"))


def test_download_curves_csv(server, page):
    _open(page, server.url)
    page.get_by_role("button", name="Step").click()
    expect(page.get_by_text(STEP_PATTERN)).to_have_text(re.compile(r"^step 10\b"))

    page.get_by_text("Export curves and adapters").click()
    with page.expect_download() as download:
        page.get_by_role("button", name="Curves (CSV)").click()

    assert download.value.suggested_filename == "nora_lab_curves.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert {row["run"] for row in rows} == {"LoRA", "NoRA"}
    assert max(int(row["step"]) for row in rows) == 10


def _registered_ids(log: str) -> list[str]:
    return re.findall(r"session (\S+) registered", log)


def test_closed_tab_frees_slot_and_trainer(server, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    known = set(_registered_ids(server.log()))
    _open(tab, server.url)
    session_id = wait_until(lambda: next((i for i in _registered_ids(server.log())
                                          if i not in known), None),
                            PAGE_TIMEOUT, "the new session in the server log")
    tab.get_by_role("button", name="Play").click()
    wait_until(lambda: _step(tab) > 0, PAGE_TIMEOUT, "training to start")
    expect(tab.get_by_text(re.compile(r"Server: 1 of 4 training slots in use"))).to_be_visible()

    context.close()

    freed = wait_until(
        lambda: re.search(rf"freed closed session {re.escape(session_id)}: live trainers (\d+), "
                          r"run slots held (\d+) of 4", server.log()),
        PAGE_TIMEOUT, f"the server to free session {session_id}")
    assert int(freed.group(2)) == 0  # the closed tab's slot is free again
    # Every other test closed its tabs too, so no trainer may be left alive.
    wait_until(lambda: all(f"freed closed session {i}" in server.log()
                           for i in _registered_ids(server.log())),
               PAGE_TIMEOUT, "every closed session to be freed")
    counts = re.findall(r"live trainers (\d+)", server.log())
    assert counts[-1] == "0", server.log()[-2000:]
