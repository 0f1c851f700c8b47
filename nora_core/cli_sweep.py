"""`python -m nora_core sweep`: train LoRA and NoRA across ranks and write the results.

The output folder receives sweep.csv (one row per run), sweep.json (rows, per-point
summary, config and environment) and sweep.html (the charts, with plotly.js embedded so
the page opens offline). Invalid flags exit with status 2 and a message naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import time
from pathlib import Path
from typing import Any

import torch

from nora_core.config import ACTIVATIONS, DROPOUT_POSITIONS, MAX_RANK, METHODS, SCALINGS
from nora_core.fields import FieldSpec
from nora_core.sweep import MAX_SEEDS, MAX_STEPS, SweepConfig, prepare_task, run_sweep, summarise
from nora_core.sweep_presets import PRESETS, preset_config
from nora_core.sweep_report import environment_info, summary_table, write_outputs
from nora_core.sweep_tasks import TASK_NAMES, task_option_specs

logger = logging.getLogger(__name__)

EPILOG = """examples:
  python -m nora_core sweep --task nonlinear_teacher --ranks 1,2,4,8,16,32,64 --methods lora,nora --seeds 3 --out runs/ceiling
  python -m nora_core sweep --preset fair_scaling --out runs/fair
  python -m nora_core sweep --task linear_teacher --tune-lr --lr-grid 1e-3,3e-3,1e-2 --out runs/linear
  python -m nora_core sweep --preset adapter_placement --steps 30 --out runs/placement

presets:
""" + "\n".join(f"  {name:18} {preset.title}" for name, preset in PRESETS.items())

# Sweep flags that define the variants; giving one replaces a preset's explicit variants.
VARIANT_FLAGS = ("methods", "scalings", "lora_alphas", "nora_activations", "lora_dropouts",
                 "dropout_position", "targets")
# SweepConfig field → flag, so a config error names the flag the user typed.
FIELD_FLAGS = {"task": "--task", "ranks": "--ranks", "methods": "--methods", "seeds": "--seeds",
               "scalings": "--scaling", "lora_alphas": "--lora-alpha",
               "nora_activations": "--activation", "lora_dropouts": "--lora-dropout",
               "dropout_position": "--dropout-position", "targets": "--targets", "steps": "--steps",
               "lr": "--lr", "batch_size": "--batch-size", "weight_decay": "--weight-decay",
               "lr_grid": "--lr-grid", "device": "--device"}
# Task option names that clash with sweep flags get a "task-" prefix on the command line.
_CLASHES = {"seed", "device", "lr", "steps"}
_TASK_DEST = "task_option__"


def _split(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list without empty entries, got {text!r}")
    return items


def _int_list(low: int, high: int):
    def parse(text: str) -> tuple[int, ...]:
        values = []
        for item in _split(text):
            try:
                value = int(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r} is not an integer (in {text!r})") from None
            if not low <= value <= high:
                raise argparse.ArgumentTypeError(f"every value must be in [{low}, {high}], got {value}")
            values.append(value)
        return tuple(values)
    return parse


def _float_list(low: float, high: float, exclusive_high: bool = False):
    def parse(text: str) -> tuple[float, ...]:
        values = []
        for item in _split(text):
            try:
                value = float(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r} is not a number (in {text!r})") from None
            above = value >= high if exclusive_high else value > high
            if not value >= low or above:
                bound = f"[{low:g}, {high:g})" if exclusive_high else f"[{low:g}, {high:g}]"
                raise argparse.ArgumentTypeError(f"every value must be in {bound}, got {item}")
            values.append(value)
        return tuple(values)
    return parse


def _choice_list(choices: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        values = _split(text)
        for value in values:
            if value not in choices:
                raise argparse.ArgumentTypeError(f"unknown value {value!r}; choose from {', '.join(choices)}")
        return tuple(values)
    return parse


def _seeds(text: str) -> int | tuple[int, ...]:
    if "," in text:
        return _int_list(0, 2**31 - 2)(text)
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a comma-separated list of seeds, "
                                         f"got {text!r}") from None
    if not 1 <= count <= MAX_SEEDS:
        raise argparse.ArgumentTypeError(f"a seed count must be in [1, {MAX_SEEDS}], got {count}")
    return count


def _one(parse_list):
    def parse(text: str):
        if "," in text:
            raise argparse.ArgumentTypeError(f"expected one value, got the list {text!r}")
        try:
            return parse_list(text)[0]
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentTypeError(str(error).replace("every value must", "the value must")) from None
    return parse


def _alphas(text: str) -> tuple[Any, ...]:
    values: list[Any] = []
    for item in _split(text):
        if item.lower() == "r":
            values.append("r")
            continue
        try:
            number = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is neither 'r' nor a number") from None
        if not number > 0 or number == float("inf"):
            raise argparse.ArgumentTypeError(f"lora_alpha must be 'r' or a positive number, got {item}")
        values.append(number)
    return tuple(values)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _task_option_flags() -> dict[str, list[tuple[str, FieldSpec]]]:
    """Collect every task's options: flag name → (task, spec) for each task that has it."""
    found: dict[str, list[tuple[str, FieldSpec]]] = {}
    for task in TASK_NAMES:
        for spec in task_option_specs(task):
            name = ("task-" if spec.name in _CLASHES else "") + spec.name.replace("_", "-")
            found.setdefault(name, []).append((task, spec))
    return found


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _defaults_text(defaults: dict[str, Any]) -> str:
    by_value: dict[str, list[str]] = {}
    for task, value in defaults.items():
        by_value.setdefault("empty" if value is None else str(value), []).append(task)
    if len(by_value) == 1:
        (value, tasks), = by_value.items()
        return f"Tasks: {', '.join(tasks)}. Default: {value}."
    parts = [f"{value} ({', '.join(tasks)})" for value, tasks in by_value.items()]
    return f"Tasks: {', '.join(defaults)}. Default: {'; '.join(parts)}."


