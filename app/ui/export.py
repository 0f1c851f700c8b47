"""Downloads of the playground: curves as CSV and JSON, adapters as safetensors + JSON, and
linear adapters in PEFT's LoRA format.

The byte builders are plain functions of a trainer, so tests call them directly. The
download buttons pass Streamlit callables that build the file when clicked, on Streamlit's
own thread. The callables hold only a weak reference to the session's resources, so a
pending download never keeps a closed tab's trainer alive. They take the session's lock
while they read the adapter weights.

An adapter zip contains `adapter_model.safetensors`, `adapter_config.json` (see
`nora_core.io`) and `task.json`, the toy task's name and config. The toy base model is a
plain PyTorch module, not a Hugging Face model, so it is not in the zip: it is rebuilt
from `task.json` with `make_toy_task(name, **config).base_model()`, into which
`nora_core.io.load_adapter` (or, for the PEFT zip, `peft.PeftModel.from_pretrained`)
loads the adapter.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import tempfile
import weakref
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

from nora_core.io import export_peft, save_adapter
from nora_core.trainer import PairedTrainer

from app.ui import session

CURVE_COLUMNS = ("run", "step", "train_loss", "val_loss", "effective_rank_output",
                 "effective_rank_weight", "time")
TASK_FILE = "task.json"
# Seconds a download waits for a training chunk of the session to finish.
EXPORT_LOCK_TIMEOUT = 5.0


RANK_COLUMNS = ("effective_rank_output", "effective_rank_weight")


def _cell(column: str, value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    # An effective rank lies in [1, r]; the trainer reports 0 for an all-zero update
    # (step 0), where it is undefined.
    if column in RANK_COLUMNS and value is not None and value <= 0:
        return None
    return value


def curve_rows(trainer: PairedTrainer) -> list[dict]:
    """Return every metric row of every run, non-finite values as None, in run order.

    A diverged run's rows end before the step at which it diverged (`diverged_at` in the
    JSON export).
    """
    rows = []
    for run in trainer.runs.values():
        for row in list(run.history):
            rows.append({column: _cell(column, row.get(column)) for column in CURVE_COLUMNS})
    return rows


def curves_csv(trainer: PairedTrainer) -> bytes:
    """Return the curves as CSV with the header `CURVE_COLUMNS`; empty cells where unmeasured."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CURVE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(curve_rows(trainer))
    return buffer.getvalue().encode("utf-8")


def settings_record(settings: session.PlaygroundSettings) -> dict:
    """Return the settings as plain JSON data: task, its config, both adapters, training."""
    return {"task": settings.task_name,
            "task_config": dataclasses.asdict(settings.task_config),
            "adapters": {name: dataclasses.asdict(config)
                         for name, config in settings.adapter_configs().items()},
            "train": dataclasses.asdict(settings.train)}


def curves_json(trainer: PairedTrainer, settings: session.PlaygroundSettings) -> bytes:
    """Return the settings, each run's state and its metric rows as one JSON document."""
    rows = curve_rows(trainer)
    document = {
        "settings": settings_record(settings),
        "step": trainer.step,
        "runs": {name: {"label": run.config.label(), "diverged_at": run.diverged_at,
                        "trainable_parameters": run.trainable,
                        "history": [row for row in rows if row["run"] == name]}
                 for name, run in trainer.runs.items()},
    }
    return json.dumps(document, indent=1).encode("utf-8")


def _zip_folder(folder: Path, extra: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, arcname=path.name)
        for name, text in extra.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def _task_file(settings: session.PlaygroundSettings) -> str:
    record = {"task": settings.task_name,
              "task_config": dataclasses.asdict(settings.task_config),
              "rebuild": "nora_core.tasks.toy.make_toy_task(task, **task_config).base_model()"}
    return json.dumps(record, indent=2) + "\n"


def adapter_zip(trainer: PairedTrainer, name: str, settings: session.PlaygroundSettings) -> bytes:
    """Return a zip with run `name`'s adapter in NoRA Lab's format, plus `task.json`.

    Raises:
        KeyError: for an unknown run name.
    """
    run = trainer.runs[name]
    with tempfile.TemporaryDirectory() as folder:
        save_adapter(run.model, run.config, folder,
                     base_model_name=f"nora-lab toy task {settings.task_name}")
        return _zip_folder(Path(folder), {TASK_FILE: _task_file(settings)})


def peft_zip(trainer: PairedTrainer, name: str, settings: session.PlaygroundSettings) -> bytes:
    """Return a zip with run `name`'s adapter in PEFT's LoRA format, plus `task.json`.

    Raises:
        nora_core.io.PeftExportError: for an adapter with an activation or a gate.
    """
    run = trainer.runs[name]
    with tempfile.TemporaryDirectory() as folder:
        export_peft(run.model, run.config, folder, base_model_name=None)
        return _zip_folder(Path(folder), {TASK_FILE: _task_file(settings)})


def _deferred(build: Callable[[PairedTrainer, session.PlaygroundSettings], bytes]
              ) -> Callable[[], bytes]:
    reference = weakref.ref(session.resources())

    def produce() -> bytes:
        resources = reference()
        if resources is None or resources.trainer is None or resources.settings is None:
            return b"This session has no trainer any more; reload the page and train again.\n"
        if not resources.lock.acquire(timeout=EXPORT_LOCK_TIMEOUT):
            return b"The run was busy training; press the download button again.\n"
        try:
            return build(resources.trainer, resources.settings)
        finally:
            resources.lock.release()

    return produce


def export_panel() -> None:
    """Draw the download buttons for the curves and the trained adapters."""
    current = session.trainer()
    settings = session.active_settings()
    if current is None or settings is None:
        return
    with st.expander("Export curves and adapters", icon=":material/download:"):
        st.caption("Files are built when you click, from the runs as they are at that moment.")
        left, right = st.columns(2)
        left.download_button("Curves (CSV)", _deferred(lambda t, s: curves_csv(t)),
                             file_name="nora_lab_curves.csv", mime="text/csv",
                             key="export.csv", on_click="ignore", icon=":material/table:")
        right.download_button("Curves and settings (JSON)", _deferred(curves_json),
                              file_name="nora_lab_curves.json", mime="application/json",
                              key="export.json", on_click="ignore", icon=":material/data_object:")
        for name, run in current.runs.items():
            left, right = st.columns(2)
            left.download_button(
                f"{name} adapter (safetensors + JSON)",
                _deferred(lambda t, s, n=name: adapter_zip(t, n, s)),
                file_name=f"{name.lower()}_adapter.zip", mime="application/zip",
                key=f"export.{name}.adapter", on_click="ignore", icon=":material/save:")
            if run.config.is_linear:
                right.download_button(
                    f"{name} adapter in PEFT format",
                    _deferred(lambda t, s, n=name: peft_zip(t, n, s)),
                    file_name=f"{name.lower()}_peft.zip", mime="application/zip",
                    key=f"export.{name}.peft", on_click="ignore", icon=":material/package_2:")
        st.caption(
            "Each adapter zip holds adapter_model.safetensors, adapter_config.json and task.json. "
            "The toy base model is a plain PyTorch module, not a Hugging Face model, so it is "
            "not included: rebuild it with make_toy_task(task, **task_config).base_model() "
            "from task.json, then load the adapter with nora_core.io.load_adapter(base, folder). "
            "The PEFT zip holds the same LoRA factors in PEFT's layout (target_modules name the "
            "toy layers), for peft.PeftModel.from_pretrained(base, folder). NoRA with an "
            "activation has no PEFT equivalent.")
