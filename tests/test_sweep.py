"""Tests of the rank-sweep engine: config validation, determinism, batched training against
one-at-a-time `PairedTrainer` runs, divergence isolation, summaries, presets and outputs."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from nora_core.sweep import SweepConfig, Variant, plan_runs, prepare_task, run_sweep, summarise
from nora_core.sweep_batched import train_batched
from nora_core.sweep_presets import PRESETS, preset_config
from nora_core.sweep_report import rows_csv, sweep_figures, write_outputs
from nora_core.sweep_tasks import build_task
from nora_core.config import AdapterConfig

# Batched and one-at-a-time runs compute the same sums in a different order inside the
# float32 matrix products (bmm against mm, fused base add). The observed gap is about 1e-7
# relative after 200 steps; 1e-4 leaves room for other CPUs' kernels and longer chaos.
RTOL = 1e-4
# The effective rank is a smooth function of the singular values, so it moves by about
# as much as the losses. An absolute 1e-3 is far below a visible change.
RANK_ATOL = 1e-3

SMALL = dict(task="nonlinear_teacher", task_options={"d": 16, "hidden_width": 4, "n_val": 256,
                                                      "n_spectrum": 128},
             ranks=(1, 4), seeds=2, steps=40, batch_size=32)


def _numbers(rows):
    """Drop the wall time, the only field that may differ between identical runs."""
    return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in rows]


@pytest.mark.parametrize("changes, message", [
    ({"ranks": (0,)}, "ranks"),
    ({"ranks": ()}, "ranks"),
    ({"ranks": (2.5,)}, "ranks"),
    ({"methods": ("dora",)}, "methods"),
    ({"seeds": 0}, "seeds"),
    ({"seeds": (-1,)}, "seeds"),
    ({"lora_alphas": ("x",)}, "lora_alphas"),
    ({"lora_alphas": (0,)}, "lora_alphas"),
    ({"nora_activations": ("swish",)}, "nora_activations"),
    ({"lora_dropouts": (1.0,)}, "lora_dropouts"),
    ({"steps": 0}, "steps"),
    ({"lr": 0.0}, "lr"),
    ({"lr_grid": (-1.0,)}, "lr_grid"),
    ({"task": "mnist"}, "task"),
    ({"targets": ("",)}, "targets"),
    ({"variants": (Variant("lora", name="A"), Variant("nora", name="A"))}, "distinct name"),
])
def test_config_rejects_bad_value(changes, message):
    with pytest.raises(ValueError, match=message):
        SweepConfig(**changes)


def test_config_normalises_lists():
    config = SweepConfig(ranks=(8, 1, 8), seeds=3, lora_alphas=("r", 32, "32"), lr_grid=(1e-2, 1e-3))

    assert config.ranks == (1, 8)
    assert config.seeds == (0, 1, 2)
    assert config.lora_alphas == ("r", 32.0)
    assert config.lr_grid == (1e-3, 1e-2)


def test_config_roundtrips_through_dict():
    config = preset_config("fair_scaling")

    assert SweepConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_variants_form_product():
    config = SweepConfig(methods=("lora", "nora"), lora_alphas=("r", 32), nora_activations=("silu", "gelu"))
    labels = [v.label for v in config.all_variants()]

    # LoRA ignores the NoRA activations: 2 alpha modes for LoRA, 2 × 2 for NoRA.
    assert labels == ["LoRA", "LoRA α=32", "NoRA", "NoRA gelu", "NoRA α=32", "NoRA gelu α=32"]


def test_learning_rates_default_grid():
    config = SweepConfig(lr=1e-3, tune_lr=True)

    assert config.learning_rates() == (1e-4, 3.162e-4, 1e-3, 3.162e-3)
    assert SweepConfig(lr=1e-3).learning_rates() == (1e-3,)


def test_plan_counts_runs():
    config = SweepConfig(ranks=(1, 2, 4), seeds=2, tune_lr=True, lr_grid=(1e-3, 1e-2))

    assert len(plan_runs(config)) == config.run_count() == 2 * 3 * 2 * 2


def test_sweep_same_seed_same_numbers():
    config = SweepConfig(**SMALL)

    assert _numbers(run_sweep(config)) == _numbers(run_sweep(config))


def test_sweep_other_seed_other_numbers():
    first = run_sweep(SweepConfig(**{**SMALL, "seeds": (0,)}))
    second = run_sweep(SweepConfig(**{**SMALL, "seeds": (5,)}))

    assert [r["val_loss"] for r in first] != [r["val_loss"] for r in second]


@pytest.mark.parametrize("task, options, variants", [
    ("nonlinear_teacher", SMALL["task_options"], (
        Variant("lora"), Variant("nora"), Variant("nora", lora_dropout=0.2),
        Variant("lora", lora_dropout=0.1), Variant("lora", lora_alpha=32.0),
        Variant("nora", activation="gelu", scaling="alpha_over_sqrt_r", lora_alpha=8.0))),
    # Two adapted layers: the second receives per-run inputs from the first.
    ("classification_2d", {"width": 16, "n_train": 128, "n_val": 128, "n_spectrum": 64}, (
        Variant("lora", targets="hidden+head"), Variant("nora", targets="hidden+head"),
        Variant("nora", lora_dropout=0.2, targets="hidden+head"),
        Variant("lora", lora_dropout=0.2, dropout_position="rank", targets="hidden+head"))),
    ("linear_teacher", {"d": 16, "n_val": 256, "n_spectrum": 128}, (
        Variant("lora"), Variant("nora", activation="tanh"))),
])
def test_batched_matches_sequential(task, options, variants):
    config = SweepConfig(task=task, task_options=options, ranks=(1, 2), variants=variants, seeds=2,
                         steps=30, batch_size=32)

    batched = run_sweep(config, execution="batched")
    sequential = run_sweep(config, execution="sequential")

    for fast, slow in zip(batched, sequential):
        assert (fast["variant"], fast["r"], fast["seed"]) == (slow["variant"], slow["r"], slow["seed"])
        assert fast["trainable_params"] == slow["trainable_params"]
        assert fast["diverged"] is slow["diverged"] is False
        assert fast["val_loss"] == pytest.approx(slow["val_loss"], rel=RTOL)
        assert fast["train_loss"] == pytest.approx(slow["train_loss"], rel=RTOL)
        assert fast["effective_rank"] == pytest.approx(slow["effective_rank"], abs=RANK_ATOL)


def test_batched_training_changes_loss():
    rows = run_sweep(SweepConfig(**SMALL))
    task = build_task("nonlinear_teacher", SMALL["task_options"])
    batch = task.validation_batches()[0]
    base_loss = float(task.loss(task.base_model(), batch))

    assert all(row["val_loss"] < base_loss for row in rows)


def test_identity_nora_equals_lora():
    config = SweepConfig(**{**SMALL, "variants": (Variant("lora"), Variant("nora", activation="identity"))})
    rows = run_sweep(config)
    lora = [r for r in rows if r["method"] == "lora"]
    nora = [r for r in rows if r["method"] == "nora"]

    for a, b in zip(lora, nora):
        # Same init, batches and arithmetic; only the bucket's mixed activation path differs.
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)


# With AdamW's first step of size lr = 10 on lora_B and a scale of 1e19, the second step's
# output exceeds float32's range, so its loss is inf. A much larger scale would overflow
# the first gradient's square instead, and AdamW would then freeze the run without diverging.
BAD_LR = 10.0
BAD_ALPHA = 2e19


def test_diverged_run_leaves_others_alone():
    task = build_task("nonlinear_teacher", SMALL["task_options"])
    good = AdapterConfig(method="lora", r=2, target_modules=("layer",))
    bad = AdapterConfig(method="lora", r=2, lora_alpha=BAD_ALPHA, target_modules=("layer",))
    settings = dict(lr=BAD_LR, batch_size=32, steps=10)

    alone = train_batched(task, [good], [0], **settings)
    together = train_batched(task, [good, bad], [0, 0], **settings)

    assert together[1].diverged
    assert together[1].val_loss is None
    assert together[1].diverged_at == 2
    assert not together[0].diverged
    assert together[0].val_loss == pytest.approx(alone[0].val_loss, rel=RTOL)


def test_diverged_run_marked_in_both_paths():
    variants = (Variant("lora"), Variant("lora", lora_alpha=BAD_ALPHA))
    config = SweepConfig(**{**SMALL, "variants": variants, "ranks": (2,), "seeds": 1, "steps": 10,
                            "lr": BAD_LR})

    for execution in ("batched", "sequential"):
        rows = run_sweep(config, execution=execution)
        assert [row["diverged"] for row in rows] == [False, True]
        assert rows[1]["val_loss"] is None


@pytest.mark.parametrize("changes, message", [
    ({"ranks": (32,)}, "r=32 is too large"),
    ({"task_options": {"d": 16, "family": "cosine"}}, "family"),
    ({"task_options": {"d": 16, "width": 4}}, "width"),
    ({"targets": ("attention_qv",)}, "language-model"),
    ({"targets": ("missing",)}, "matched no"),
])
def test_prepare_rejects_bad_setup(changes, message):
    config = SweepConfig(**{**SMALL, **changes})

    with pytest.raises(ValueError, match=message):
        prepare_task(config)


def test_sweep_restores_thread_count():
    before = torch.get_num_threads()

    run_sweep(SweepConfig(**{**SMALL, "steps": 2}))

    assert torch.get_num_threads() == before


def test_sweep_rejects_unknown_execution():
    with pytest.raises(ValueError, match="execution"):
        run_sweep(SweepConfig(**SMALL), execution="fastest")


LM_OPTIONS = {"seq_len": 32, "n_val": 4, "eval_batch_size": 4, "spectrum_examples": 2}


@pytest.mark.slow
def test_language_model_sweep_reports_perplexity():
    config = SweepConfig(task="style_shift", task_options=LM_OPTIONS, ranks=(2,), methods=("nora",),
                         targets=("attention_qv",), seeds=1, steps=2, batch_size=2, lr=1e-3)

    (row,) = run_sweep(config)

    assert row["val_perplexity"] == pytest.approx(math.exp(row["val_loss"]))
    assert row["trainable_params"] == 4 * 2 * 2 * (128 + 128)  # 4 blocks × (q, v) × r (d_in + d_out)
    with pytest.raises(ValueError, match="cannot train batched"):
        run_sweep(config, execution="batched")


def _row(variant, r, seed, lr, loss, diverged=False):
    return {"task": "t", "variant": variant, "method": "lora", "r": r, "seed": seed, "lr": lr,
            "val_loss": None if diverged else loss, "diverged": diverged, "effective_rank": 1.0,
            "trainable_params": 10 * r, "floor_r": None, "floor_linear": None, "wall_time_s": 1.0}


def test_summary_mean_and_std():
    rows = [_row("A", 1, 0, 1e-3, 1.0), _row("A", 1, 1, 1e-3, 3.0)]
    (entry,) = summarise(rows)

    assert entry["val_loss_mean"] == 2.0
    assert entry["val_loss_std"] == pytest.approx(math.sqrt(2.0))  # sample std, n - 1
    assert entry["seeds"] == 2
    assert entry["diverged"] == 0


def test_summary_single_seed_has_no_std():
    (entry,) = summarise([_row("A", 1, 0, 1e-3, 1.0)])

    assert entry["val_loss_std"] is None


def test_summary_picks_best_finished_lr():
    rows = [
        _row("A", 1, 0, 1e-3, 0.5), _row("A", 1, 1, 1e-3, 0.7),
        _row("A", 1, 0, 1e-2, 0.1), _row("A", 1, 1, 1e-2, 0.0, diverged=True),
        _row("A", 1, 0, 3e-3, 0.4), _row("A", 1, 1, 3e-3, 0.4),
    ]
    (entry,) = summarise(rows)

    # 1e-2 has the lowest finished loss but a diverged seed, so 3e-3 wins.
    assert entry["lr"] == 3e-3
    assert entry["lrs_tried"] == 3
    assert len(summarise(rows, best_lr=False)) == 3


def test_presets_build_valid_configs():
    for name, preset in PRESETS.items():
        config = preset.config()
        assert config.run_count() > 0, name
        assert len(preset.explanation) > 100, name
        assert preset.title, name


@pytest.mark.parametrize("name", ["linear_ceiling", "fair_scaling", "identity_nora", "dropout_rank",
                                  "linear_home_turf"])
def test_toy_presets_prepare(name):
    task = prepare_task(preset_config(name))

    assert task.kind == "toy"


def test_outputs_written(tmp_path):
    config = SweepConfig(**SMALL)
    rows = run_sweep(config)
    summary = summarise(rows)

    paths = write_outputs(tmp_path, config, rows, summary, {"torch": torch.__version__})

    document = json.loads(paths["json"].read_text())
    assert len(document["rows"]) == len(rows) == 2 * 2 * 2
    assert document["config"]["ranks"] == [1, 4]
    assert rows_csv(rows).splitlines()[0].startswith("task,variant,method,r,seed")
    assert len(paths["csv"].read_text().splitlines()) == len(rows) + 1
    page = paths["html"].read_text()
    # plotly.js is embedded, not linked, so the page works offline.
    assert re.search(r"<script[^>]+src=", page) is None
    assert "Plotly.newPlot" in page


def test_figures_draw_floors():
    rows = run_sweep(SweepConfig(**SMALL))
    figures = sweep_figures(summarise(rows))
    by_rank = next(iter(figures.values()))

    names = [trace.name for trace in by_rank.data]
    assert names[:2] == ["LoRA", "NoRA"]
    assert any("Eckart" in name for name in names)
    assert by_rank.layout.shapes, "the linear ceiling is drawn as a horizontal line"
