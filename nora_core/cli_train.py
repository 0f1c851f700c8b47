"""`python -m nora_core train`: fine-tune a causal LM with a LoRA or NoRA adapter.

The same command runs in one process or data-parallel under `torchrun --nproc_per_node=N`
or `accelerate launch` (see `nora_core.distributed`). Only rank 0 logs progress and
writes files. The output folder contains:

* metrics.jsonl: one row per step with the train loss, plus the validation loss and
  perplexity at evaluation steps. Step 0 is the base model.
* checkpoints/step-NNNNNN/: the adapter and training_state.pt (optimizer, step, RNG states).
* adapter/: the final adapter, for `nora_core.io.load_adapter`.
* spectra.json: output-view spectra of the final adapter.
* summary.json: final numbers of the run.

A resumed run ends with the same numbers as an uninterrupted run on the same number of
processes, bit for bit where the kernels are deterministic (as on the CPU). The batch of
every step follows from (seed, step), and the checkpoint restores the optimizer and every
RNG state.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import torch

from nora_core.adapters import count_trainable, inject_adapters
from nora_core.config import AdapterConfig
from nora_core.device import autocast_dtype
from nora_core.distributed import init_distributed, shutdown
from nora_core.fields import add_arguments, config_from_namespace
from nora_core.io import AdapterLoadError
from nora_core.lm.models import BUNDLED_MODEL, ModelLoadError, load_base_model
from nora_core.lm.targets import TARGET_PRESETS, resolve_target_modules
from nora_core.train_data import DataError
from nora_core.train_loop import CHECKPOINTS_DIR, TrainingRun, find_checkpoint
from nora_core.trainer import TrainConfig

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

EPILOG = """examples:
  python -m nora_core train --data notes.txt --method nora --r 8 --max-steps 200 --out runs/nora
  torchrun --standalone --nproc_per_node=4 -m nora_core train --data train.jsonl --out runs/ddp
  python -m nora_core train --data notes.txt --out runs/nora --resume runs/nora --max-steps 400
"""


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the "train" subcommand to `subparsers` and return its parser."""
    parser = subparsers.add_parser(
        "train", help="fine-tune a causal LM with a LoRA or NoRA adapter",
        description="Fine-tune a causal language model with a LoRA or NoRA adapter. Runs in one "
                    "process, or data-parallel under torchrun or accelerate launch.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)

    source = parser.add_argument_group("model and data")
    source.add_argument("--model", default=BUNDLED_MODEL, metavar="NAME_OR_PATH",
                        help="Base causal LM: 'bundled:tiny-shakespeare', a folder written by "
                             "save_pretrained, or a Hugging Face hub id. Default: %(default)s.")
    source.add_argument("--allow-download", action="store_true",
                        help="Download a hub model that is not in the local cache.")
    source.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="Weight dtype of the frozen base model; auto means bfloat16 on GPUs "
                             "that support it, float32 elsewhere. Adapters always train in "
                             "float32. Default: %(default)s.")
    source.add_argument("--data", required=True, metavar="FILE_OR_NAME",
                        help="Training data: a JSONL file of {\"prompt\", \"response\"} objects, a "
                             "plain-text file, or a hub dataset (MathInstruct, SlimOrca or "
                             "owner/name; needs the datasets package and network). A tenth is "
                             "held out for validation.")
    source.add_argument("--seq-len", type=_int_at_least(2), default=256, metavar="TOKENS",
                        help="Maximum example length; plain text is cut into windows of this length. "
                             "Unit: tokens. Default: %(default)s.")
    source.add_argument("--eval-examples", type=_int_at_least(1), default=256, metavar="N",
                        help="Most validation examples evaluated. Unit: examples. "
                             "Default: %(default)s.")

    adapter = parser.add_argument_group("adapter")
    add_arguments(adapter, AdapterConfig, skip=("target_modules",))
    adapter.add_argument("--targets", default="all_linear", metavar="PRESET_OR_LIST",
                         help=f"Layers that get adapters: a preset ({', '.join(TARGET_PRESETS)}) or "
                              "comma-separated module-name suffixes such as q_proj,v_proj. "
                              "Default: %(default)s.")

    optimisation = parser.add_argument_group("optimisation")
    add_arguments(optimisation, TrainConfig, skip=("spectrum_every",))
    parser.set_defaults(lr=1e-3, batch_size=8, eval_every=50, device="auto")

    schedule = parser.add_argument_group("schedule and output")
    schedule.add_argument("--max-steps", type=_int_at_least(0), default=None, metavar="STEPS",
                          help="Total optimizer steps, counting those before a resume; overrides "
                               "--epochs. Unit: steps. Default: the steps of --epochs passes.")
    schedule.add_argument("--epochs", type=_int_at_least(1), default=1, metavar="N",
                          help="Passes over the training split when --max-steps is not given. "
                               "Unit: epochs. Default: %(default)s.")
    schedule.add_argument("--save-every", type=_int_at_least(0), default=100, metavar="STEPS",
                          help="Steps between checkpoints; 0 writes only the final one. "
                               "Unit: steps. Default: %(default)s.")
    schedule.add_argument("--out", type=Path, default=Path("runs/train"), metavar="DIR",
                          help="Output folder for metrics, checkpoints, the final adapter and "
                               "spectra. Default: %(default)s.")
    schedule.add_argument("--resume", type=Path, default=None, metavar="DIR",
                          help="Continue from a checkpoint folder, or from the newest checkpoint "
                               "in an output folder. Pass the same settings as the first run.")
    schedule.add_argument("--eval-only", action="store_true",
                          help="Train no step: evaluate the base model (or the --resume "
                               "checkpoint) and write its perplexity and spectra.")
    parser.set_defaults(handler=run)
    return parser


