"""Time one rank sweep trained batched against the same sweep trained one run at a time.

    python bench/sweep_batched.py [--steps 300] [--seeds 3] [--ranks 1,2,4,8,16,32,64]

Both paths train the same runs (LoRA and NoRA on the SiLU-MLP teacher, same seeds) in one
process, with one torch thread each. The script prints wall and CPU times, their ratios
(the goal is at most 0.5) and the largest relative gap between the two paths' validation
losses. On a shared machine the CPU-time ratio is the steadier number.
"""

from __future__ import annotations

import argparse
import time

import torch

from nora_core.sweep import SweepConfig, run_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="Training steps per run. Default: 300.")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per point. Default: 3.")
    parser.add_argument("--ranks", default="1,2,4,8,16,32,64", help="Comma-separated ranks.")
    args = parser.parse_args()

    config = SweepConfig(task="nonlinear_teacher", ranks=tuple(int(r) for r in args.ranks.split(",")),
                         methods=("lora", "nora"), seeds=args.seeds, steps=args.steps)
    # A warm-up run pays the one-time imports (transformers, the optimizer's compiler hooks).
    run_sweep(SweepConfig(task="nonlinear_teacher", ranks=(1,), methods=("lora",), seeds=1, steps=2),
              execution="sequential")

    wall, cpu, results = {}, {}, {}
    for execution in ("batched", "sequential"):
        started, cpu_started = time.perf_counter(), time.process_time()
        results[execution] = run_sweep(config, execution=execution)
        wall[execution] = time.perf_counter() - started
        cpu[execution] = time.process_time() - cpu_started

    gap = max(abs(a["val_loss"] - b["val_loss"]) / abs(b["val_loss"])
              for a, b in zip(results["batched"], results["sequential"]))
    print(f"torch {torch.__version__}, {config.run_count()} runs of {config.steps} steps "
          f"(ranks {args.ranks}, lora+nora, {args.seeds} seed(s))")
    for execution in ("batched", "sequential"):
        print(f"{execution:10}  wall {wall[execution]:7.1f} s   CPU {cpu[execution]:7.1f} s")
    print(f"ratio batched/sequential: wall {wall['batched'] / wall['sequential']:.3f}, "
          f"CPU {cpu['batched'] / cpu['sequential']:.3f} (goal <= 0.5)")
    print(f"largest relative validation-loss gap between the paths: {gap:.2e}")


if __name__ == "__main__":
    main()
