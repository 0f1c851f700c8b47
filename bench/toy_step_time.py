"""NoRA ÷ LoRA training-step time at equal rank on the non-linear toy teacher.

Both adapters train in one process, on the same batches, with one torch thread. The two
methods alternate in short blocks, so a change in machine load hits both alike; the
script prints the median of the per-block ratios.

    python bench/toy_step_time.py --ranks 4,16,64 --blocks 15 --steps 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nora_core import AdapterConfig, adapter_parameters, inject_adapters  # noqa: E402
from nora_core.adapters import reset_adapters  # noqa: E402
from nora_core.tasks.toy import make_toy_task  # noqa: E402


def build(task, method: str, r: int):
    config = AdapterConfig(method=method, r=r, target_modules=task.target_modules)
    model = inject_adapters(task.base_model(), config)
    reset_adapters(model, seed=0)
    return model, torch.optim.AdamW(adapter_parameters(model), lr=3e-3)


def time_block(task, model, optimizer, batches) -> float:
    started = time.perf_counter()
    for batch in batches:
        loss = task.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="4,16,64", help="comma-separated ranks r")
    parser.add_argument("--d", type=int, default=64, help="layer width d")
    parser.add_argument("--batch-size", type=int, default=256, help="examples per step")
    parser.add_argument("--blocks", type=int, default=15, help="alternating timing blocks")
    parser.add_argument("--steps", type=int, default=40, help="steps per block")
    args = parser.parse_args()
    torch.set_num_threads(1)

    task = make_toy_task("nonlinear_teacher", d=args.d)
    generator = torch.Generator().manual_seed(0)
    batches = [task.sample_batch(generator, args.batch_size) for _ in range(args.steps)]
    print(f"non-linear teacher d={args.d}, batch {args.batch_size}, {args.blocks} blocks of "
          f"{args.steps} steps, torch {torch.__version__}, 1 thread")
    print("| r | LoRA ms/step | NoRA ms/step | NoRA ÷ LoRA (median of block ratios) |")
    print("|---|---|---|---|")
    for r in (int(text) for text in args.ranks.split(",")):
        lora, nora = build(task, "lora", r), build(task, "nora", r)
        time_block(task, *lora, batches[:5])  # warm-up
        time_block(task, *nora, batches[:5])
        lora_times, nora_times = [], []
        for _ in range(args.blocks):
            lora_times.append(time_block(task, *lora, batches))
            nora_times.append(time_block(task, *nora, batches))
        ratio = statistics.median(n / l for n, l in zip(nora_times, lora_times))
        per_step = 1000 / args.steps
        print(f"| {r} | {statistics.median(lora_times) * per_step:.3f} | "
              f"{statistics.median(nora_times) * per_step:.3f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
