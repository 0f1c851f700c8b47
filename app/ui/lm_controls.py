"""The Language-model page's sidebar: base model, task, targets, adapters and training.

Every control comes from a config dataclass (`LMTaskConfig`, `AdapterConfig`,
`TrainConfig`) through `app.ui.widgets`, so ranges and help texts are declared once.
Widgets start at the running trainer's settings, so returning from another page does not
list phantom changes. An unusable base model, upload or target list shows an error and
leaves the running trainer as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import streamlit as st
from torch import nn

from nora_core.config import AdapterConfig
from nora_core.device import available_devices
from nora_core.fields import field_specs
from nora_core.lm import (BUNDLED_MODEL, PROCEDURES, TARGET_PRESETS, LMTaskConfig, ModelLoadError,
                          UploadError, module_names_for_targets, parse_upload,
                          resolve_target_modules, target_suffixes)
from nora_core.trainer import TrainConfig

from app.ui import classroom, lm_session, url_state
from app.ui.widgets import build_config, config_widgets, field_widget, url_selectbox

TASK_LABELS = {
    "style_shift": "style shift: tragedies → comedies",
    "arithmetic": "arithmetic (a+b*c, worked steps)",
    "reverse": "reverse a word (worked steps)",
    "sort": "sort letters (worked steps)",
    "upload": "upload your own data",
}
TASK_HELP = {
    "style_shift": "The bundled model was pre-trained on six Shakespeare tragedies; the adapters "
                   "learn the six comedies. The loss covers every byte of 128-byte windows.",
    "arithmetic": "Prompts such as `calc 3+4*2` with the worked steps and `answer: 11`; the "
                  "loss covers the response only.",
    "reverse": "Prompts such as `reverse word` with one line per moved letter and the "
               "reversed word; the loss covers the response only.",
    "sort": "Prompts such as `sort k j a` with one selection-sort line per letter and the "
            "sorted letters; the loss covers the response only.",
    "upload": "JSONL with one {\"prompt\": ..., \"response\": ...} object per line (loss on the "
              "response), or plain UTF-8 text (loss on every token).",
}
TARGET_LABELS = {
    "attention_qv": "attention q, v (the NoRA paper's choice)",
    "attention_all": "all attention projections",
    "all_linear": "all linear layers (MLP included)",
    "custom": "custom list of module names",
}
TASK_FIELDS = ("seq_len", "n_train", "n_val", "spectrum_examples", "seed")
SHARED_ADAPTER_FIELDS = ("r", "lora_alpha", "scaling", "lora_dropout")
NORA_FIELDS = ("activation", "dropout_position", "glu_gate")
MAIN_TRAIN_FIELDS = ("lr", "batch_size", "seed", "device")
MORE_TRAIN_FIELDS = ("weight_decay", "grad_clip", "eval_every", "spectrum_every")

# Page defaults sized for one CPU thread. With a batch of 8 windows of 128 bytes, a step
# of both runs of the bundled model took 0.2-1 s on a loaded 2-core VM. Validating on 16
# windows every 10 steps adds an estimated tenth to that.
TASK_DEFAULTS = {"n_val": 16, "spectrum_examples": 8}
TRAIN_DEFAULTS = {"lr": 3e-3, "batch_size": 8, "eval_every": 10, "spectrum_every": 10}


def _values(config: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(config, name) for name in names} if config is not None else {}


def _url_text_input(label: str, key: str, default: str, help: str) -> str:
    """Draw a text box whose value is mirrored in the page URL like the other controls."""
    start = url_state.initial_value(key, default, str, label)
    value = st.text_input(label, value=start, key=key, help=help).strip()
    url_state.remember(key, value)
    return value


def model_controls(active: lm_session.LMSettings | None) -> tuple[str, nn.Module] | None:
    """Draw the base-model box; return the model name in use and the shared model.

    A model that fails to load shows the reason and the page goes on with the running
    trainer's model, or the bundled one.
    """
    fallback = active.task.model_name if active is not None else BUNDLED_MODEL
    name = _url_text_input(
        "base model", "lm.model", fallback,
        help=f"`{BUNDLED_MODEL}` (the bundled byte-level model), a local folder saved with "
             "save_pretrained, or a Hugging Face hub id already in the local cache. Nothing "
             "is downloaded, and code from a model repository never runs "
             "(trust_remote_code=False).") or BUNDLED_MODEL
    try:
        model, _ = lm_session.shared_base(name)
    except ModelLoadError as error:
        st.error(f"{error} The page keeps using {fallback!r}.")
        if name == fallback:
            return None
        name = fallback
        try:
            model, _ = lm_session.shared_base(name)
        except ModelLoadError as fallback_error:
            st.error(str(fallback_error))
            return None
    config = model.config
    blocks = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", "?")
    parameters = sum(p.numel() for p in model.parameters())
    st.caption(f"{model.config.model_type}: {parameters:,} parameters, {blocks} blocks, frozen.")
    return name, model


def task_controls(model_name: str, active: lm_session.LMSettings | None
                  ) -> tuple[LMTaskConfig | None, bytes | None, str]:
    """Draw the task picker, the upload box and the task settings.

    Returns the task config, the uploaded bytes and the file name. The config is None when
    a setting is invalid or the upload task has no file yet.
    """
    names = list(TASK_LABELS)
    task = url_selectbox("task", names, "lm.task",
                         default=active.task.task if active is not None else names[0],
                         format_func=lambda n: TASK_LABELS[n],
                         help="What both adapters learn, on the same batches.")
    st.caption(TASK_HELP[task])
    upload, upload_name, file = None, "", None
    specs = {spec.name: spec for spec in field_specs(LMTaskConfig)}
    values: dict[str, Any] = {"task": task, "model_name": model_name,
                              "max_upload_bytes": classroom.limits().max_upload_bytes}
    if task == "upload":
        limit = values["max_upload_bytes"]
        file = st.file_uploader("training data (JSONL or text)", key="lm.upload",
                                type=["jsonl", "json", "txt", "md"],
                                help=f"At most {limit:,} bytes. A tenth is held out for "
                                     "validation.")
        format_default = active.task.upload_format if active is not None else None
        values["upload_format"] = field_widget(specs["upload_format"], "lm.task.upload_format",
                                               default=format_default, label="upload format")
        if file is not None:
            upload, upload_name = file.getvalue(), file.name
            try:
                # Checked here, so a bad line shows at once, not only when Reset builds the task.
                parse_upload(upload, limit, values["upload_format"])
            except UploadError as error:
                st.error(f"Uploaded file {upload_name!r}: {error}")
                upload, upload_name = None, ""
    defaults = dict(TASK_DEFAULTS)
    if active is not None:
        defaults.update(_values(active.task, TASK_FIELDS))
    include = [n for n in TASK_FIELDS if n != "n_train" or task in PROCEDURES]
    with st.expander("task settings"):
        values.update(config_widgets(LMTaskConfig, "lm.task", include=include, defaults=defaults))
    config = build_config(LMTaskConfig, values, "Task settings")
    if task == "upload" and upload is None:
        if file is None:
            st.info("Upload a file to train on it; the runs go on with the previous task.")
        return None, None, ""
    return config, upload, upload_name


def target_controls(model: nn.Module, active: lm_session.LMSettings | None
                    ) -> tuple[str, tuple[str, ...], tuple[str, ...]] | None:
    """Draw the target preset or free list; return (choice, suffixes, full module names).

    Returns None, after showing the error, when the names match no module of the model.
    """
    choices = [*TARGET_PRESETS, "custom"]
    choice = url_selectbox("adapted layers", choices, "lm.targets",
                           default=active.targets if active is not None else choices[0],
                           format_func=lambda c: TARGET_LABELS.get(c, c),
                           help="Which linear layers of every block get a LoRA and a NoRA "
                                "adapter.")
    try:
        if choice == "custom":
            typed = ", ".join(active.target_names) if active is not None else "q_proj, v_proj"
            text = _url_text_input("module names", "lm.targets.custom", typed,
                                   help="Comma-separated module-name suffixes, matched at a "
                                        "dot, e.g. `q_proj, v_proj` or `mlp.down_proj`.")
            suffixes = tuple(part.strip() for part in text.split(",") if part.strip())
            modules = tuple(resolve_target_modules(model, list(suffixes)))
        else:
            suffixes = tuple(target_suffixes(model, choice))
            modules = tuple(resolve_target_modules(model, choice))
    except ValueError as error:
        st.error(f"Adapted layers: {error}")
        return None
    st.caption(f"{len(modules)} of {len(module_names_for_targets(model))} linear layers: "
               f"{', '.join(suffixes)}")
    return choice, suffixes, modules


def rank_limit(model: nn.Module, modules: tuple[str, ...]) -> int | None:
    """Return min(d_in, d_out) over the adapted modules: the largest rank they allow."""
    limits = []
    for name in modules:
        weight = getattr(model.get_submodule(name), "weight", None)
        if weight is not None and weight.dim() == 2:
            limits.append(min(weight.shape))
    return min(limits) if limits else None


def adapter_controls(max_rank: int | None, active: lm_session.LMSettings | None
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Draw the shared and per-method adapter settings; return the LoRA and NoRA field values."""
    active_lora = active.lora if active else None
    active_nora = active.nora if active else None
    shared_defaults = _values(active_lora, SHARED_ADAPTER_FIELDS)
    if active_lora is not None and active_lora.lora_alpha == active_lora.r:
        shared_defaults["lora_alpha"] = None  # empty: lora_alpha follows r
    separate = st.checkbox("separate rank for NoRA", key="lm.adapter.separate_r",
                           value=bool(active and active_nora.r != active_lora.r),
                           help="Give NoRA its own rank r, e.g. to compare NoRA at a small "
                                "rank with LoRA at a large one.")
    shared = config_widgets(AdapterConfig, "lm.adapter", include=SHARED_ADAPTER_FIELDS,
                            defaults=shared_defaults,
                            maxima={"r": max_rank} if max_rank else None,
                            placeholders={"lora_alpha": "= r (scale 1)"},
                            labels={"r": "LoRA rank r" if separate else "rank r (both)"})
    specs = {spec.name: spec for spec in field_specs(AdapterConfig)}
    nora_values = dict(shared)
    if separate:
        nora_r = active_nora.r if active_nora is not None else shared["r"]
        nora_values["r"] = field_widget(specs["r"], "lm.nora.r", default=nora_r,
                                        maximum=max_rank, label="NoRA rank r")
    with st.expander("NoRA options"):
        nora_defaults = {"activation": "silu", "dropout_position": "rank"}
        nora_defaults.update(_values(active_nora, NORA_FIELDS))
        nora_values.update(config_widgets(
            AdapterConfig, "lm.nora", include=NORA_FIELDS, defaults=nora_defaults,
            labels={"activation": "NoRA activation", "dropout_position": "NoRA dropout position"}))
    with st.expander("LoRA options"):
        lora_values = dict(shared)
        lora_defaults = {"dropout_position": "input"}
        lora_defaults.update(_values(active_lora, ("dropout_position",)))
        lora_values.update(config_widgets(
            AdapterConfig, "lm.lora", include=("dropout_position",), defaults=lora_defaults,
            labels={"dropout_position": "LoRA dropout position"}))
        st.caption("LoRA keeps the identity activation: with an activation it would be NoRA.")
    return lora_values, nora_values


