"""In-app training throughput ÷ headless `PairedTrainer` throughput, for the same run.

    python bench/app_throughput.py                # 20 s each, default Playground settings
    python bench/app_throughput.py --seconds 40 --chunk-seconds 0.5

First trains the Playground's default run (non-linear teacher, LoRA and NoRA at r = 8)
headless for `--seconds`, with the same torch thread count as the app. Then starts
`streamlit run` on 127.0.0.1, opens the Playground in Chromium, presses Play and counts
the steps the app trains in the same time. Last it trains headless once more, so a change
of the machine's load shows as two different headless rates. Evaluation and spectra are
part of every measurement.

The browser runs on the same machine as the server, where its drawing would take CPU from
training; on a classroom server the browsers are elsewhere. So Chromium runs at the
lowest CPU priority (nice 19) unless `--same-priority` is given.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from playwright.sync_api import sync_playwright

from app_server import (CHROMIUM, CHROMIUM_ARGS, LocalServer, child_pids, cpu_seconds,
                        lower_priority, open_session, read_counter)
from nora_core.config import AdapterConfig
from nora_core.tasks.toy import make_toy_task
from nora_core.trainer import PairedTrainer, TrainConfig


def headless_rate(seconds: float, threads: int) -> tuple[float, float]:
    """Return steps per wall-clock second and per CPU second of the default run, without the app."""
    torch.set_num_threads(threads)
    task = make_toy_task("nonlinear_teacher")
    configs = {"LoRA": AdapterConfig(method="lora", r=8, activation="identity"),
               "NoRA": AdapterConfig(method="nora", r=8)}
    trainer = PairedTrainer(task, configs, TrainConfig())
    trainer.advance(20)  # warm-up: first SVDs and kernels
    start_step, started, cpu = trainer.step, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        trainer.advance(10_000, max_seconds=0.25)
    steps = trainer.step - start_step
    return steps / (time.perf_counter() - started), steps / (time.process_time() - cpu)


def app_rate(seconds: float, limits: dict, nice_browser: bool) -> dict:
    """Press Play in a real browser and measure steps and chart updates per second."""
    server = LocalServer(limits)
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page, errors = open_session(browser, server.url)
            if nice_browser:
                server_side = {server.pid, *child_pids(server.pid), os.getpid()}
                lower_priority([pid for pid in child_pids(os.getpid()) if pid not in server_side])
            page.get_by_role("button", name="Play").click()
            # Start the clock at the first trained chunk, so page start-up is not counted.
            page.wait_for_function("() => window.__noraStep > 0", timeout=60_000)
            updates0, step0 = read_counter(page)
            cpu0, started = cpu_seconds(server.pid), time.perf_counter()
            page.wait_for_timeout(seconds * 1000)
            updates1, step1 = read_counter(page)
            elapsed = time.perf_counter() - started
            cpu1 = cpu_seconds(server.pid)
            page.get_by_role("button", name="Pause").click()
            browser.close()
    finally:
        server.stop()
    return {"steps_per_second": (step1 - step0) / elapsed,
            "steps_per_cpu_second": (step1 - step0) / (cpu1 - cpu0),
            "updates_per_second": (updates1 - updates0) / elapsed,
            "server_cpu_share": (cpu1 - cpu0) / elapsed,
            "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="Measuring time of each part.")
    parser.add_argument("--chunk-seconds", type=float, default=None,
                        help="ServerLimits.chunk_seconds for the app; default: the app default.")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads (cpu_threads_per_run).")
    parser.add_argument("--same-priority", action="store_true",
                        help="Leave Chromium at normal CPU priority.")
    args = parser.parse_args()

    before, before_cpu = headless_rate(args.seconds, args.threads)
    print(f"headless PairedTrainer, before: {before:.1f} steps/s, {before_cpu:.1f} steps per CPU s")
    limits = {"cpu_threads_per_run": args.threads, "max_steps": 10_000_000}
    if args.chunk_seconds is not None:
        limits["chunk_seconds"] = args.chunk_seconds
    measured = app_rate(args.seconds, limits, nice_browser=not args.same_priority)
    print(f"in-app (Play in Chromium): {measured['steps_per_second']:.1f} steps/s, "
          f"{measured['steps_per_cpu_second']:.1f} steps per server CPU s, "
          f"{measured['updates_per_second']:.2f} chart updates/s, server CPU "
          f"{measured['server_cpu_share']:.2f} cores")
    after, after_cpu = headless_rate(args.seconds, args.threads)
    print(f"headless PairedTrainer, after: {after:.1f} steps/s, {after_cpu:.1f} steps per CPU s")
    wall = measured["steps_per_second"] / ((before + after) / 2)
    cpu = measured["steps_per_cpu_second"] / ((before_cpu + after_cpu) / 2)
    print(f"ratio in-app / headless, wall clock: {wall:.2f}; per CPU second: {cpu:.2f} "
          "(goal >= 0.8; the CPU ratio does not depend on other load on the machine)")
    if measured["errors"]:
        print("browser errors:", *measured["errors"][:5], sep="\n  ")


if __name__ == "__main__":
    main()
