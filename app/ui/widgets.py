"""Streamlit controls built from the fields of a config dataclass.

Every control comes from a `FieldSpec` (see `nora_core.fields.field_specs`): choices become
select boxes, log-scaled numbers become select sliders over a 1-2-3-5 grid (powers of two
for integers), bounded numbers become sliders or number inputs, and optional fields accept
an empty value. Ranges, labels and help texts are declared once, on the dataclass.

Every control is mirrored in the page URL (see `app.ui.url_state`): it starts from a valid
query parameter of its key when there is one, and writes its value back, so a copied link
reopens the page with the same settings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import streamlit as st

from nora_core.fields import FieldSpec, field_specs

from app.ui import url_state

ConfigT = TypeVar("ConfigT")

# Bounded numbers whose range spans at most this many units get a slider. Wider ranges
# (seeds, sample counts, gradient clip) get a number input, because a slider cannot hit
# small values in a wide range.
SLIDER_SPAN = {"int": 1024, "float": 20.0}

# Mantissas of the log grid for float fields, per decade.
LOG_MANTISSAS = (1.0, 2.0, 3.0, 5.0)


def log_grid(minimum: float, maximum: float, extra: Iterable[float] = ()) -> list[float]:
    """List 1-2-3-5 values per decade in [minimum, maximum], plus the `extra` values in range.

    Args:
        minimum: smallest value, > 0.
        maximum: largest value, >= minimum.
        extra: values that must appear, such as the default.
    """
    if minimum <= 0 or maximum < minimum:
        raise ValueError(f"log_grid needs 0 < minimum <= maximum, got {minimum} and {maximum}")
    values = set()
    for exponent in range(math.floor(math.log10(minimum)), math.ceil(math.log10(maximum)) + 1):
        for mantissa in LOG_MANTISSAS:
            # Rounding to 12 significant digits removes float noise such as 3.0000000000000004e-05.
            value = float(f"{mantissa * 10.0 ** exponent:.12g}")
            if minimum <= value <= maximum:
                values.add(value)
    values.update(float(v) for v in extra if v is not None and minimum <= v <= maximum)
    values.update((float(minimum), float(maximum)))
    return sorted(values)


def power_of_two_grid(minimum: int, maximum: int, extra: Iterable[int] = ()) -> list[int]:
    """List the powers of two in [minimum, maximum], plus both ends and the `extra` values."""
    if minimum < 1 or maximum < minimum:
        raise ValueError(f"power_of_two_grid needs 1 <= minimum <= maximum, got {minimum} and {maximum}")
    values = {minimum, maximum}
    power = 1
    while power <= maximum:
        if power >= minimum:
            values.add(power)
        power *= 2
    values.update(int(v) for v in extra if v is not None and minimum <= v <= maximum)
    return sorted(values)


def nice_step(span: float) -> float:
    """Return a 1, 2 or 5 times a power of ten close to span / 100, for slider steps."""
    if span <= 0:
        return 0.01
    raw = span / 100.0
    exponent = math.floor(math.log10(raw))
    for mantissa in (1.0, 2.0, 5.0, 10.0):
        step = mantissa * 10.0 ** exponent
        if step >= raw:
            return float(f"{step:.12g}")
    return 10.0 ** (exponent + 1)


def format_number(value: Any) -> str:
    """Format a grid value compactly: 0.003 → "0.003", 1e-05 → "1e-05", 64 → "64"."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def help_text(spec: FieldSpec, maximum: float | None = None) -> str:
    """Return the field's help text with its unit and range appended.

    Args:
        spec: the field.
        maximum: the upper bound in force, when tighter than the declared one.
    """
    parts = [spec.help]
    if spec.unit:
        parts.append(f"Unit: {spec.unit}.")
    high = spec.maximum if maximum is None else maximum
    if spec.minimum is not None and high is not None:
        parts.append(f"Range: {format_number(spec.minimum)} to {format_number(high)}.")
    elif spec.minimum is not None:
        parts.append(f"Minimum: {format_number(spec.minimum)}.")
    return " ".join(parts)


