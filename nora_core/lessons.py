"""Guided lessons: short explanations, a question to watch for, and the settings they set.

A lesson's settings are keyed by the app's control keys, which are also the query parameter
names of a shareable link (`task.name`, `adapter.r`, `lora.lora_alpha`, `train.lr`, ...).
Controls a lesson does not name start at their declared defaults, so every student who
opens a lesson starts from the same point and can change anything afterwards.

The facts the texts state were measured with `PairedTrainer` on the default toy tasks
(d = 64, seed 0, lr 3e-3, batch 128, 1,000 steps): on the non-linear teacher at r = 16,
LoRA's validation MSE stays at 0.40 (linear ceiling 0.39) while NoRA's reaches 0.0002; on
the linear teacher at r = 4, LoRA reaches its Eckart–Young floor (0.126) and NoRA stops at
0.23; with lora_alpha = 4 at r = 64 (scale 1/16), LoRA's MSE after 250 steps is 0.039
against NoRA's 0.021, and with lora_alpha = r it is 0.0007.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

PAGES = ("playground",)
_ID_PATTERN = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


@dataclass(frozen=True)
class Lesson:
    """One guided lesson: what it explains, what to look for, and the settings it opens with."""

    id: str
    title: str
    explanation: str
    look_for: str
    settings: tuple[tuple[str, Any], ...]
    page: str = "playground"

    def __post_init__(self) -> None:
        if not _ID_PATTERN.fullmatch(self.id):
            raise ValueError(f"Lesson.id must be lowercase words joined by '-', got {self.id!r}")
        for name in ("title", "explanation", "look_for"):
            if not getattr(self, name).strip():
                raise ValueError(f"Lesson {self.id}: {name} must not be empty")
        if self.page not in PAGES:
            raise ValueError(f"Lesson {self.id}: page must be one of {PAGES}, got {self.page!r}")
        keys = [key for key, _ in self.settings]
        if len(set(keys)) != len(keys):
            raise ValueError(f"Lesson {self.id}: a control is set twice in {keys}")

    def settings_dict(self) -> dict[str, Any]:
        """Return the settings as control key → value."""
        return dict(self.settings)


LESSONS: tuple[Lesson, ...] = (
    Lesson(
        id="linear-ceiling",
        title="The linear ceiling",
        explanation=(
            "The teacher adds a non-linear function g(x) to the frozen layer. Any linear "
            "update, whatever its rank, leaves the residual of the least-squares fit of g "
            "on x: the dashed line 'linear ceiling'. NoRA puts an activation between A and B, "
            "so its update is a non-linear function of x and is not bound by that line."),
        look_for=(
            "LoRA's validation loss flattens on the linear ceiling and stays there; NoRA "
            "goes far below it within a few hundred steps. Raise r to 64 and press Reset: "
            "LoRA still stops at the ceiling, because the ceiling holds for every rank."),
        settings=(("task.name", "nonlinear_teacher"), ("adapter.r", 16)),
    ),
    Lesson(
        id="lora-home-turf",
        title="LoRA's home turf: a linear teacher",
        explanation=(
            "Here the target is the frozen layer plus a fixed matrix ΔW*, so the best "
            "update is linear. By the Eckart–Young theorem the best rank-r matrix leaves the "
            "error of the discarded singular values of ΔW*: the dashed floor at LoRA's r."),
        look_for=(
            "LoRA settles on the Eckart–Young floor. NoRA stays clearly above it: its "
            "activation bends a map that should be straight, and its effective rank drops "
            "to about half of r. Non-linearity is not free."),
        settings=(("task.name", "linear_teacher"), ("adapter.r", 4)),
    ),
    Lesson(
        id="scaling-confound",
        title="The scaling confound",
        explanation=(
            "The NoRA paper's LoRA baseline fixes lora_alpha = 32, so at r = 512 its update "
            "is scaled by s = 32/512 = 1/16, while NoRA uses s = 1. The toy layer is only 64 "
            "wide, so this lesson reproduces the same s = 1/16 with lora_alpha = 4 at r = 64. "
            "With Adam, a smaller s makes the update grow more slowly, much like a smaller "
            "learning rate."),
        look_for=(
            "For the first few hundred steps NoRA's loss is below LoRA's, even though the "
            "teacher is linear. Now clear \"LoRA's own lora_alpha\" under LoRA options (so "
            "lora_alpha = r and s = 1) and press Reset: LoRA is then far ahead from the start. "
            "A fair comparison tunes each method's scale and learning rate."),
        settings=(("task.name", "linear_teacher"), ("adapter.r", 64), ("lora.lora_alpha", 4.0)),
    ),
    Lesson(
        id="identity-is-lora",
        title="NoRA with the identity activation is LoRA",
        explanation=(
            "NoRA computes s·B·act(A x). With act = identity and no dropout this is s·B·A x, "
            "exactly LoRA. Both runs start from the same seed, so A starts equal, B starts at "
            "zero, and they see the same batches."),
        look_for=(
            "The two curves lie exactly on top of each other, and both spectra and effective "
            "ranks agree. Switch the NoRA activation back to silu and press Reset to see them "
            "separate."),
        settings=(("task.name", "nonlinear_teacher"), ("adapter.r", 8),
                  ("nora.activation", "identity")),
    ),
    Lesson(
        id="dropout-effective-rank",
        title="Dropout and effective rank",
        explanation=(
            "LoRA drops entries of its input x; NoRA drops units of its r-dimensional "
            "bottleneck after the activation, which the paper calls structural dropout. "
            "The effective rank exp(H(p)), with p the normalised singular values of the "
            "adapter outputs, measures how evenly an adapter uses its r directions."),
        look_for=(
            "With dropout 0.3, NoRA's loss falls more slowly than without, and its effective "
            "rank ends about the same or slightly lower, not higher. Set dropout to 0 and press "
            "Reset to compare with the dimmed earlier curve. Later versions of the paper also "
            "say dropout seems to regularise rather than expand rank."),
        settings=(("task.name", "nonlinear_teacher"), ("adapter.r", 16),
                  ("adapter.lora_dropout", 0.3)),
    ),
    Lesson(
        id="spectrum-views",
        title="Two views of the spectrum",
        explanation=(
            "The weight view takes the singular values of the update matrix ΔW = s·BA, which "
            "only LoRA has. The output view runs held-out inputs through the adapter, centres "
            "its outputs Δy and takes their singular values, which works for both adapters. "
            "Both views have at most r non-zero values, because Δy lies in the column space "
            "of B."),
        look_for=(
            "LoRA's two views nearly agree: the inputs are isotropic (x ~ N(0, I)), so Δy = "
            "ΔW x inherits the singular values of ΔW. NoRA has only the output view, since an "
            "activation between A and B leaves no single matrix ΔW. At step 0 the update is "
            "all zero and there is no spectrum yet."),
        settings=(("task.name", "nonlinear_teacher"), ("adapter.r", 8),
                  ("train.spectrum_every", 5)),
    ),
)


def lesson_by_id(lesson_id: str) -> Lesson:
    """Return the lesson `lesson_id`.

    Raises:
        ValueError: for an unknown id, listing the known ones.
    """
    for lesson in LESSONS:
        if lesson.id == lesson_id:
            return lesson
    known = ", ".join(lesson.id for lesson in LESSONS)
    raise ValueError(f"unknown lesson {lesson_id!r}; choose one of {known}")
