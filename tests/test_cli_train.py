"""`python -m nora_core train` end to end on CPU: train, checkpoint, resume, evaluate, bad flags."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from nora_core.__main__ import main
from nora_core.adapters import adapter_parameters
from nora_core.cli_train import add_parser
from nora_core.io import load_adapter
from nora_core.lm.batches import collate_examples, mean_loss
from nora_core.lm.models import BUNDLED_MODEL, BUNDLED_MODEL_DIR, load_base_model, tiny_llama_config
from nora_core.lm.procedures import generate_examples
from nora_core.lm.tokenizer import load_byte_tokenizer
from nora_core.train_data import DataError, EpochSampler, load_training_data, record_to_pair

transformers = pytest.importorskip("transformers")

# Settings shared by every run: short windows, small batches, few examples for evaluation
# and spectra, and adapters on q_proj and v_proj only keep each run to a few seconds.
COMMON = ["--seq-len", "40", "--batch-size", "2", "--eval-examples", "4", "--device", "cpu",
          "--targets", "attention_qv", "--lr", "0.01"]
# NoRA with dropout exercises the dropout RNG, which a resume must restore.
ADAPTER = ["--method", "nora", "--r", "4", "--lora-dropout", "0.1", "--eval-every", "3",
           "--save-every", "2"]


@pytest.fixture(scope="module")
def model_name(tmp_path_factory):
    """The bundled model when its checkpoint exists, else a random byte-level Llama of its kind."""
    if (BUNDLED_MODEL_DIR / "config.json").is_file():
        return BUNDLED_MODEL
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = tiny_llama_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=172)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    load_byte_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from nora_core.lm.corpus import read_play

    path = tmp_path_factory.mktemp("data") / "tempest.txt"
    path.write_text(read_play("tempest")[:30000], encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def jsonl_file(tmp_path_factory):
    train, _ = generate_examples("arithmetic", 60, 0, seed=3)
    path = tmp_path_factory.mktemp("data") / "arithmetic.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in train),
                    encoding="utf-8")
    return str(path)


def train(*flags) -> int:
    return main(["train", *map(str, flags)])


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, model_name, text_file):
    """Four uninterrupted steps, the reference for the resume test."""
    out = tmp_path_factory.mktemp("full")
    assert train("--model", model_name, "--data", text_file, *COMMON, *ADAPTER,
                 "--max-steps", 4, "--out", out) == 0
    return out


def test_train_writes_outputs(full_run):
    rows = read_metrics(full_run)
    summary = json.loads((full_run / "summary.json").read_text())
    spectra = json.loads((full_run / "spectra.json").read_text())

    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4]
    assert [row["step"] for row in rows if "val_loss" in row] == [0, 3, 4]
    assert sorted(p.name for p in (full_run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert summary["step"] == 4
    assert summary["val_loss"] == rows[-1]["val_loss"]
    assert summary["val_perplexity"] == pytest.approx(math.exp(summary["val_loss"]), rel=1e-12)
    # Training must move the validation loss away from the base model's.
    assert rows[-1]["val_loss"] != rows[0]["val_loss"]
    assert spectra["view"] == "output"
    assert spectra["layers"]
    assert 1.0 <= spectra["mean_effective_rank"] <= 4.0  # effective rank lies in [1, r]


def test_resume_matches_uninterrupted(tmp_path, model_name, text_file, full_run):
    out = tmp_path / "resumed"
    base_flags = ["--model", model_name, "--data", text_file, *COMMON, *ADAPTER, "--out", out]
    assert train(*base_flags, "--max-steps", 2) == 0
    assert train(*base_flags, "--max-steps", 4, "--resume", out) == 0

    # Same seed, batches, optimizer state and dropout masks: identical numbers, bit for bit.
    # The interrupted run also evaluated at its last step (2), so compare the losses by key.
    resumed_rows, full_rows = read_metrics(out), read_metrics(full_run)
    assert [r.get("train_loss") for r in resumed_rows] == [r.get("train_loss") for r in full_rows]
    assert resumed_rows[3:] == full_rows[3:]
    resumed = (out / "adapter" / "adapter_model.safetensors").read_bytes()
    assert resumed == (full_run / "adapter" / "adapter_model.safetensors").read_bytes()


def test_eval_only_reproduces_final_loss(tmp_path, model_name, text_file, full_run):
    out = tmp_path / "evaluated"
    assert train("--model", model_name, "--data", text_file, *COMMON, *ADAPTER, "--out", out,
                 "--eval-only", "--resume", full_run) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_loss"] == json.loads((full_run / "summary.json").read_text())["val_loss"]
    assert summary["steps_this_run"] == 0


def test_saved_adapter_gives_logged_loss(model_name, text_file, full_run):
    base, tokenizer = load_base_model(model_name)
    model = load_adapter(base, full_run / "adapter", trainable=False)
    data = load_training_data(text_file, tokenizer, seq_len=40, max_eval_examples=4)
    batches = [collate_examples(data.validation[i:i + 2], tokenizer.pad_token_id)
               for i in range(0, len(data.validation), 2)]

    # Same batches and float32 sums as the CLI's evaluation, up to summation order.
    expected = json.loads((full_run / "summary.json").read_text())["val_loss"]
    assert mean_loss(model, batches) == pytest.approx(expected, abs=1e-5)


def test_train_jsonl_lora(tmp_path, model_name, jsonl_file):
    out = tmp_path / "pairs"
    assert train("--model", model_name, "--data", jsonl_file, *COMMON, "--method", "lora",
                 "--max-steps", 3, "--eval-every", 3, "--out", out) == 0

    rows = read_metrics(out)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert all(name.endswith(("q_proj", "v_proj")) for name in config["target_modules"])
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    base, _ = load_base_model(model_name)
    model = load_adapter(base, out / "adapter")
    assert any(p.abs().sum() > 0 for p in adapter_parameters(model))


@pytest.mark.parametrize(("flags", "message"), [
    (["--r", "0"], "AdapterConfig.r must be >= 1, got 0"),
    (["--seq-len", "1"], "--seq-len: must be an integer >= 2, got 1"),
    (["--method", "dora"], "invalid choice: 'dora'"),
    (["--max-steps", "-1"], "--max-steps: must be an integer >= 0, got -1"),
    (["--targets", "nonexistent_proj"], "unknown target module name(s) 'nonexistent_proj'"),
    (["--data", "missing.jsonl"], "file not found"),
    (["--seq-len", "100000"], "exceeds the model's"),
    (["--resume", "no-such-run"], "contains no checkpoint"),
])
def test_bad_flags_exit_2(tmp_path, capsys, model_name, text_file, flags, message):
    base_flags = ["--model", model_name, "--data", text_file, *COMMON, "--out", tmp_path / "x"]
    with pytest.raises(SystemExit) as stop:
        train(*base_flags, *flags)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_resume_other_settings_exit_2(tmp_path, capsys, model_name, text_file, full_run):
    with pytest.raises(SystemExit) as stop:
        train("--model", model_name, "--data", text_file, *COMMON, *ADAPTER, "--r", "3",
              "--max-steps", 8, "--resume", full_run, "--out", tmp_path)
    assert stop.value.code == 2
    assert "adapter.r: checkpoint 4, now 3" in capsys.readouterr().err


def test_fresh_run_into_used_out_exit_2(capsys, model_name, text_file, full_run):
    with pytest.raises(SystemExit) as stop:
        train("--model", model_name, "--data", text_file, *COMMON, "--max-steps", 2, "--out", full_run)
    assert stop.value.code == 2
    assert "already contains checkpoints" in capsys.readouterr().err


def test_hub_dataset_without_datasets_exit_2(tmp_path, capsys, model_name):
    try:
        import datasets  # noqa: F401
        pytest.skip("the datasets package is installed, so the hub would be contacted")
    except ImportError:
        pass
    with pytest.raises(SystemExit) as stop:
        train("--model", model_name, "--data", "MathInstruct", *COMMON, "--out", tmp_path)
    assert stop.value.code == 2
    assert "pip install datasets" in capsys.readouterr().err


def test_help_documents_every_flag():
    parser = add_parser(argparse.ArgumentParser().add_subparsers())
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert all(a.help for a in actions)
    units = {a.option_strings[0]: a.help for a in actions}
    for flag, unit in [("--seq-len", "tokens"), ("--max-steps", "steps"), ("--save-every", "steps"),
                       ("--eval-every", "steps"), ("--batch-size", "examples"), ("--epochs", "epochs")]:
        assert f"Unit: {unit}" in units[flag], flag


@pytest.mark.parametrize(("record", "expected"), [
    ({"prompt": "p", "response": "r"}, ("p", "r")),
    ({"instruction": "Add 2 and 3.", "input": "", "output": "5"}, ("Add 2 and 3.\n\n", "5")),
    ({"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                        {"from": "gpt", "value": "Hello"}]},
     ("system: Be brief.\nuser: Hi\nassistant: ", "Hello")),
])
def test_record_to_pair_layouts(record, expected):
    assert record_to_pair(record, "row 0") == expected


def test_record_to_pair_unknown_raises():
    with pytest.raises(DataError, match="needs \"prompt\" and \"response\""):
        record_to_pair({"question": "q"}, "row 7")


def test_sampler_shards_disjoint():
    ranks = [EpochSampler(40, batch_size=3, world_size=2, rank=rank, seed=5) for rank in (0, 1)]
    assert ranks[0].steps_per_epoch == 6  # 40 // (3 * 2), the incomplete global batch dropped

    for step in range(12):
        first, second = ranks[0].indices(step), ranks[1].indices(step)
        assert len(first) == len(second) == 3
        assert not set(first) & set(second)
    epoch_0 = [i for step in range(6) for rank in ranks for i in rank.indices(step)]
    epoch_1 = [i for step in range(6, 12) for rank in ranks for i in rank.indices(step)]
    assert len(set(epoch_0)) == 36
    assert epoch_0 != epoch_1
    # The order depends only on (seed, step), which is what makes a resume exact.
    assert EpochSampler(40, 3, 2, 1, seed=5).indices(7) == ranks[1].indices(7)


def test_sampler_too_little_data_raises():
    with pytest.raises(DataError, match="fewer than one global batch"):
        EpochSampler(5, batch_size=4, world_size=2, rank=0, seed=0)
