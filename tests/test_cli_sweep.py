"""Tests of `python -m nora_core sweep`: flag errors, help text, presets with overrides, and
output files that reproduce the engine's numbers."""

from __future__ import annotations

import argparse
import csv
import json

import pytest

from nora_core.__main__ import main
from nora_core.cli_sweep import add_parser, build_config
from nora_core.sweep import SweepConfig, run_sweep

TINY = ["--task", "nonlinear_teacher", "--d", "16", "--hidden-width", "4", "--n-val", "256",
        "--n-spectrum", "128", "--ranks", "1,4", "--seeds", "2", "--steps", "30", "--batch-size", "32"]


def _sweep_parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="nora")
    return add_parser(root.add_subparsers())


@pytest.mark.parametrize("argv, flag", [
    (["--ranks", "0"], "--ranks"),
    (["--ranks", "1,x"], "--ranks"),
    (["--ranks", "1,,2"], "--ranks"),
    (["--ranks", "65"], "--ranks"),  # larger than the 64-wide layer
    (["--methods", "lora,dora"], "--methods"),
    (["--task", "mnist"], "--task"),
    (["--seeds", "many"], "--seeds"),
    (["--seeds", "0"], "--seeds"),
    (["--lora-alpha", "-3"], "--lora-alpha"),
    (["--lora-alpha", "r,big"], "--lora-alpha"),
    (["--scaling", "alpha"], "--scaling"),
    (["--activation", "swish"], "--activation"),
    (["--lora-dropout", "1"], "--lora-dropout"),
    (["--steps", "0"], "--steps"),
    (["--steps", "10,20"], "--steps"),
    (["--lr", "fast"], "--lr"),
    (["--lr-grid", "1e-3,0"], "--lr-grid"),
    (["--batch-size", "0"], "--batch-size"),
    (["--targets", "attention_qv"], "--targets"),
    (["--targets", "missing_layer"], "--targets"),
    (["--task", "linear_teacher", "--family", "sin"], "--family"),
    (["--n-val", "3"], "--n-val"),
    (["--hidden-width", "100"], "--hidden-width"),
    (["--preset", "unknown"], "--preset"),
])
def test_bad_flag_exits_2(argv, flag, capsys, tmp_path):
    with pytest.raises(SystemExit) as raised:
        main(["sweep", *argv, "--out", str(tmp_path)])

    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert flag in error
    assert "Traceback" not in error
    assert not (tmp_path / "sweep.csv").exists()


def test_help_documents_every_flag(capsys):
    parser = _sweep_parser()
    for action in parser._actions:
        assert len(action.help or "") > 10, action.option_strings

    with pytest.raises(SystemExit) as raised:
        parser.parse_args(["--help"])
    assert raised.value.code == 0
    text = capsys.readouterr().out
    assert "Unit: steps" in text
    assert "fair_scaling" in text


def test_run_writes_files_matching_engine(tmp_path):
    assert main(["sweep", *TINY, "--out", str(tmp_path)]) == 0

    document = json.loads((tmp_path / "sweep.json").read_text())
    config = SweepConfig.from_dict(document["config"])
    expected = run_sweep(config)
    assert len(document["rows"]) == len(expected) == 2 * 2 * 2
    for written, fresh in zip(document["rows"], expected):
        for key in ("variant", "r", "seed", "lr", "val_loss", "train_loss", "effective_rank",
                    "trainable_params", "diverged"):
            assert written[key] == fresh[key], key

    with (tmp_path / "sweep.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [float(row["val_loss"]) for row in table] == [row["val_loss"] for row in expected]
    assert (tmp_path / "sweep.html").stat().st_size > 1_000_000  # plotly.js is embedded
    assert document["environment"]["torch"]
    assert len(document["summary"]) == 2 * 2


def test_preset_keeps_variants_with_overrides():
    args = _sweep_parser().parse_args(["--preset", "identity_nora", "--ranks", "1,2", "--seeds", "1"])
    config = build_config(args)

    assert config.ranks == (1, 2)
    assert config.seeds == (0,)
    assert [v.label for v in config.all_variants()] == ["LoRA", "NoRA identity", "NoRA SiLU"]


def test_variant_flag_replaces_preset_variants():
    args = _sweep_parser().parse_args(["--preset", "identity_nora", "--methods", "nora",
                                       "--activation", "identity,gelu"])
    config = build_config(args)

    assert [v.label for v in config.all_variants()] == ["NoRA identity", "NoRA gelu"]


def test_preset_task_options_survive_unless_task_changes():
    parser = _sweep_parser()

    kept = build_config(parser.parse_args(["--preset", "dropout_rank", "--noise-std", "0.2"]))
    assert kept.task_kwargs == {"n_train": 1024, "noise_std": 0.2}

    switched = build_config(parser.parse_args(["--preset", "dropout_rank", "--task", "linear_teacher"]))
    assert switched.task_kwargs == {}


def test_tune_lr_flags():
    config = build_config(_sweep_parser().parse_args(["--tune-lr", "--lr-grid", "1e-3,1e-2", "--lr", "5e-3"]))

    assert config.learning_rates() == (1e-3, 1e-2)