def train_controls(active: lm_session.LMSettings | None) -> TrainConfig | None:
    """Draw the optimiser settings; the device list shows only devices this host has."""
    present = available_devices()
    devices = ["cpu", *[d for d in present if d != "cpu"]]
    defaults = dataclasses.asdict(active.train) if active else dict(TRAIN_DEFAULTS)
    values = config_widgets(TrainConfig, "lm.train", include=MAIN_TRAIN_FIELDS,
                            defaults=defaults, choices={"device": devices})
    with st.expander("more training settings"):
        values.update(config_widgets(TrainConfig, "lm.train", include=MORE_TRAIN_FIELDS,
                                     defaults=defaults))
    return build_config(TrainConfig, values, "Training settings")


def settings_form() -> lm_session.LMSettings | None:
    """Draw the whole settings form in the sidebar; return the settings, or None if invalid."""
    active = lm_session.active_settings()
    with st.sidebar:
        st.header("Base model")
        loaded = model_controls(active)
        st.header("Task")
        model_name = loaded[0] if loaded else BUNDLED_MODEL
        task_config, upload, upload_name = task_controls(model_name, active)
        st.header("Adapters")
        targets = target_controls(loaded[1], active) if loaded else None
        max_rank = rank_limit(loaded[1], targets[2]) if loaded and targets else None
        lora_values, nora_values = adapter_controls(max_rank, active)
        lora = nora = None
        if targets is not None:
            modules = targets[2]
            lora = build_config(AdapterConfig, {**lora_values, "method": "lora",
                                                "activation": "identity",
                                                "target_modules": modules}, "LoRA settings")
            nora = build_config(AdapterConfig, {**nora_values, "method": "nora",
                                                "target_modules": modules}, "NoRA settings")
        st.header("Training")
        train = train_controls(active)
    if None in (loaded, targets, task_config, lora, nora, train):
        return None
    choice, suffixes, _ = targets
    return lm_session.LMSettings(task_config, choice, suffixes, lora, nora, train,
                                 upload=upload, upload_name=upload_name)