def field_widget(spec: FieldSpec, key: str, *, default: Any = None,
                 choices: Sequence[Any] | None = None, maximum: float | None = None,
                 label: str | None = None, placeholder: str | None = None,
                 disabled: bool = False) -> Any:
    """Draw one control for `spec` and return its current value.

    Args:
        spec: the field to edit.
        key: the widget key; it must be unique on the page.
        default: the initial value; None takes the field's declared default.
        choices: replaces the declared choices of a choice field (e.g. present devices).
        maximum: a tighter upper bound than the declared one (e.g. a layer's width for r).
        label: replaces the declared label.
        placeholder: the grey text of an empty optional number, e.g. "= r".
        disabled: draw the control greyed out.
    """
    declared = spec.default if default is None else default
    title = label or spec.title
    high = spec.maximum if maximum is None else min(maximum, spec.maximum or maximum)
    value = url_state.initial_value(
        key, declared, lambda text: url_state.decode(spec, text, choices=choices, maximum=high),
        title)
    tip = help_text(spec, high)
    common = {"key": key, "help": tip, "disabled": disabled,
              "on_change": url_state.forget_warning, "args": (key,)}
    if placeholder is not None:
        common["placeholder"] = placeholder
    result = _draw(spec, title, value, high, choices, common)
    url_state.show_warning(key)
    url_state.remember(key, result)
    return result


def _draw(spec: FieldSpec, title: str, value: Any, high: float | None,
          choices: Sequence[Any] | None, common: dict[str, Any]) -> Any:
    if spec.kind == "choice":
        common.pop("placeholder", None)
        options = list(choices if choices is not None else spec.choices)
        if spec.optional and value is None:
            options = [None, *options]
        index = options.index(value) if value in options else 0
        return st.selectbox(title, options, index=index,
                            format_func=lambda v: "default" if v is None else str(v), **common)

    if spec.kind == "bool":
        common.pop("placeholder", None)
        return st.checkbox(title, value=bool(value), **common)

    if spec.kind in ("int", "float"):
        return _number_widget(spec, title, value, high, common)

    text = value if isinstance(value, str) else ", ".join(value or ())
    entered = st.text_input(title, value=text, **common).strip()
    if spec.kind == "list":
        items = tuple(item.strip() for item in entered.split(",") if item.strip())
        return items or (None if spec.optional else ())
    return entered or (None if spec.optional else "")


def _number_widget(spec: FieldSpec, title: str, value: Any, high: float | None,
                   common: dict[str, Any]) -> Any:
    integer = spec.kind == "int"
    cast = int if integer else float
    low = spec.minimum

    if spec.optional:
        # Streamlit lets a user empty a number input only when its default is None, so a
        # starting number goes in through session state. The help explains what empty means.
        if value is not None and common["key"] not in st.session_state:
            st.session_state[common["key"]] = cast(value)
        bounds = {}
        if low is not None:
            bounds["min_value"] = cast(low)
        if high is not None:
            bounds["max_value"] = cast(high)
        common.setdefault("placeholder", "empty: see help")
        return st.number_input(title, value=None, step=1 if integer else None, **bounds,
                               **common)

    common.pop("placeholder", None)
    if spec.log and low is not None and high is not None and low > 0:
        if integer:
            grid = power_of_two_grid(int(low), int(high), extra=[min(int(value), int(high))])
        else:
            grid = log_grid(float(low), float(high), extra=[value])
        start = min(grid, key=lambda g: abs(math.log(g) - math.log(max(value, low))))
        return st.select_slider(title, options=grid, value=start, format_func=format_number,
                                **common)

    if low is not None and high is not None and high - low <= SLIDER_SPAN[spec.kind]:
        start = min(max(cast(value), cast(low)), cast(high))
        step = 1 if integer else nice_step(float(high - low))
        return st.slider(title, min_value=cast(low), max_value=cast(high), value=start,
                         step=step, **common)

    bounds = {}
    if low is not None:
        bounds["min_value"] = cast(low)
    if high is not None:
        bounds["max_value"] = cast(high)
    start = cast(value)
    if low is not None:
        start = max(start, cast(low))
    if high is not None:
        start = min(start, cast(high))
    # Typing sets any value. The +/- buttons move by 0.1, a usable step for the wide float
    # ranges (gradient clip, unbounded lora_alpha) that reach this branch.
    step = 1 if integer else 0.1
    return st.number_input(title, value=start, step=step, format=None if integer else "%g",
                           **bounds, **common)


