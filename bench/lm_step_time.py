"""Training-step time of our LoRA against PEFT's LoRA, and of NoRA against our LoRA.

All three adapters go into copies of the bundled model, with the same rank, lora_alpha,
targets, batch size and batches. PEFT's lora_A starts as a copy of ours, so the two LoRA
runs compute the same losses, and the script prints the largest difference as a check. A
step is forward, cross-entropy, backward and an AdamW update. Repetitions are
interleaved (ours, PEFT, NoRA, ours, ...) so that load from other processes hits all
three alike, and the report gives medians.

    python bench/lm_step_time.py
    python bench/lm_step_time.py --r 64 --targets all_linear --batch-size 8
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nora_core.adapters import adapter_layers, adapter_parameters, inject_adapters  # noqa: E402
from nora_core.config import AdapterConfig  # noqa: E402
from nora_core.lm import (BUNDLED_MODEL, LMTask, LMTaskConfig, causal_lm_loss,  # noqa: E402
                          resolve_target_modules, target_suffixes)

IMPLEMENTATIONS = ("ours LoRA", "PEFT LoRA", "ours NoRA")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--targets", default="attention_qv",
                        help="target preset: attention_qv, attention_all or all_linear")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128, help="window length, tokens")
    parser.add_argument("--repetitions", type=int, default=30)
    parser.add_argument("--steps-per-repetition", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per implementation")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--model", default=BUNDLED_MODEL)
    return parser.parse_args()


def build_models(task: LMTask, args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """Return the three adapted models; PEFT's lora_A is copied from ours."""
    base = task.base_model()
    modules = tuple(resolve_target_modules(base, args.targets))
    suffixes = target_suffixes(base, args.targets)

    ours = inject_adapters(copy.deepcopy(base), AdapterConfig(
        "lora", r=args.r, lora_alpha=args.r, target_modules=modules))
    nora = inject_adapters(copy.deepcopy(base), AdapterConfig(
        "nora", r=args.r, lora_alpha=args.r, target_modules=modules))
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(
        r=args.r, lora_alpha=args.r, lora_dropout=0.0, target_modules=suffixes, bias="none"))

    ours_layers = {layer.name: layer for layer in adapter_layers(ours)}
    nora_layers = {layer.name: layer for layer in adapter_layers(nora)}
    copied = 0
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if isinstance(module, LoraLayer):
                layer_name = name.removeprefix("base_model.model.")
                weight = ours_layers[layer_name].lora_A.weight
                module.lora_A["default"].weight.copy_(weight)
                nora_layers[layer_name].lora_A.weight.copy_(weight)
                copied += 1
    if copied != len(ours_layers):
        raise RuntimeError(f"PEFT adapted {copied} layers, ours {len(ours_layers)}")
    return {"ours LoRA": ours, "PEFT LoRA": peft_model, "ours NoRA": nora}


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Return the parameters an optimiser updates."""
    if any(True for _ in adapter_layers(model)):
        return adapter_parameters(model)
    return [p for p in model.parameters() if p.requires_grad]


def train_steps(model, optimizer, batches) -> tuple[float, list[float]]:
    """Run one training step per batch; return the seconds per step and the losses."""
    losses = []
    started = time.perf_counter()
    for batch in batches:
        loss = causal_lm_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return (time.perf_counter() - started) / len(batches), losses


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    task = LMTask(LMTaskConfig(task="style_shift", model_name=args.model, seq_len=args.seq_len))
    models = build_models(task, args)
    counts = {name: sum(p.numel() for p in trainable(m)) for name, m in models.items()}
    if counts["ours LoRA"] != counts["PEFT LoRA"]:
        raise RuntimeError(f"trainable parameter counts differ: {counts}")
    optimizers = {}
    for name, model in models.items():
        model.train()
        optimizers[name] = torch.optim.AdamW(trainable(model), lr=args.lr)

    generator = torch.Generator().manual_seed(0)
    total = args.warmup + args.repetitions * args.steps_per_repetition
    batches = [task.sample_batch(generator, args.batch_size) for _ in range(total)]
    losses: dict[str, list[float]] = {name: [] for name in models}
    for name in IMPLEMENTATIONS:
        _, warm = train_steps(models[name], optimizers[name], batches[: args.warmup])
        losses[name] += warm

    times: dict[str, list[float]] = {name: [] for name in models}
    for repetition in range(args.repetitions):
        start = args.warmup + repetition * args.steps_per_repetition
        chunk = batches[start : start + args.steps_per_repetition]
        # Rotate the order, so no implementation always runs right after another one.
        order = IMPLEMENTATIONS[repetition % 3:] + IMPLEMENTATIONS[: repetition % 3]
        for name in order:
            seconds, chunk_losses = train_steps(models[name], optimizers[name], chunk)
            times[name].append(seconds)
            losses[name] += chunk_losses

    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio_peft = statistics.median(a / b for a, b in zip(times["ours LoRA"], times["PEFT LoRA"]))
    ratio_nora = statistics.median(a / b for a, b in zip(times["ours NoRA"], times["ours LoRA"]))
    gap = max(abs(a - b) for a, b in zip(losses["ours LoRA"], losses["PEFT LoRA"]))

    print(f"model {args.model}, targets {args.targets}, r={args.r}, lora_alpha={args.r}, batch "
          f"{args.batch_size} x {args.seq_len} tokens, {args.threads} torch thread(s), "
          f"{args.repetitions} interleaved repetitions of {args.steps_per_repetition} steps")
    for name in IMPLEMENTATIONS:
        print(f"  {name:9s}: median {medians[name] * 1000:7.1f} ms/step, "
              f"{counts[name]:,} trainable parameters, last loss {losses[name][-1]:.4f}")
    print(f"ours LoRA / PEFT LoRA step time: {ratio_peft:.3f} (median of per-repetition ratios; "
          f"ratio of medians {medians['ours LoRA'] / medians['PEFT LoRA']:.3f})")
    print(f"ours NoRA / ours LoRA step time: {ratio_nora:.3f} (median of per-repetition ratios; "
          f"ratio of medians {medians['ours NoRA'] / medians['ours LoRA']:.3f})")
    print(f"largest |loss(ours LoRA) - loss(PEFT LoRA)| over {len(losses['ours LoRA'])} steps: "
          f"{gap:.2e}")


if __name__ == "__main__":
    main()
