"""Describe the fields of a config dataclass so that widgets and CLI flags come from one place.

Each config dataclass declares its fields with `metadata={"help": ..., "min": ..., ...}`.
`field_specs` turns those declarations into `FieldSpec` records. The Streamlit pages build
their controls from them and `add_arguments` builds argparse flags from them, so a choice,
a range or a help text is written once.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin


@dataclass(frozen=True)
class FieldSpec:
    """One user-settable field of a config dataclass."""

    name: str
    kind: str  # "choice", "int", "float", "bool", "str", "list"
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    unit: str = ""
    log: bool = False
    optional: bool = False
    label: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        """The label a widget shows: the declared label, else the field name."""
        return self.label or self.name


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        if len(args) == 1:
            return args[0], optional
        return Union[tuple(args)], optional
    return annotation, False


def _kind_of(annotation: Any) -> tuple[str, tuple[Any, ...]]:
    if get_origin(annotation) is Literal:
        return "choice", get_args(annotation)
    if annotation is bool:
        return "bool", ()
    if annotation is int:
        return "int", ()
    if annotation is float:
        return "float", ()
    if annotation is str:
        return "str", ()
    if get_origin(annotation) in (tuple, list):
        return "list", ()
    # Unions such as `tuple[str, ...] | str` are edited as text.
    return "str", ()


def field_specs(config_cls: type) -> list[FieldSpec]:
    """List the fields of `config_cls` that declare a help text, in declaration order."""
    hints = typing.get_type_hints(config_cls)
    specs = []
    for field in dataclasses.fields(config_cls):
        meta = field.metadata
        if "help" not in meta:
            continue
        annotation, optional = _strip_optional(hints[field.name])
        kind, choices = _kind_of(annotation)
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        specs.append(
            FieldSpec(
                name=field.name,
                kind=meta.get("kind", kind),
                default=default,
                help=meta["help"],
                choices=tuple(meta.get("choices", choices)),
                minimum=meta.get("min"),
                maximum=meta.get("max"),
                unit=meta.get("unit", ""),
                log=meta.get("log", False),
                optional=optional,
                label=meta.get("label", ""),
                aliases=tuple(meta.get("aliases", ())),
            )
        )
    return specs


def check_range(owner: str, name: str, value: float, minimum: float | None = None,
                maximum: float | None = None, *, integer: bool = False,
                exclusive_max: bool = False) -> None:
    """Raise ValueError naming `owner.name` when `value` is not a finite number in range."""
    kind = "an integer" if integer else "a finite number"
    if isinstance(value, bool) or (integer and not isinstance(value, int)):
        raise ValueError(f"{owner}.{name} must be {kind}, got {value!r}")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be {kind}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value!r}")
    if maximum is not None:
        too_big = value >= maximum if exclusive_max else value > maximum
        if too_big:
            bound = f"< {maximum}" if exclusive_max else f"<= {maximum}"
            raise ValueError(f"{owner}.{name} must be {bound}, got {value!r}")


def check_choice(owner: str, name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise ValueError naming `owner.name` when `value` is not one of `choices`."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{owner}.{name} must be one of {allowed}, got {value!r}")


def _flag_help(spec: FieldSpec) -> str:
    parts = [spec.help]
    if spec.unit:
        parts.append(f"Unit: {spec.unit}.")
    if spec.minimum is not None or spec.maximum is not None:
        low = "-inf" if spec.minimum is None else spec.minimum
        high = "inf" if spec.maximum is None else spec.maximum
        parts.append(f"Range: [{low}, {high}].")
    parts.append("Default: %(default)s.")
    return " ".join(parts)


def add_arguments(parser: argparse.ArgumentParser, config_cls: type, prefix: str = "",
                  skip: tuple[str, ...] = ()) -> None:
    """Add one `--flag` per field of `config_cls` to `parser`; defaults stay None if unset."""
    for spec in field_specs(config_cls):
        if spec.name in skip:
            continue
        flag = "--" + (prefix + spec.name).replace("_", "-")
        dest = prefix + spec.name
        kwargs: dict[str, Any] = {"dest": dest, "default": spec.default, "help": _flag_help(spec)}
        if spec.kind == "choice":
            kwargs["choices"] = [c for c in spec.choices]
            kwargs["type"] = type(spec.choices[0]) if spec.choices else str
        elif spec.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif spec.kind == "int":
            kwargs["type"] = int
        elif spec.kind == "float":
            kwargs["type"] = float
        elif spec.kind == "list":
            kwargs["type"] = _comma_list
        else:
            kwargs["type"] = str
        aliases = ["--" + (prefix + alias).replace("_", "-") for alias in spec.aliases]
        parser.add_argument(flag, *aliases, **kwargs)


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def config_from_namespace(config_cls: type, namespace: argparse.Namespace, prefix: str = "",
                          **overrides: Any):
    """Build `config_cls` from the flags `add_arguments` added; validation errors propagate."""
    values = {}
    for spec in field_specs(config_cls):
        dest = prefix + spec.name
        if hasattr(namespace, dest):
            values[spec.name] = getattr(namespace, dest)
    values.update(overrides)
    return config_cls(**values)