def url_selectbox(label: str, options: Sequence[Any], key: str, *, default: Any,
                  format_func=str, help: str | None = None) -> Any:
    """Draw a select box that is not built from a field, mirrored in the URL like the others.

    Args:
        label: the widget label.
        options: the values to choose from.
        key: the widget key and query parameter name.
        default: the starting value without a valid URL parameter.
        format_func: turns an option into its displayed text.
        help: the tooltip.
    """
    start = url_state.initial_value(key, default,
                                    lambda text: url_state.decode_choice(text, options), label)
    index = list(options).index(start) if start in options else 0
    value = st.selectbox(label, options, index=index, key=key, format_func=format_func,
                         help=help, on_change=url_state.forget_warning, args=(key,))
    url_state.show_warning(key)
    url_state.remember(key, value)
    return value


def url_checkbox(label: str, key: str, *, default: bool, help: str | None = None,
                 toggle: bool = False) -> bool:
    """Draw a checkbox (or a toggle) that is not built from a field, mirrored in the URL.

    Args:
        label: the widget label.
        key: the widget key and query parameter name.
        default: the starting value without a valid URL parameter.
        help: the tooltip.
        toggle: draw a toggle switch instead of a checkbox.
    """
    start = url_state.initial_value(key, default, url_state.decode_bool, label)
    draw = st.toggle if toggle else st.checkbox
    value = draw(label, value=bool(start), key=key, help=help,
                 on_change=url_state.forget_warning, args=(key,))
    url_state.show_warning(key)
    url_state.remember(key, value)
    return value


def config_widgets(config_cls: type, prefix: str, *, include: Sequence[str] | None = None,
                   exclude: Iterable[str] = (), defaults: dict[str, Any] | None = None,
                   choices: dict[str, Sequence[Any]] | None = None,
                   maxima: dict[str, float] | None = None,
                   labels: dict[str, str] | None = None,
                   placeholders: dict[str, str] | None = None) -> dict[str, Any]:
    """Draw one control per declared field of `config_cls` and return the values by field name.

    Widget keys are `f"{prefix}.{field}"`.

    Args:
        config_cls: a dataclass whose fields carry `metadata={"help": ...}`.
        prefix: the key prefix, unique per form on the page.
        include: only these fields, in this order; None means every declared field.
        exclude: fields to leave out.
        defaults: initial values that replace the declared defaults.
        choices: replacement choices per field.
        maxima: tighter upper bounds per field.
        labels: replacement labels per field.
        placeholders: grey text of empty optional numbers per field.
    """
    specs = {spec.name: spec for spec in field_specs(config_cls)}
    names = list(include) if include is not None else list(specs)
    skipped = set(exclude)
    defaults = defaults or {}
    values = {}
    for name in names:
        if name in skipped:
            continue
        spec = specs[name]
        values[name] = field_widget(
            spec, f"{prefix}.{name}", default=defaults.get(name),
            choices=(choices or {}).get(name), maximum=(maxima or {}).get(name),
            label=(labels or {}).get(name), placeholder=(placeholders or {}).get(name))
    return values


def build_config(config_cls: type[ConfigT], values: dict[str, Any], section: str) -> ConfigT | None:
    """Construct `config_cls(**values)`, or show the validation error and return None.

    The page keeps running on invalid input: the error is drawn with `st.error` and the
    caller keeps its previous config.

    Args:
        config_cls: the frozen config dataclass.
        values: field values, typically from `config_widgets`.
        section: the name of the settings group, shown before the error, e.g. "Task settings".
    """
    try:
        return config_cls(**values)
    except ValueError as error:
        st.error(f"{section}: {error}")
        return None


def step_button(column, key: str, trainer) -> bool:
    """Draw the Step button in `column`; return True when it was pressed.

    A step trains `eval_every` steps, so each press adds one validation point.
    """
    eval_every = trainer.train_config.eval_every if trainer else 1
    with column:
        return st.button("Step", key=key, icon=":material/skip_next:", width="stretch",
                         disabled=trainer is None,
                         help=f"Pause and train {eval_every} steps (one validation point).")


def play_pause_buttons(play_column, pause_column, key_prefix: str, *, playing: bool,
                       finished: bool, set_playing) -> None:
    """Draw Play and Pause (keys `<prefix>play`, `<prefix>pause`) that call `set_playing`."""
    play_column.button("Play", key=f"{key_prefix}play", icon=":material/play_arrow:",
                       width="stretch", type="primary", disabled=playing or finished,
                       on_click=set_playing, args=(True,),
                       help="Train continuously and update the charts live.")
    pause_column.button("Pause", key=f"{key_prefix}pause", icon=":material/pause:",
                        width="stretch", disabled=not playing, on_click=set_playing,
                        args=(False,), help="Stop training; the runs keep their state.")
