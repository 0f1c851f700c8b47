"""The paired trainer on real toy tasks: shared batches, reproducibility, divergence, and
the linear ceiling that LoRA cannot pass and NoRA can."""

import math

import pytest
import torch

from nora_core import AdapterConfig
from nora_core.tasks.toy import make_toy_task
from nora_core.trainer import PairedTrainer, TrainConfig, safe_perplexity


@pytest.fixture(autouse=True)
def one_thread():
    # Threaded float32 reductions may sum in a different order from run to run.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def curves(trainer):
    return {name: [(row["step"], row["train_loss"], row["val_loss"]) for row in run.history]
            for name, run in trainer.runs.items()}


def small_trainer(seed=0, lr=3e-3, **task_kwargs):
    task = make_toy_task("nonlinear_teacher", d=16, hidden_width=4, n_val=256, **task_kwargs)
    configs = {"LoRA": AdapterConfig(method="lora", r=4),
               "NoRA": AdapterConfig(method="nora", r=4, lora_dropout=0.1)}
    return PairedTrainer(task, configs, TrainConfig(lr=lr, batch_size=32, seed=seed, eval_every=5,
                                                    spectrum_every=10))


def test_same_seed_same_curves():
    first, second = small_trainer(seed=3), small_trainer(seed=3)
    first.advance(30)
    second.advance(30)
    assert curves(first) == curves(second)


def test_other_seed_other_curves():
    first, second = small_trainer(seed=3), small_trainer(seed=4)
    first.advance(10)
    second.advance(10)
    assert curves(first) != curves(second)


def test_runs_share_batches():
    task = make_toy_task("nonlinear_teacher", d=16, hidden_width=4, n_val=256)
    # Identity NoRA without dropout computes what LoRA computes, so equal batches and equal
    # initialisation must give equal curves to the last bit.
    configs = {"LoRA": AdapterConfig(method="lora", r=4),
               "NoRA": AdapterConfig(method="nora", r=4, activation="identity")}
    trainer = PairedTrainer(task, configs, TrainConfig(batch_size=16, eval_every=5))
    trainer.advance(20)
    lora, nora = curves(trainer).values()
    assert lora == nora


def test_divergence_stops_one_run():
    trainer = small_trainer()
    trainer.advance(5)
    lora, nora = trainer.runs["LoRA"], trainer.runs["NoRA"]
    with torch.no_grad():
        next(p for n, p in lora.model.named_parameters() if "lora_B" in n).fill_(math.inf)
    rows = trainer.advance(10)
    assert lora.diverged_at == 6
    assert not nora.diverged
    assert nora.step == 15
    assert lora.step == 6
    assert any(row.get("diverged") and row["run"] == "LoRA" for row in rows)
    # The last finite point stays available for the chart.
    assert lora.last_finite["step"] == 5
    assert math.isfinite(lora.last_finite["val_loss"])


def test_huge_learning_rate_diverges_without_error():
    task = make_toy_task("linear_teacher", d=16, n_val=256)
    configs = {"LoRA": AdapterConfig(method="lora", r=4, lora_alpha=1e17)}
    trainer = PairedTrainer(task, configs, TrainConfig(lr=10.0, batch_size=16, eval_every=1))
    trainer.advance(200)
    assert trainer.runs["LoRA"].diverged
    assert trainer.finished


def test_learning_rate_applies_now():
    trainer = small_trainer()
    trainer.set_learning_rate(1e-4)
    for run in trainer.runs.values():
        assert run.optimizer.param_groups[0]["lr"] == 1e-4
    assert trainer.train_config.lr == 1e-4


def test_nora_r4_beats_lora_r64_on_silu_teacher():
    # A SiLU-MLP teacher with 4 hidden units: NoRA at r=4 has the teacher's own form,
    # while LoRA at any rank is bounded below by the linear ceiling.
    task = make_toy_task("nonlinear_teacher", d=64, hidden_width=4, n_val=1024, seed=0)
    configs = {"LoRA": AdapterConfig(method="lora", r=64),
               "NoRA": AdapterConfig(method="nora", r=4)}
    trainer = PairedTrainer(task, configs, TrainConfig(lr=3e-3, batch_size=256, seed=0,
                                                       eval_every=100, spectrum_every=1000))
    trainer.advance(1200)
    lora = trainer.runs["LoRA"].last_finite["val_loss"]
    nora = trainer.runs["NoRA"].last_finite["val_loss"]
    ceiling = task.floor(None)
    assert nora < lora
    assert nora < 0.5 * ceiling
    # LoRA may dip below the population ceiling only by the sampling error of 1,024
    # validation points (a few per cent).
    assert lora > 0.9 * ceiling


def test_effective_ranks_recorded():
    trainer = small_trainer()
    trainer.advance(10)
    last = trainer.runs["LoRA"].history[-1]
    assert 1.0 <= last["effective_rank_output"] <= 4.0
    assert 1.0 <= last["effective_rank_weight"] <= 4.0
    assert trainer.runs["NoRA"].history[-1]["effective_rank_weight"] is None


@pytest.mark.parametrize(("loss", "expected"), [(0.0, 1.0), (1.0, math.e), (800.0, math.inf),
                                                (None, None), (math.nan, None)])
def test_safe_perplexity(loss, expected):
    assert safe_perplexity(loss) == expected
