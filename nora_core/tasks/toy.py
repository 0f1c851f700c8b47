"""The registry of toy tasks: names, config classes, descriptions and a factory.

    task = make_toy_task("nonlinear_teacher", d=64, hidden_width=16)
    task.floor(None)  # the linear ceiling

Each task class carries `config_class`, `description` (one or two sentences for the app)
and `target_modules` (the layers adapters target by default).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nora_core.tasks.classification import Classification2DConfig, Classification2DTask
from nora_core.tasks.teachers import (LinearTeacherConfig, LinearTeacherTask,
                                      NonlinearTeacherConfig, NonlinearTeacherTask)

__all__ = [
    "Classification2DConfig",
    "Classification2DTask",
    "LinearTeacherConfig",
    "LinearTeacherTask",
    "NonlinearTeacherConfig",
    "NonlinearTeacherTask",
    "TOY_TASKS",
    "TOY_TASK_DESCRIPTIONS",
    "make_toy_task",
    "toy_config_class",
]

TOY_TASKS: dict[str, type] = {
    "linear_teacher": LinearTeacherTask,
    "nonlinear_teacher": NonlinearTeacherTask,
    "classification_2d": Classification2DTask,
}

TOY_TASK_DESCRIPTIONS: dict[str, str] = {name: cls.description for name, cls in TOY_TASKS.items()}


def toy_config_class(name: str) -> type:
    """Return the config dataclass of the toy task `name`.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in TOY_TASKS:
        known = ", ".join(TOY_TASKS)
        raise ValueError(f"unknown toy task {name!r}; choose one of {known}")
    return TOY_TASKS[name].config_class


def make_toy_task(name: str, **kwargs: Any):
    """Build the toy task `name` from config field values.

    Args:
        name: a key of `TOY_TASKS`.
        **kwargs: fields of the task's config dataclass; missing fields take their defaults.

    Raises:
        ValueError: for an unknown task name, an unknown field, or an invalid value.
    """
    config_class = toy_config_class(name)
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(unknown)} for toy task {name!r}; "
            f"valid fields: {', '.join(sorted(known))}"
        )
    return TOY_TASKS[name](config_class(**kwargs))
