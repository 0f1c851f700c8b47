"""Named rank sweeps, each a `SweepConfig` factory with the paragraph the app shows.

The presets follow the comparisons a fair NoRA-vs-LoRA study needs. LoRA runs with
lora_alpha = 32 fixed (the NoRA paper's baseline, scale 32/r) next to lora_alpha = r.
NoRA with the identity activation must reproduce LoRA. Rank dropout is shown with its
effect on the effective rank. A linear teacher gives NoRA nothing to gain. Attention-only
adapters face all-layer adapters on a language model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nora_core.sweep import SweepConfig, Variant

TOY_RANKS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class SweepPreset:
    """A named sweep: its title, the explanation shown above the charts, and its config."""

    name: str
    title: str
    explanation: str
    build: Callable[[], SweepConfig]

    def config(self) -> SweepConfig:
        """Return a fresh config of this preset."""
        return self.build()


def _linear_ceiling() -> SweepConfig:
    return SweepConfig(task="nonlinear_teacher", ranks=TOY_RANKS, methods=("lora", "nora"),
                       seeds=3, steps=1500, lr=3e-3)


def _fair_scaling() -> SweepConfig:
    variants = (
        Variant(method="lora", lora_alpha=32.0, name="LoRA α=32 (scale 32/r)"),
        Variant(method="lora", name="LoRA α=r (scale 1)"),
        Variant(method="nora", name="NoRA α=r (scale 1)"),
    )
    return SweepConfig(task="nonlinear_teacher", ranks=TOY_RANKS, variants=variants, seeds=2,
                       steps=1500, lr=3e-3, tune_lr=True, lr_grid=(1e-3, 3e-3, 1e-2))


def _identity_nora() -> SweepConfig:
    variants = (
        Variant(method="lora", name="LoRA"),
        Variant(method="nora", activation="identity", name="NoRA identity"),
        Variant(method="nora", name="NoRA SiLU"),
    )
    return SweepConfig(task="nonlinear_teacher", ranks=TOY_RANKS, variants=variants, seeds=3,
                       steps=1500, lr=3e-3)


def _dropout_rank() -> SweepConfig:
    variants = (
        Variant(method="lora", name="LoRA"),
        Variant(method="nora", name="NoRA dropout 0"),
        Variant(method="nora", lora_dropout=0.1, name="NoRA dropout 0.1"),
        Variant(method="nora", lora_dropout=0.3, name="NoRA dropout 0.3"),
    )
    # A fixed training set with label noise gives dropout something to regularise.
    options = (("n_train", 1024), ("noise_std", 0.1))
    return SweepConfig(task="nonlinear_teacher", task_options=options, ranks=TOY_RANKS,
                       variants=variants, seeds=3, steps=1500, lr=3e-3)


def _linear_home_turf() -> SweepConfig:
    return SweepConfig(task="linear_teacher", ranks=TOY_RANKS, methods=("lora", "nora"), seeds=3,
                       steps=1500, lr=3e-3)


def _adapter_placement() -> SweepConfig:
    variants = (
        Variant(method="lora", targets="attention_qv", name="LoRA q,v"),
        Variant(method="lora", targets="all_linear", name="LoRA all linear"),
        Variant(method="nora", targets="attention_qv", name="NoRA q,v"),
        Variant(method="nora", targets="all_linear", name="NoRA all linear"),
    )
    options = (("seq_len", 64), ("n_val", 32), ("eval_batch_size", 32), ("spectrum_examples", 8))
    return SweepConfig(task="style_shift", task_options=options, ranks=(2, 8, 32),
                       variants=variants, seeds=1, steps=60, lr=2e-3, batch_size=8)


PRESETS: dict[str, SweepPreset] = {preset.name: preset for preset in (
    SweepPreset(
        "linear_ceiling", "The linear ceiling",
        "A frozen linear layer learns y = W0 x + g(x), where g is a small SiLU network. No "
        "linear update of any rank can fit g exactly: the best one leaves the linear ceiling, "
        "the dashed line. The dotted line is the best rank-r linear update (Eckart–Young on "
        "the least-squares fit). LoRA follows the dotted line down to the ceiling and stops "
        "there however large r grows; NoRA's SiLU on the r-dim bottleneck lets it go below.",
        _linear_ceiling),
    SweepPreset(
        "fair_scaling", "Fair scaling: lora_alpha = 32 against lora_alpha = r",
        "The NoRA paper's LoRA baseline fixes lora_alpha = 32, so its update is scaled by "
        "32/r (1/16 at r = 512), while NoRA uses scale 1. This preset trains LoRA both ways "
        "beside NoRA and tunes the learning rate per point over 1e-3, 3e-3 and 1e-2, so each "
        "line shows its best rate. A gap that the tuning closes was a tuning artefact, not "
        "a property of the method.",
        _fair_scaling),
    SweepPreset(
        "identity_nora", "Sanity check: NoRA with the identity activation",
        "With the identity activation, no dropout and the same scale, NoRA computes exactly "
        "what LoRA computes, and with the same seed it starts from the same lora_A and sees "
        "the same batches. Its line must lie on LoRA's, up to float rounding. Any visible gap "
        "would be a bug in one of the two implementations; SiLU is shown for contrast.",
        _identity_nora),
    SweepPreset(
        "dropout_rank", "Rank dropout and the effective rank",
        "NoRA applies dropout to the r-dim activation (structural dropout). The paper "
        "suggests it spreads the update over more directions; later versions say it mainly "
        "regularises. Here NoRA trains with dropout 0, 0.1 and 0.3 on a fixed set of 1,024 "
        "noisy examples (noise std 0.1, so every floor rises by 0.01), and the effective-rank "
        "chart shows how evenly each adapter uses its r directions.",
        _dropout_rank),
    SweepPreset(
        "linear_home_turf", "Linear home turf: NoRA should not win",
        "The teacher is linear, y = (W0 + ΔW*) x, so a linear update is exactly right and the "
        "Eckart–Young error of the best rank-r update is a hard floor for LoRA. The "
        "non-linearity gives NoRA nothing to exploit; it should match LoRA at best and is "
        "usually slightly worse, because SiLU bends a map that should stay straight.",
        _linear_home_turf),
    SweepPreset(
        "adapter_placement", "Adapter placement on a language model",
        "The bundled tiny Llama-style model, pre-trained on Shakespeare's tragedies, adapts to "
        "his comedies with adapters on the attention query and value projections only (the "
        "NoRA paper's choice) or on every linear layer, MLP included. Language-model runs "
        "train one at a time and are slow on a CPU, so this preset keeps to 60 steps, ranks "
        "2, 8 and 32 and one seed (a few minutes on two cores): read it as a direction, not a "
        "converged result.",
        _adapter_placement),
)}


def preset_config(name: str) -> SweepConfig:
    """Return the config of the preset `name`.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].config()
