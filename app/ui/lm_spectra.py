"""Per-layer spectrum snapshots of a language-model trainer, kept for the time slider.

`PairedTrainer` keeps only the latest output-view spectra of each run. The LM page takes a
`SpectrumSnapshot` after every measurement, so the effective-rank heatmap and the averaged
normalised spectrum can be shown at any measured step, not only the latest one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from nora_core.spectra import average_normalised_spectrum
from nora_core.trainer import PairedTrainer

# Snapshots kept per session; beyond this every second older snapshot is dropped, so the
# slider still spans the whole run with a coarser grid.
MAX_SNAPSHOTS = 300

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def layer_and_target(module_name: str) -> tuple[str, str]:
    """Split a module name into its block index and the target inside the block.

    "model.layers.3.self_attn.q_proj" → ("3", "self_attn.q_proj"); GPT-2's
    "transformer.h.0.attn.c_attn" → ("0", "attn.c_attn"). A name without a block index
    is its own target in the block "-".
    """
    found = _LAYER_INDEX.search(module_name)
    if found is None:
        return "-", module_name
    return found.group(1), module_name[found.end():]


@dataclass(frozen=True)
class SpectrumSnapshot:
    """The output-view spectra of every run at one measured step.

    `effective_rank` maps run name → module name → effective rank (None for a non-finite
    spectrum, 0.0 for an all-zero update). `average` maps run name → the normalised
    singular values averaged over the adapted modules, or None when every update is zero.
    A run that has diverged has no entry.
    """

    step: int
    effective_rank: dict[str, dict[str, float | None]] = field(default_factory=dict)
    average: dict[str, np.ndarray | None] = field(default_factory=dict)


def take_snapshot(trainer: PairedTrainer) -> SpectrumSnapshot:
    """Copy the summaries of every live run's latest output-view spectra."""
    ranks: dict[str, dict[str, float | None]] = {}
    averages: dict[str, np.ndarray | None] = {}
    for name, run in trainer.runs.items():
        if run.diverged:
            continue
        ranks[name] = {layer: spectrum.effective_rank
                       for layer, spectrum in run.output_spectra.items()}
        averages[name] = average_normalised_spectrum(run.output_spectra)
    return SpectrumSnapshot(trainer.step, ranks, averages)


def append_snapshot(snapshots: list[SpectrumSnapshot], snapshot: SpectrumSnapshot) -> None:
    """Add `snapshot`, replacing one of the same step, and thin the list past MAX_SNAPSHOTS."""
    if snapshots and snapshots[-1].step == snapshot.step:
        snapshots[-1] = snapshot
    else:
        snapshots.append(snapshot)
    if len(snapshots) > MAX_SNAPSHOTS:
        latest = snapshots[-1]
        # Keep the even positions (step 0 among them) and always the latest snapshot.
        snapshots[:] = snapshots[:-1:2] + [latest]


@dataclass(frozen=True)
class RankGrid:
    """Effective ranks of one run laid out as blocks (rows) × targets (columns)."""

    layers: list[str]
    targets: list[str]
    values: np.ndarray  # (len(layers), len(targets)); NaN where no spectrum exists


def rank_grid(ranks: dict[str, float | None]) -> RankGrid:
    """Arrange module name → effective rank as a blocks × targets grid.

    Blocks are sorted by index and targets keep the model's module order. A cell with no
    adapted module, a non-finite spectrum or an all-zero update (rank 0) is NaN, because
    its effective rank is undefined.
    """
    cells: dict[tuple[str, str], float] = {}
    layers: list[str] = []
    targets: list[str] = []
    for module_name, value in ranks.items():
        layer, target = layer_and_target(module_name)
        if layer not in layers:
            layers.append(layer)
        if target not in targets:
            targets.append(target)
        if value is not None and value > 0 and math.isfinite(value):
            cells[(layer, target)] = value
    layers.sort(key=lambda text: (not text.isdigit(), int(text) if text.isdigit() else 0, text))
    values = np.full((len(layers), len(targets)), np.nan)  # (L, T)
    for (layer, target), value in cells.items():
        values[layers.index(layer), targets.index(target)] = value
    return RankGrid(layers, targets, values)


__all__ = ["MAX_SNAPSHOTS", "RankGrid", "SpectrumSnapshot", "append_snapshot",
           "layer_and_target", "rank_grid", "take_snapshot"]
