"""Check training on a CUDA GPU: bf16 throughput, peak memory and NoRA ÷ LoRA step time.

    python bench/gpu_check.py                      # default: a random ~0.5B-parameter Llama
    python bench/gpu_check.py --layers 4 --hidden 512 --steps 5   # quick look

Builds a randomly initialised Llama from a local config (no download) and loads it in
bfloat16. For LoRA and NoRA at the same rank and targets, it times training steps under
bf16 autocast with float32 adapters, which is the setup `python -m nora_core train` uses
on a GPU.
Then it runs the train command itself for a few steps on the bundled model, and resumes
it, to check the CLI path on the GPU. Without CUDA it prints that and exits 0.
`--device cpu` runs the same script on the CPU with whatever sizes are given, to test it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nora_core import AdapterConfig, adapter_parameters, count_trainable, inject_adapters  # noqa: E402
from nora_core.adapters import adapter_layers  # noqa: E402
from nora_core.device import autocast  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu runs the check without a GPU, for testing the script")
    parser.add_argument("--hidden", type=int, default=1536, help="model width d")
    parser.add_argument("--layers", type=int, default=16, help="decoder blocks")
    parser.add_argument("--heads", type=int, default=16, help="attention heads")
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary size, in tokens")
    parser.add_argument("--seq-len", type=int, default=1024, help="sequence length, in tokens")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    parser.add_argument("--r", type=int, default=64, help="adapter rank")
    parser.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                        help="comma-separated module-name suffixes that get adapters")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--skip-cli", action="store_true", help="skip the train-command check")
    return parser.parse_args()


def build_base(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                         intermediate_size=(8 * args.hidden // 3 + 127) // 128 * 128,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=args.seq_len)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_method(method: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    config = AdapterConfig(method=method, r=args.r, target_modules=tuple(args.targets.split(",")))
    # A fresh base per method, so the peak memory counts one model only.
    model = inject_adapters(build_base(args, device, dtype), config).train()
    for layer in adapter_layers(model):
        layer.lora_A.float()
        layer.lora_B.float()
    optimizer = torch.optim.AdamW(adapter_parameters(model), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch_size, args.seq_len), device=device, generator=generator)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> float:
        with autocast(device):
            logits = model(input_ids=ids).logits  # (B, T, V)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, args.vocab), ids[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    for _ in range(args.warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    synchronize(device)
    seconds = (time.perf_counter() - started) / args.steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    result = {"method": method, "step_s": seconds,
              "tokens_per_s": args.batch_size * args.seq_len / seconds, "peak_gib": peak,
              "trainable": count_trainable(model), "loss": float(loss)}
    del model, optimizer
    return result


def run_cli_check(device: torch.device) -> None:
    """Train the bundled model for 4 steps, then resume from step 2, on `device`."""
    from nora_core.__main__ import main
    from nora_core.lm.corpus import read_play
    from nora_core.lm.models import BUNDLED_MODEL, BUNDLED_MODEL_DIR

    if not (BUNDLED_MODEL_DIR / "config.json").is_file():
        print(f"train command check skipped: {BUNDLED_MODEL_DIR} is missing")
        return
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = root / "tempest.txt"
        data.write_text(read_play("tempest"), encoding="utf-8")
        flags = ["train", "--model", BUNDLED_MODEL, "--data", str(data), "--device", device.type,
                 "--method", "nora", "--lora-dropout", "0.1", "--seq-len", "128", "--batch-size", "8",
                 "--eval-every", "2", "--save-every", "2", "--eval-examples", "32"]
        started = time.perf_counter()
        status = main([*flags, "--max-steps", "4", "--out", str(root / "full")])
        print(f"train command: exit {status} in {time.perf_counter() - started:.1f} s")
        main([*flags, "--max-steps", "2", "--out", str(root / "resumed")])
        main([*flags, "--max-steps", "4", "--out", str(root / "resumed"), "--resume", str(root / "resumed")])
        rows = {name: (root / name / "metrics.jsonl").read_text().splitlines() for name in ("full", "resumed")}
        summary = json.loads((root / "full" / "summary.json").read_text())
        print(f"  val perplexity after 4 steps: {summary['val_perplexity']:.3f}, "
              f"{summary['tokens_per_second']:.0f} tokens/s, device {summary['device']}")
        # NOTE: GPU kernels may sum in a different order between runs, so an exact match is
        # expected on the CPU but only likely on a GPU.
        same = rows["full"] == rows["resumed"]
        print(f"  resumed run matches the uninterrupted one exactly: {same}")


def main() -> int:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no GPU: CUDA is not available to this torch build "
              f"({torch.__version__}); nothing to check. Install a CUDA build of torch on a GPU host.")
        return 0
    device = torch.device(args.device)
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        print(f"GPU: {properties.name}, {properties.total_memory / 2**30:.0f} GiB, "
              f"bf16 supported: {torch.cuda.is_bf16_supported()}, torch {torch.__version__}")
        # As `python -m nora_core train --dtype auto`: bf16 where supported, else float32.
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    else:
        dtype = torch.float32
    n_params = sum(p.numel() for p in build_base(args, torch.device("meta"), dtype).parameters())
    print(f"model: random Llama, {n_params / 1e6:.0f}M parameters in {str(dtype).removeprefix('torch.')}, "
          f"d={args.hidden}, {args.layers} layers; batch {args.batch_size} x {args.seq_len} tokens; "
          f"r={args.r} on {args.targets}")

    results = [time_method(method, args, device, dtype) for method in ("lora", "nora")]
    print(f"{'method':<6} {'step (ms)':>10} {'tokens/s':>12} {'peak (GiB)':>11} {'trainable':>12} {'loss':>8}")
    for row in results:
        print(f"{row['method']:<6} {row['step_s'] * 1e3:>10.1f} {row['tokens_per_s']:>12,.0f} "
              f"{row['peak_gib']:>11.2f} {row['trainable']:>12,} {row['loss']:>8.3f}")
    print(f"NoRA / LoRA step time: {results[1]['step_s'] / results[0]['step_s']:.3f}")

    if not args.skip_cli:
        run_cli_check(device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
