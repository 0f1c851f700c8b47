"""Shareable settings: the value of every control mirrored in the page URL's query parameters.

A control reads its starting value from the URL when the session has no value for it yet
(a shared link, a lesson, a reload) and writes its current value back on every run, so the
address bar always contains the page's settings. The parameter name is the widget key, e.g.
`?train.lr=0.003&train.seed=0`. Every value is written, defaults included, because a
control's default can depend on the session (it restarts at the running trainer's
settings), and a link must mean the same thing in every browser.

A value from the URL is validated like the control itself: kind, choices and range. A bad
one shows a warning at the control and the control falls back to its default. The warning
stays until the user changes that control.

Streamlit 1.67's own `bind="query-params"` is not used: it leaves values equal to the
default out of the URL and drops invalid values without a message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from nora_core.fields import FieldSpec

# Session-state entries: keys this session has written to the URL, and open warnings.
WRITTEN = "url_state_written"
WARNINGS = "url_state_warnings"

TRUE_TEXTS = ("true", "1", "yes", "on")
FALSE_TEXTS = ("false", "0", "no", "off")


def encode(value: Any) -> str:
    """Return the URL text of a control value: "" for None, "true"/"false", shortest floats."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    return str(value)


def _show(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def decode_choice(text: str, options: Sequence[Any]) -> Any:
    """Return the option whose URL text is `text`.

    Raises:
        ValueError: naming the allowed values.
    """
    for option in options:
        if encode(option) == text:
            return option
    allowed = ", ".join("empty" if option is None else repr(encode(option)) for option in options)
    raise ValueError(f"expected one of {allowed}")


def decode_bool(text: str) -> bool:
    """Return the truth value of "true"/"false" (also 1/0, yes/no, on/off).

    Raises:
        ValueError: for any other text.
    """
    lowered = text.strip().lower()
    if lowered in TRUE_TEXTS:
        return True
    if lowered in FALSE_TEXTS:
        return False
    raise ValueError("expected true or false")


def decode(spec: FieldSpec, text: str, *, choices: Sequence[Any] | None = None,
           maximum: float | None = None) -> Any:
    """Parse and validate the URL text of a field, as its control would accept it.

    Args:
        spec: the field.
        text: the query parameter's value.
        choices: the choices the control offers, when they replace the declared ones.
        maximum: the upper bound in force, when tighter than the declared one.

    Raises:
        ValueError: with what was expected, e.g. "expected a number from 1e-06 to 10".
    """
    if spec.kind == "choice":
        options = list(choices if choices is not None else spec.choices)
        if spec.optional:
            options = [None, *options]
        return decode_choice(text, options)
    if spec.kind == "bool":
        return decode_bool(text)
    if spec.kind in ("int", "float"):
        return _decode_number(spec, text, maximum)
    stripped = text.strip()
    if spec.kind == "list":
        items = tuple(item.strip() for item in stripped.split(",") if item.strip())
        return items or (None if spec.optional else ())
    return stripped or (None if spec.optional else "")


def _decode_number(spec: FieldSpec, text: str, maximum: float | None) -> Any:
    stripped = text.strip()
    if not stripped:
        if spec.optional:
            return None
        raise ValueError("expected a value, got an empty one")
    low = spec.minimum
    high = spec.maximum if maximum is None else maximum
    bounds = ""
    if low is not None and high is not None:
        bounds = f" from {_show(low)} to {_show(high)}"
    elif low is not None:
        bounds = f" of at least {_show(low)}"
    if spec.kind == "int":
        try:
            value: float = int(stripped)
        except ValueError:
            raise ValueError(f"expected an integer{bounds}") from None
    else:
        try:
            value = float(stripped)
        except ValueError:
            raise ValueError(f"expected a number{bounds}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number{bounds}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"expected a number{bounds}")
    return value


def _warnings() -> dict[str, str]:
    if WARNINGS not in st.session_state:
        st.session_state[WARNINGS] = {}
    return st.session_state[WARNINGS]


def initial_value(key: str, default: Any, parse, label: str) -> Any:
    """Return the starting value of control `key`: from the URL when valid, else `default`.

    The URL is read only while the session has no value for the control. Afterwards the
    control's own state wins, and the URL mirrors it.

    Args:
        key: the widget key, which is also the query parameter name.
        default: the value without (or with an invalid) URL parameter.
        parse: turns the parameter's text into a value; raises ValueError when invalid.
        label: the control's label, used in the warning.
    """
    if key in st.session_state or key not in st.query_params:
        return default
    text = st.query_params[key]
    try:
        return parse(text)
    except ValueError as error:
        _warnings()[key] = (f"Link parameter {key}={text!r} is invalid for {label}: {error}. "
                            f"Using {_show(default)} instead; change it here.")
        return default


def forget_warning(key: str) -> None:
    """Drop the URL warning of control `key`; used as its on_change callback."""
    _warnings().pop(key, None)


def show_warning(key: str) -> None:
    """Draw the pending URL warning of control `key`, if any."""
    message = _warnings().get(key)
    if message:
        st.warning(message, icon=":material/link_off:")


def remember(key: str, value: Any) -> None:
    """Write the current value of control `key` to the URL, if it differs from what is there."""
    text = encode(value)
    if st.query_params.get(key) != text:
        st.query_params[key] = text
    written = st.session_state.get(WRITTEN)
    if written is None:
        written = st.session_state[WRITTEN] = set()
    written.add(key)


def set_param(key: str, value: Any) -> None:
    """Write a page-level parameter that is not a control, such as the open lesson."""
    text = encode(value)
    if st.query_params.get(key) != text:
        st.query_params[key] = text


def prune() -> None:
    """Remove the parameters of controls that this run did not draw.

    Call it at the end of a page's full run. A control that a run does not draw (the
    settings of a task that is no longer selected, a rank field that is switched off)
    would otherwise leave its old value in the link.
    """
    ctx = get_script_run_ctx()
    # NOTE: Streamlit 1.67 lists the keys drawn in this run in
    # `ctx.shared.widget_user_keys_this_run`; without it, stale parameters stay in the
    # link, where nothing reads them.
    drawn = getattr(getattr(ctx, "shared", None), "widget_user_keys_this_run", None)
    written = st.session_state.get(WRITTEN)
    if drawn is None or not written:
        return
    for key in sorted(written):
        if key not in drawn and key in st.query_params:
            del st.query_params[key]
            written.discard(key)


def share_link() -> str:
    """Return the link that reopens this page with the current settings."""
    query = urlencode(st.query_params.to_dict())
    base = st.context.url or ""
    return f"{base}?{query}" if query else base


def share_box() -> None:
    """Draw the current link with a copy button and a note on what opening it reproduces."""
    with st.expander("Share these settings", icon=":material/link:"):
        st.code(share_link(), language=None, wrap_lines=True)
        st.caption("The link holds every setting on this page, the seeds included. Opening "
                   "it starts a fresh session with the same settings, so Play draws the same "
                   "curves. Use the copy button at the right of the box.")
