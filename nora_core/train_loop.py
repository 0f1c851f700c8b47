"""The training run behind `python -m nora_core train`: steps, evaluation, checkpoints, outputs.

Every process runs the same loop on its own shard of each global batch (see
`train_data.EpochSampler`); DistributedDataParallel averages the adapter gradients, so
the adapters stay identical on every process. Collective calls (loss and evaluation
sums, RNG-state gathering) happen on every process at the same steps; files are written
by rank 0 only, through `RunFiles`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from nora_core.adapters import (adapter_layers, adapter_parameters, count_trainable, reset_adapters,
                                set_dropout_generator)
from nora_core.config import AdapterConfig
from nora_core.device import autocast
from nora_core.distributed import (DistributedContext, all_gather_objects, all_reduce_sum, barrier,
                                   wrap_model)
from nora_core.io import (TRAINING_STATE_NAME, AdapterLoadError, adapter_state_dict,
                          load_adapter_weights, load_training_state, save_adapter,
                          save_training_state)
from nora_core.lm.batches import IGNORE_INDEX, Batch, causal_lm_loss, collate_examples
from nora_core.spectra import average_normalised_spectrum, output_view, weight_view
from nora_core.train_data import DataError, EpochSampler, load_training_data
from nora_core.trainer import TrainConfig, safe_perplexity

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
FINAL_ADAPTER_DIR = "adapter"
# When set, every process writes rank-<r>.json there: a hash of its adapter weights and the
# files it wrote. Tests use it to check that replicas agree and that only rank 0 writes.
TRACE_ENV = "NORA_LAB_TRACE_DIR"
# Held-out examples fed through the model for the output-view spectra.
SPECTRUM_EXAMPLES = 8


def find_checkpoint(path: str | Path) -> Path:
    """Return `path` if it is a checkpoint folder, else its newest `checkpoints/step-*` folder.

    Raises:
        AdapterLoadError: no checkpoint is found.
    """
    folder = Path(path)
    if (folder / TRAINING_STATE_NAME).is_file():
        return folder
    candidates = sorted((c for c in (folder / CHECKPOINTS_DIR).glob("step-*")
                         if c.name[5:].isdigit() and (c / TRAINING_STATE_NAME).is_file()),
                        key=lambda c: int(c.name[5:]))
    if not candidates:
        raise AdapterLoadError(
            f"{folder} contains no checkpoint: expected {TRAINING_STATE_NAME} in it or in "
            f"{CHECKPOINTS_DIR}/step-*/; give the --out folder of an earlier run"
        )
    return candidates[-1]


def _jsonable(value):
    """Turn tuples into lists and non-finite floats into None, so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def _format(value: float | None) -> str:
    """Format a metric for the log; "n/a" for a missing one (NaN loss, all-zero spectrum)."""
    return "n/a" if value is None else f"{value:.3f}"


def _source_id(text: str) -> str:
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def _flatten(settings: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _shown(value) -> str:
    if isinstance(value, list) and len(value) > 4:
        return f"[{value[0]!r}, ... {len(value)} names]"
    return repr(value)


def adapter_fingerprint(model: nn.Module) -> str:
    """Return a SHA-256 hex digest of every adapter tensor's name and bytes."""
    digest = hashlib.sha256()
    for key, tensor in sorted(adapter_state_dict(model).items()):
        digest.update(key.encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class RunFiles:
    """Writes the output files on rank 0 and nothing on other ranks; records what it wrote."""

    def __init__(self, out: Path, active: bool) -> None:
        self.out = Path(out)
        self.active = active
        self.written: list[str] = []

    def write_json(self, name: str, data: dict) -> None:
        if self.active:
            path = self.out / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
            self.written.append(str(path))

    def start_metrics(self, keep_until_step: int | None) -> None:
        """Start metrics.jsonl afresh, or keep the rows up to a resumed step."""
        if not self.active:
            return
        path = self.out / "metrics.jsonl"
        kept_rows = []
        if keep_until_step is not None and path.is_file():
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
            kept_rows = [row for row in rows if row.get("step", 0) <= keep_until_step]
        self.out.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in kept_rows), encoding="utf-8")
        self.written.append(str(path))

    def append_metrics(self, row: dict) -> None:
        if self.active:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(_jsonable(row), allow_nan=False) + "\n")

    def save_adapter(self, folder: Path, model: nn.Module, config: AdapterConfig, base_model: str) -> None:
        if self.active:
            save_adapter(model, config, folder, base_model_name=base_model)
            self.written.append(str(folder))

    def save_training_state(self, folder: Path, state: dict) -> None:
        if self.active:
            save_training_state(folder, state)
            self.written.append(str(folder / TRAINING_STATE_NAME))