def _parse_targets(text: str) -> str | list[str]:
    text = text.strip()
    if text in TARGET_PRESETS:
        return text
    return [name.strip() for name in text.split(",") if name.strip()]


def _base_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice == "auto":
        return autocast_dtype(device) or torch.float32
    return DTYPES[choice]


def _max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the "train" subcommand; returns the exit status (2 for invalid arguments)."""
    try:
        adapter_config = config_from_namespace(AdapterConfig, args)
        train_config = config_from_namespace(TrainConfig, args)
    except ValueError as error:
        parser.error(str(error))
    if args.resume is not None:
        try:
            args.resume = find_checkpoint(args.resume)
        except AdapterLoadError as error:
            parser.error(f"--resume: {error}")
    elif not args.eval_only and any((args.out / CHECKPOINTS_DIR).glob("step-*")):
        # A fresh run would mix its checkpoints with older ones that --resume could pick up.
        parser.error(f"--out {args.out} already contains checkpoints of an earlier run; continue it "
                     f"with --resume {args.out}, or choose another --out")

    try:
        context, device = init_distributed(train_config.device)
    except (ValueError, RuntimeError) as error:
        parser.error(str(error))
    if not context.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return _run_training(args, parser, adapter_config, train_config, context, device)
    finally:
        shutdown(context)


def _run_training(args, parser, adapter_config, train_config, context, device) -> int:
    dtype = _base_dtype(args.dtype, device)
    try:
        base_model, tokenizer = load_base_model(args.model, device, dtype, allow_download=args.allow_download)
    except ModelLoadError as error:
        parser.error(str(error))
    limit = _max_positions(base_model)
    if limit is not None and args.seq_len > limit:
        parser.error(f"--seq-len {args.seq_len} exceeds the model's {limit} positions; use at most {limit}")

    try:
        names = resolve_target_modules(base_model, _parse_targets(args.targets))
    except ValueError as error:
        parser.error(f"--targets {args.targets!r}: {error}")
    adapter_config = dataclasses.replace(adapter_config, target_modules=tuple(names))
    torch.manual_seed(train_config.seed)
    try:
        model = inject_adapters(base_model, adapter_config)
    except ValueError as error:
        parser.error(str(error))

    try:
        training = TrainingRun(args, model, tokenizer, adapter_config, train_config, context, device, dtype)
    except (DataError, AdapterLoadError) as error:
        parser.error(str(error))
    logger.info("%s on %s: %d trainable adapter parameters in %d layers, %d processes, %s weights",
                adapter_config.label(), args.model, count_trainable(model), len(names),
                context.world_size, str(dtype).removeprefix("torch."))
    return training.run()