def _add_task_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "task options", "Settings of the task's config; each applies to the tasks listed in its help. "
                        "Unset options keep the task's (or the preset's) value.")
    for flag, owners in _task_option_flags().items():
        spec = owners[0][1]
        kwargs: dict[str, Any] = {"dest": _TASK_DEST + spec.name, "default": argparse.SUPPRESS}
        text = [spec.help[0].upper() + spec.help[1:].rstrip(".") + "."]
        units = {s.unit for _, s in owners}
        ranges = {(s.minimum, s.maximum) for _, s in owners}
        if len(units) == 1 and spec.unit:
            text.append(f"Unit: {spec.unit}.")
        if len(ranges) > 1:
            text.append("Range: depends on the task.")
        elif spec.minimum is not None and spec.maximum is not None:
            text.append(f"Range: [{_number(spec.minimum)}, {_number(spec.maximum)}].")
        text.append(_defaults_text({task: s.default for task, s in owners}))
        if spec.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float}.get(spec.kind, str)
            kwargs["metavar"] = "{" + ",".join(spec.choices) + "}" if spec.kind == "choice" else spec.name.upper()
            if spec.kind == "choice":
                kwargs["choices"] = list(spec.choices)
        group.add_argument("--" + flag, help=" ".join(text), **kwargs)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the "sweep" subcommand to `subparsers` and return its parser."""
    parser = subparsers.add_parser(
        "sweep", help="train LoRA and NoRA across ranks and seeds; write CSV, JSON and a chart",
        description="Train LoRA and NoRA adapters at many ranks, seeds and learning rates on one "
                    "task and write sweep.csv, sweep.json and sweep.html (self-contained chart). "
                    "Toy tasks train all runs that share a learning rate in one batched computation.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("what to sweep")
    what.add_argument("--preset", choices=list(PRESETS), default=None,
                      help="Start from a named sweep (listed below); other flags override its values.")
    what.add_argument("--task", choices=list(TASK_NAMES), default=None,
                      help="Task to train on. Default: nonlinear_teacher, or the preset's task.")
    what.add_argument("--ranks", type=_int_list(1, MAX_RANK), default=None, metavar="R,R,...",
                      help=f"Ranks r, comma-separated integers in [1, {MAX_RANK}]. "
                           "Default: 1,2,4,8,16,32,64.")
    what.add_argument("--methods", type=_choice_list(METHODS), default=None, metavar="M,M",
                      help="Adapter methods, comma-separated: lora, nora. Default: lora,nora.")
    what.add_argument("--seeds", type=_seeds, default=None, metavar="N|S,S,...",
                      help="Training seeds: a count N (seeds 0..N-1) or a comma-separated list. A seed "
                           "sets the data order, the lora_A init and the dropout masks. Default: 3.")
    what.add_argument("--scaling", dest="scalings", type=_choice_list(SCALINGS), default=None,
                      metavar="S,S", help="Scalings, comma-separated: alpha_over_r (s = lora_alpha/r), "
                                          "alpha_over_sqrt_r (rsLoRA). Default: alpha_over_r.")
    what.add_argument("--lora-alpha", dest="lora_alphas", type=_alphas, default=None, metavar="A,A",
                      help="lora_alpha modes, comma-separated: r (lora_alpha = r, scale 1) or a fixed "
                           "number such as 32 (scale 32/r). Default: r.")
    what.add_argument("--activation", dest="nora_activations", type=_choice_list(ACTIVATIONS),
                      default=None, metavar="ACT,ACT",
                      help="NoRA bottleneck activations, comma-separated: " + ", ".join(ACTIVATIONS)
                           + ". LoRA stays linear. Default: silu.")
    what.add_argument("--lora-dropout", dest="lora_dropouts", type=_float_list(0.0, 1.0, True),
                      default=None, metavar="P,P",
                      help="Dropout probabilities in [0, 1), comma-separated. Default: 0.")
    what.add_argument("--dropout-position", choices=list(DROPOUT_POSITIONS), default=None,
                      help="Where dropout acts for every variant. Default: input for LoRA, rank for NoRA.")
    what.add_argument("--targets", type=_split, default=None, metavar="T,T",
                      help="Adapted layers, comma-separated: default (the task's choice), a "
                           "language-model preset (attention_qv, attention_all, all_linear) or "
                           "module names joined by + (q_proj+v_proj). Default: default.")

    how = parser.add_argument_group("optimisation")
    how.add_argument("--steps", type=_one(_int_list(1, MAX_STEPS)), default=None, metavar="STEPS",
                     help=f"Training steps per run, in [1, {MAX_STEPS}]. Unit: steps. Default: 1500.")
    how.add_argument("--lr", type=_one(_float_list(1e-6, 10.0)), default=None, metavar="LR",
                     help="AdamW learning rate in [1e-6, 10]; with --tune-lr, the centre of the "
                          "default grid. Default: 0.003.")
    how.add_argument("--tune-lr", action="store_true", default=None,
                     help="Train every point at each rate of --lr-grid and report the best per point.")
    how.add_argument("--lr-grid", type=_float_list(1e-6, 10.0), default=None, metavar="LR,LR",
                     help="Learning rates for --tune-lr, comma-separated. Default: lr × 0.1, 0.316, 1, 3.16.")
    how.add_argument("--batch-size", type=_one(_int_list(1, 4096)), default=None, metavar="N",
                     help="Examples per training step, in [1, 4096]. Unit: examples. Default: 128.")
    how.add_argument("--weight-decay", type=_one(_float_list(0.0, 1.0)), default=None, metavar="WD",
                     help="AdamW weight decay in [0, 1]. Default: 0.")
    how.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=None,
                     help="Device of language-model runs; toy tasks train on the CPU. Default: cpu.")
    how.add_argument("--execution", choices=["auto", "batched", "sequential"], default="auto",
                     help="auto batches toy tasks and trains language-model runs one at a time; "
                          "sequential trains every run on its own (slower, for checking). "
                          "Default: %(default)s.")
    how.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                     help="CPU threads torch may use for language-model runs; toy tasks always "
                          "train with one thread. Default: torch's own choice.")
    how.add_argument("--out", type=Path, default=Path("runs/sweep"), metavar="DIR",
                     help="Output folder for sweep.csv, sweep.json and sweep.html. Default: %(default)s.")
    _add_task_options(parser)
    # The handler reports errors through this parser, so messages start with "... sweep: error:".
    parser.set_defaults(handler=run, sweep_parser=parser)
    return parser


def build_config(args: argparse.Namespace) -> SweepConfig:
    """Merge the preset (if any) and the given flags into a SweepConfig.

    Raises:
        ValueError: for an invalid combination; the message names the config field.
    """
    base = preset_config(args.preset) if args.preset else SweepConfig()
    changes: dict[str, Any] = {}
    for name in ("task", "ranks", "methods", "seeds", "scalings", "lora_alphas", "nora_activations",
                 "lora_dropouts", "dropout_position", "targets", "tune_lr", "lr_grid", "device",
                 "steps", "lr", "batch_size", "weight_decay"):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    if any(name in changes for name in VARIANT_FLAGS) and base.variants:
        logger.info("variant flags given: replacing the preset's %d variants by their product",
                    len(base.variants))
        changes["variants"] = ()

    task = changes.get("task", base.task)
    options = dict(base.task_options) if task == base.task else {}
    accepted = {spec.name for spec in task_option_specs(task)}
    for key, value in vars(args).items():
        if not key.startswith(_TASK_DEST):
            continue
        name = key[len(_TASK_DEST):]
        if name not in accepted:
            flag = "--" + ("task-" if name in _CLASHES else "") + name.replace("_", "-")
            owners = [t for t in TASK_NAMES if name in {s.name for s in task_option_specs(t)}]
            raise OptionError(f"argument {flag}: task {task!r} has no option {name!r}; it applies "
                              f"to {', '.join(owners)}")
        options[name] = value
    changes["task_options"] = tuple(options.items())
    return dataclasses.replace(base, **changes)


class OptionError(ValueError):
    """A flag that does not apply to the chosen task; the message already names the flag."""


def _flag_message(error: ValueError) -> str:
    """Prefix a config or task error with the flag that set the bad value, when it is known."""
    text = str(error)
    if isinstance(error, OptionError):
        return text
    if "is too large for layer" in text:
        return f"argument --ranks: {text}"
    if text.startswith(("target preset", "target_modules", "unknown target", "no target modules")):
        return f"argument --targets: {text}"
    match = re.search(r"\b(\w+Config)\.(\w+)", text)
    if match and match.group(1) == "SweepConfig" and match.group(2) in FIELD_FLAGS:
        return f"argument {FIELD_FLAGS[match.group(2)]}: {text}"
    if match and match.group(1) != "SweepConfig":
        name = match.group(2)
        return f"argument --{'task-' if name in _CLASHES else ''}{name.replace('_', '-')}: {text}"
    return text


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the "sweep" subcommand; returns the exit status (2 for invalid arguments)."""
    parser = getattr(args, "sweep_parser", parser)
    try:
        config = build_config(args)
        task = prepare_task(config)
    except ValueError as error:
        parser.error(_flag_message(error))
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    logger.info("sweep: task %s, %d runs (%d variants × %d ranks × %d seeds × %d learning rates), "
                "%d steps each", config.task, config.run_count(), len(config.all_variants()),
                len(config.ranks), len(config.seeds), len(config.learning_rates()), config.steps)
    last = [-1.0]

    def progress(fraction: float, message: str) -> None:
        if fraction - last[0] >= 0.1 or fraction >= 1.0:
            last[0] = fraction
            logger.info("%3.0f%% %s", 100 * fraction, message)

    started = time.perf_counter()
    try:
        rows = run_sweep(config, progress=progress, execution=args.execution, task=task)
    except ValueError as error:
        parser.error(_flag_message(error))
    elapsed = time.perf_counter() - started
    summary = summarise(rows)
    environment = {**environment_info(), "execution": args.execution, "sweep_wall_time_s": elapsed}
    paths = write_outputs(args.out, config, rows, summary, environment)
    logger.info("summary (mean over seeds%s):\n%s",
                ", best learning rate per point" if config.tune_lr else "", summary_table(summary))
    logger.info("sweep took %.1f s; wrote %s", elapsed, ", ".join(str(p) for p in paths.values()))
    return 0