class TrainingRun:
    """One fine-tuning run of a model that already has adapters injected.

    Args:
        args: the parsed "train" flags (data, seq_len, schedule, out, resume, ...).
        model: the base model with adapters, on `device`.
        tokenizer: the base model's tokenizer.
        adapter_config: the config the adapters were injected with.
        train_config: optimiser settings.
        context: this process's place in a data-parallel job.
        device: the device of `model`.
        dtype: the base model's weight dtype, recorded in the settings.

    Raises:
        DataError: the data are missing or too small.
        AdapterLoadError: the --resume checkpoint is unreadable or was written with other
            settings.
    """

    def __init__(self, args, model: nn.Module, tokenizer, adapter_config: AdapterConfig,
                 train_config: TrainConfig, context: DistributedContext, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.args = args
        self.config = adapter_config
        self.train_config = train_config
        self.context = context
        self.device = device
        self.pad_token_id = tokenizer.pad_token_id
        self.data = load_training_data(args.data, tokenizer, args.seq_len, args.eval_examples)
        self.sampler = EpochSampler(len(self.data.train), train_config.batch_size,
                                    context.world_size, context.rank, train_config.seed)

        # Adapters keep float32 master weights on a bf16 base, as PEFT does by default;
        # AdapterLayer casts its input to the adapter dtype and its output back.
        for layer in adapter_layers(model):
            for factor in (layer.lora_A, layer.lora_B, layer.lora_G):
                if factor is not None:
                    factor.float()
        reset_adapters(model, train_config.seed)
        self.dropout_generator = torch.Generator(device=device).manual_seed(
            train_config.seed + 1 + context.rank)
        set_dropout_generator(model, self.dropout_generator)
        model.train()
        self.module = model
        self.optimizer = torch.optim.AdamW(adapter_parameters(model), lr=train_config.lr,
                                           weight_decay=train_config.weight_decay)
        self.settings = _jsonable({
            "model": _source_id(args.model), "data": _source_id(args.data),
            "seq_len": args.seq_len, "eval_examples": args.eval_examples,
            "dtype": str(dtype).removeprefix("torch."), "adapter": dataclasses.asdict(adapter_config),
            "train": {key: value for key, value in dataclasses.asdict(train_config).items()
                      if key not in ("device", "eval_every", "spectrum_every")},
        })
        self.step = 0
        self.resumed = args.resume is not None
        if self.resumed:
            self._restore(Path(args.resume))
        if args.eval_only:
            self.target_steps = self.step
        elif args.max_steps is not None:
            self.target_steps = args.max_steps
        else:
            self.target_steps = args.epochs * self.sampler.steps_per_epoch
        if self.target_steps < self.step:
            raise DataError(f"the checkpoint is at step {self.step}, beyond --max-steps "
                            f"{self.target_steps}; raise --max-steps to continue")
        self.model = wrap_model(model, device, context)
        self.files = RunFiles(args.out, context.is_main)

    def _restore(self, checkpoint: Path) -> None:
        state = load_training_state(checkpoint)
        saved = _flatten(state.get("settings", {}))
        differences = [f"{key}: checkpoint {_shown(saved.get(key))}, now {_shown(value)}"
                       for key, value in _flatten(self.settings).items() if saved.get(key) != value]
        if differences:
            raise AdapterLoadError(
                f"{checkpoint} was written with other settings ({'; '.join(differences)}); "
                "pass the same model, data and adapter and optimiser flags as the first run"
            )
        load_adapter_weights(self.module, checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        written_on = (state["world_size"], state["device_type"])
        if written_on != (self.context.world_size, self.device.type):
            # Generator states do not carry over between device types, and the shards
            # change with the number of processes.
            logger.warning("checkpoint %s was written by %d processes on %s, this run has %d on %s: "
                           "the data order and dropout masks differ from an uninterrupted run",
                           checkpoint, *written_on, self.context.world_size, self.device.type)
            return
        rng = state["rng"][self.context.rank]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.dropout_generator.set_state(rng["dropout"])
        logger.info("resumed from %s at step %d", checkpoint, self.step)

    def _batch(self, examples) -> Batch:
        batch = collate_examples(list(examples), self.pad_token_id)
        return {key: value.to(self.device) for key, value in batch.items()}

    def _train_step(self) -> tuple[float, int]:
        """Take one optimizer step; return the loss averaged over processes and the tokens."""
        indices = self.sampler.indices(self.step)
        batch = self._batch(self.data.train[i] for i in indices)
        with autocast(self.device):
            loss = causal_lm_loss(self.model, batch)
        loss_sum, tokens = all_reduce_sum([float(loss.detach()), float(batch["attention_mask"].sum())],
                                          self.context, self.device)
        mean_loss = loss_sum / self.context.world_size
        # Every process computes the same mean, so all of them skip the update together.
        if not math.isfinite(mean_loss):
            return mean_loss, int(tokens)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.train_config.grad_clip > 0:
            nn.utils.clip_grad_norm_(adapter_parameters(self.module), self.train_config.grad_clip)
        self.optimizer.step()
        return mean_loss, int(tokens)

    def evaluate(self) -> dict:
        """Return the validation loss and perplexity, each process evaluating its own shard."""
        shard = self.data.validation[self.context.rank::self.context.world_size]
        batch_size = self.train_config.batch_size
        total, count = 0.0, 0
        self.module.eval()
        try:
            with torch.no_grad(), autocast(self.device):
                for start in range(0, len(shard), batch_size):
                    batch = self._batch(shard[start:start + batch_size])
                    n_labels = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                    total += float(causal_lm_loss(self.module, batch)) * n_labels
                    count += n_labels
        finally:
            self.module.train()
        total, count = all_reduce_sum([total, float(count)], self.context, self.device)
        val_loss = total / count
        return {"val_loss": val_loss, "val_perplexity": safe_perplexity(val_loss)}

    def _checkpoint(self) -> None:
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
               "dropout": self.dropout_generator.get_state()}
        states = all_gather_objects(rng, self.context)
        folder = self.args.out / CHECKPOINTS_DIR / f"step-{self.step:06d}"
        self.files.save_adapter(folder, self.module, self.config, self.args.model)
        self.files.save_training_state(folder, {
            "step": self.step, "optimizer": self.optimizer.state_dict(), "rng": states,
            "world_size": self.context.world_size, "device_type": self.device.type,
            "settings": self.settings})
        logger.info("saved checkpoint %s", folder)

    def spectra_summary(self) -> dict:
        """Measure the output-view spectra of every adapter layer on held-out examples."""
        examples = self.data.validation[:SPECTRUM_EXAMPLES]

        def feed(model: nn.Module) -> None:
            # One example per forward pass, so padding adds no rows to Δy.
            for ids, _ in examples:
                model(input_ids=torch.tensor([ids], device=self.device))

        with autocast(self.device):
            spectra = output_view(self.module, feed)
        layers = {
            name: {"effective_rank": None if s.is_zero else s.effective_rank,
                   "variance_dimension_90": None if s.is_zero else s.variance_dimension,
                   "stable_rank": None if s.is_zero else s.stable_rank,
                   "normalised": None if s.normalised is None else s.normalised.tolist()}
            for name, s in spectra.items()
        }
        ranks = [layer["effective_rank"] for layer in layers.values() if layer["effective_rank"] is not None]
        weight_ranks = [s.effective_rank for s in weight_view(self.module).values() if not s.is_zero]
        average = average_normalised_spectrum(spectra)
        return {
            "view": "output", "examples": len(examples), "step": self.step, "label": self.config.label(),
            "mean_effective_rank": sum(ranks) / len(ranks) if ranks else None,
            "mean_effective_rank_weight_view": sum(weight_ranks) / len(weight_ranks) if weight_ranks else None,
            "average_normalised_spectrum": None if average is None else average.tolist(),
            "layers": layers,
        }

    def run(self) -> int:
        """Train to the target step, evaluating and checkpointing on the way; return the exit status."""
        args, config = self.args, self.train_config
        self.files.start_metrics(self.step if self.resumed else None)
        last_eval = None
        if not self.resumed:
            last_eval = {"step": 0, "epoch": 0.0, **self.evaluate()}
            self.files.append_metrics(last_eval)
            logger.info("step 0 (base model): val loss %.4f, val perplexity %s",
                        last_eval["val_loss"], _format(last_eval["val_perplexity"]))
        start_step, tokens, seconds = self.step, 0, 0.0
        while self.step < self.target_steps:
            tic = time.perf_counter()
            loss, step_tokens = self._train_step()
            seconds += time.perf_counter() - tic
            tokens += step_tokens
            if not math.isfinite(loss):
                logger.error("training loss is %s at step %d; stopping. Lower --lr or set --grad-clip",
                             loss, self.step + 1)
                return 1
            self.step += 1
            row = {"step": self.step, "epoch": self.step / self.sampler.steps_per_epoch, "train_loss": loss}
            if self.step % config.eval_every == 0 or self.step == self.target_steps:
                row.update(self.evaluate())
                last_eval = row
                logger.info("step %d/%d: train loss %.4f, val loss %.4f, val perplexity %s, %.0f tokens/s",
                            self.step, self.target_steps, loss, row["val_loss"],
                            _format(row["val_perplexity"]), tokens / max(seconds, 1e-9))
            self.files.append_metrics(row)
            if (args.save_every and self.step % args.save_every == 0) or self.step == self.target_steps:
                self._checkpoint()
        if last_eval is None or last_eval["step"] != self.step:
            last_eval = {"step": self.step, **self.evaluate()}

        self._write_results(last_eval, self.step - start_step, tokens, seconds)
        barrier(self.context)
        return 0

    def _write_results(self, final: dict, steps_run: int, tokens: int, seconds: float) -> None:
        args = self.args
        if self.context.is_main:
            self.files.save_adapter(args.out / FINAL_ADAPTER_DIR, self.module, self.config, args.model)
            spectra = self.spectra_summary()
            self.files.write_json("spectra.json", spectra)
            self.files.write_json("summary.json", {
                "model": args.model, "data": args.data, "label": self.config.label(),
                "method": self.config.method, "r": self.config.r, "step": self.step,
                "epoch": self.step / self.sampler.steps_per_epoch,
                "val_loss": final["val_loss"], "val_perplexity": final["val_perplexity"],
                "mean_effective_rank": spectra["mean_effective_rank"],
                "trainable_parameters": count_trainable(self.module),
                "processes": self.context.world_size, "device": str(self.device),
                "steps_this_run": steps_run, "train_seconds_this_run": seconds,
                "tokens_per_second": tokens / seconds if seconds > 0 else None,
                "train_examples": len(self.data.train), "val_examples": len(self.data.validation),
            })
            logger.info("final val perplexity %s after %d steps; mean output-view effective rank %s; "
                        "adapter saved to %s", _format(final["val_perplexity"]), self.step,
                        _format(spectra["mean_effective_rank"]), args.out / FINAL_ADAPTER_DIR)
        trace_dir = os.environ.get(TRACE_ENV)
        if trace_dir:
            Path(trace_dir).mkdir(parents=True, exist_ok=True)
            record = {"rank": self.context.rank, "world_size": self.context.world_size,
                      "adapter_sha256": adapter_fingerprint(self.module), "written": self.files.written}
            (Path(trace_dir) / f"rank-{self.context.rank}.json").write_text(json.dumps(record), encoding="utf-8")
