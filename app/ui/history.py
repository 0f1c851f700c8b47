"""The run history of one session: validation curves of earlier runs, for a dimmed overlay.

On Reset (and when the server frees a closed tab's trainer) the curves of the old runs move
here. Only steps and validation losses are kept, thinned to the chart's point budget, so
a full history costs a few hundred kB per session, not a trainer.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from nora_core.trainer import PairedTrainer

from app.ui.charts import series


@dataclass(frozen=True)
class PastRun:
    """The validation curve of one adapter of an earlier run."""

    number: int  # counts runs within the session, starting at 1
    run_name: str  # "LoRA" or "NoRA", which picks the colour
    label: str  # e.g. "#2 LoRA r=8, lr 0.003"
    task_name: str
    steps: tuple[int, ...]
    val_loss: tuple[float, ...]


class RunHistory:
    """The last `size` finished runs of a session, oldest first.

    Args:
        size: how many runs (each with all its adapters) to keep; 0 keeps none.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._runs: collections.deque[tuple[PastRun, ...]] = collections.deque(maxlen=max(size, 1))
        self._counter = 0

    def add(self, trainer: PairedTrainer, task_name: str) -> bool:
        """Keep the validation curves of `trainer`'s runs; return False if it has none yet."""
        if self.size == 0 or trainer.step == 0:
            return False
        self._counter += 1
        lr = trainer.train_config.lr
        curves = []
        for name, run in trainer.runs.items():
            steps, values = series(run.history, "val_loss")
            if len(steps) < 2:
                continue
            label = f"#{self._counter} {run.config.label()}, lr {lr:g}"
            curves.append(PastRun(self._counter, name, label, task_name, tuple(steps),
                                  tuple(values)))
        if not curves:
            self._counter -= 1
            return False
        self._runs.append(tuple(curves))
        return True

    def clear(self) -> None:
        """Forget every past run; the numbering goes on."""
        self._runs.clear()

    def curves(self, task_name: str | None = None) -> list[PastRun]:
        """Return the kept curves, oldest first; with `task_name`, only that task's.

        Losses of different tasks have different scales, so the chart overlays only the
        runs of the task on screen.
        """
        return [curve for run in self._runs for curve in run
                if task_name is None or curve.task_name == task_name]

    def __len__(self) -> int:
        return len(self._runs)
