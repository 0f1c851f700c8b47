"""Pre-train the bundled tiny byte-level Llama on the six Shakespeare tragedies.

Writes data/models/tiny-shakespeare/: model.safetensors, config.json, the tokenizer config
and a README.md with the command, the step count, the wall time and the final losses.
The run is seeded; the wall time depends on the machine.

    python scripts/pretrain_tiny_lm.py            # full run
    python scripts/pretrain_tiny_lm.py --steps 20 --out /tmp/tiny-check   # quick check
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

# OpenMP threads that sleep instead of spinning while they wait: on a CPU shared with
# other jobs, spinning threads slowed each step several-fold in measurements here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nora_core.lm.batches import causal_lm_loss, mean_loss, window_batch  # noqa: E402
from nora_core.lm.corpus import COMEDIES, TRAGEDIES, WindowSampler, load_play_splits, tiled_windows  # noqa: E402
from nora_core.lm.generation import generate  # noqa: E402
from nora_core.lm.models import BUNDLED_MODEL_DIR, count_parameters, tiny_llama_config  # noqa: E402
from nora_core.lm.tokenizer import load_byte_tokenizer  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=900, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per step")
    parser.add_argument("--seq-len", type=int, default=256, help="window length in bytes")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    parser.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between validation runs")
    parser.add_argument("--val-windows", type=int, default=64, help="held-out windows per validation run")
    parser.add_argument("--seed", type=int, default=0, help="seed of init and batch sampling")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=BUNDLED_MODEL_DIR, help="output folder")
    return parser.parse_args()


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def token_segments(tokenizer, parts: list[str]) -> list[torch.Tensor]:
    return [torch.tensor(tokenizer(p, add_special_tokens=False)["input_ids"], dtype=torch.long) for p in parts]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    tokenizer = load_byte_tokenizer()
    config = tiny_llama_config()
    model = LlamaForCausalLM(config)
    print(f"model: {count_parameters(model):,} parameters, d={config.hidden_size}, layers={config.num_hidden_layers}")

    train_text, val_text = load_play_splits(TRAGEDIES)
    _, comedy_val_text = load_play_splits(COMEDIES)
    sampler = WindowSampler(token_segments(tokenizer, train_text), args.seq_len)
    val_windows = tiled_windows(token_segments(tokenizer, val_text), args.seq_len, args.val_windows)
    comedy_windows = tiled_windows(token_segments(tokenizer, comedy_val_text), args.seq_len, args.val_windows)
    val_batches = [window_batch(val_windows[i : i + 32]) for i in range(0, len(val_windows), 32)]
    comedy_batches = [window_batch(comedy_windows[i : i + 32]) for i in range(0, len(comedy_windows), 32)]
    print(f"train bytes: {sum(len(t) for t in train_text):,}, val windows: {len(val_windows)} x {args.seq_len}")

    # No weight decay on norms: decaying RMSNorm gains toward 0 only hurts a short run.
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": args.weight_decay}, {"params": vectors, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    generator = torch.Generator().manual_seed(args.seed)

    start = time.time()
    model.train()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        batch = window_batch(sampler.sample(generator, args.batch_size))
        loss = causal_lm_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  lr {learning_rate(step, args):.2e}  {time.time() - start:6.1f}s", flush=True)
        if (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            print(f"  val loss (tragedies) {mean_loss(model, val_batches):.4f}", flush=True)
    seconds = time.time() - start

    val_loss = mean_loss(model, val_batches)
    comedy_loss = mean_loss(model, comedy_batches)
    print(f"done: {args.steps} steps in {seconds:.1f}s; val loss tragedies {val_loss:.4f}, comedies {comedy_loss:.4f}")
    model.eval()
    samples = {
        prompt: generate(model, tokenizer, prompt, max_new_tokens=200, temperature=t, seed=args.seed)
        for prompt, t in (("Ham.\n", 0.0), ("Rom.\nO ", 0.8))
    }
    for prompt, text in samples.items():
        print(f"--- sample after {prompt!r}:\n{prompt}{text}")

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    write_readme(args, seconds, val_loss, comedy_loss, count_parameters(model), samples)
    print(f"saved to {args.out}")


def cpu_name() -> str:
    """Return the CPU model from /proc/cpuinfo (Linux), else what `platform` reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_readme(
    args: argparse.Namespace, seconds: float, val_loss: float, comedy_loss: float, n_parameters: int, samples: dict
) -> None:
    command = "python scripts/pretrain_tiny_lm.py " + " ".join(sys.argv[1:])
    sample_text = "\n\n".join(f"Prompt {p!r}:\n\n```\n{p}{t}\n```" for p, t in samples.items())
    machine = f"{platform.machine()}, {cpu_name()}, {os.cpu_count()} cores, {args.threads} torch threads"
    # Other jobs on a shared CPU stretch the wall time, so the load is part of the record.
    machine += f", 15-minute load average {os.getloadavg()[2]:.1f} at the end"
    readme = f"""# tiny-shakespeare

A byte-level Llama-style causal language model ({n_parameters:,} parameters: width 128,
4 layers, 4 heads, SwiGLU MLP of width 344, tied input/output embeddings, RoPE,
512 positions) pre-trained on six Shakespeare tragedies:
{", ".join(TRAGEDIES)}.
It is the bundled base model of NoRA Lab: small enough to fine-tune adapters on a CPU
in minutes, and trained only on tragedies so that adapting it to the comedies is a
visible style shift.

Tokenizer: `ByT5Tokenizer(extra_ids=0)`, ids 0/1/2 = pad/eos/unk, byte b = id b + 3
(vocabulary 259). The last 10 % of each play is held out for validation.

## Training

- Command: `{command.strip()}`
- Steps: {args.steps}, batch {args.batch_size} windows of {args.seq_len} bytes, AdamW
  (peak learning rate {args.lr}, {args.warmup} warm-up steps, cosine decay to a tenth,
  weight decay {args.weight_decay}, gradient clipping 1.0), seed {args.seed}
- Wall time: {seconds:.0f} s on {machine}
- Final validation loss (nats per byte): tragedies {val_loss:.4f}, comedies {comedy_loss:.4f}
  (uniform over 259 ids: {math.log(259):.4f})

## Samples

{sample_text}
"""
    (args.out / "README.md").write_text(readme, encoding="utf-8")


if __name__ == "__main__":
    main()
