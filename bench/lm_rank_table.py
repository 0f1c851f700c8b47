"""Final validation loss of LoRA and NoRA at several ranks on each built-in LM task.

For every task and rank, one `PairedTrainer` trains a LoRA and a NoRA adapter on the
bundled model for a fixed number of steps, on the same batches. The script prints a
markdown table of the final validation losses and the mean effective ranks of the
output-view spectra, followed by the wall time.

    python bench/lm_rank_table.py                      # the table in docs/LM.md
    python bench/lm_rank_table.py --tasks sort --ranks 4 64 --steps 300

Both adapters use the same learning rate and lora_alpha = r (scale s = 1), as the NoRA
author's code does for NoRA; nothing is tuned per method or per rank.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nora_core.config import AdapterConfig  # noqa: E402
from nora_core.lm import BUNDLED_MODEL, LMTask, LMTaskConfig, resolve_target_modules  # noqa: E402
from nora_core.trainer import PairedTrainer, TrainConfig  # noqa: E402

TASKS = ("style_shift", "arithmetic", "reverse", "sort")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--ranks", nargs="+", type=int, default=[4, 16, 64])
    parser.add_argument("--steps", type=int, default=120, help="training steps per run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128, help="window or example length, tokens")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--targets", default="attention_qv",
                        help="target preset: attention_qv, attention_all or all_linear")
    parser.add_argument("--n-val", type=int, default=32, help="held-out windows or examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--model", default=BUNDLED_MODEL)
    return parser.parse_args()


def run_pair(task: LMTask, r: int, targets: tuple[str, ...], args: argparse.Namespace) -> dict:
    """Train LoRA and NoRA at rank r for args.steps steps; return losses and effective ranks."""
    configs = {"LoRA": AdapterConfig("lora", r=r, target_modules=targets),
               "NoRA": AdapterConfig("nora", r=r, target_modules=targets)}
    # Evaluate and measure spectra at step 0 and at the last step only.
    train = TrainConfig(lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                        eval_every=args.steps, spectrum_every=args.steps)
    trainer = PairedTrainer(task, configs, train)
    base_loss = trainer.runs["LoRA"].history[0]["val_loss"]
    started = time.perf_counter()
    trainer.advance(args.steps)
    seconds = time.perf_counter() - started
    result = {"base": base_loss, "seconds": seconds}
    for name, run in trainer.runs.items():
        summary = run.last_finite
        result[name] = "diverged" if run.diverged else summary.get("val_loss")
        result[f"{name} rank"] = summary.get("effective_rank_output")
    return result


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return value if isinstance(value, str) else f"{value:.3f}"


def _difference(result: dict) -> str:
    lora, nora = result["LoRA"], result["NoRA"]
    if isinstance(lora, float) and isinstance(nora, float):
        return f"{nora - lora:+.3f}"
    return "n/a"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"model {args.model}, targets {args.targets}, {args.steps} steps, batch "
          f"{args.batch_size}, seq_len {args.seq_len}, lr {args.lr:g}, lora_alpha = r, "
          f"seed {args.seed}, {args.threads} torch thread(s)\n")
    print("| task | r | base loss | LoRA loss | NoRA loss | NoRA − LoRA "
          "| LoRA eff. rank | NoRA eff. rank | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for task_name in args.tasks:
        task = LMTask(LMTaskConfig(task=task_name, model_name=args.model, seq_len=args.seq_len,
                                   n_val=args.n_val, seed=args.seed))
        targets = tuple(resolve_target_modules(task.base_model(), args.targets))
        for r in args.ranks:
            result = run_pair(task, r, targets, args)
            print(f"| {task_name} | {r} | {_cell(result['base'])} | {_cell(result['LoRA'])} "
                  f"| {_cell(result['NoRA'])} | {_difference(result)} "
                  f"| {_cell(result['LoRA rank'])} | {_cell(result['NoRA rank'])} "
                  f"| {result['seconds']:.0f} |", flush=True)
    print(f"\nwall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
