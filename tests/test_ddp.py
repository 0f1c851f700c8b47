"""Data-parallel training with two CPU processes (gloo), started by torchrun and accelerate.

Each process writes a trace (TRACE_ENV) with a hash of its adapter weights and the files
it wrote, so the test can check whether the replicas agree and whether only rank 0 wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from nora_core.lm.models import tiny_llama_config
from nora_core.lm.tokenizer import load_byte_tokenizer
from nora_core.train_loop import TRACE_ENV

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
# Startup of two Python processes with torch and transformers dominates; the steps are ms.
TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = tiny_llama_config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=172)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    load_byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    from nora_core.lm.corpus import read_play

    path = tmp_path_factory.mktemp("data") / "tempest.txt"
    path.write_text(read_play("tempest")[:30000], encoding="utf-8")
    return path


def launcher_command(launcher: str) -> list[str]:
    if launcher == "torchrun":
        return [shutil.which("torchrun") or "torchrun", "--standalone", "--nproc_per_node=2"]
    return [shutil.which("accelerate") or "accelerate", "launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port())]


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_agree(tmp_path, tiny_model, text_file, launcher):
    if shutil.which(launcher) is None:
        pytest.skip(f"{launcher} is not on PATH")
    out, trace = tmp_path / "out", tmp_path / "trace"
    command = [*launcher_command(launcher), "-m", "nora_core", "train",
               "--model", str(tiny_model), "--data", str(text_file), "--device", "cpu",
               "--seq-len", "48", "--batch-size", "4", "--eval-examples", "12",
               "--method", "nora", "--lora-dropout", "0.1", "--lr", "0.01",
               "--max-steps", "4", "--eval-every", "2", "--save-every", "2", "--out", str(out),
               "--rank", "4"]
    env = {**os.environ, TRACE_ENV: str(trace),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)

    assert done.returncode == 0, done.stderr[-3000:]
    records = {r["rank"]: r for r in (json.loads(p.read_text()) for p in trace.glob("rank-*.json"))}
    assert sorted(records) == [0, 1]
    assert all(r["world_size"] == 2 for r in records.values())
    # DDP averages the gradients, so both replicas must end with the same adapter bytes.
    assert records[0]["adapter_sha256"] == records[1]["adapter_sha256"]
    assert records[1]["written"] == []
    assert str(out / "summary.json") in records[0]["written"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["r"] == 4
    assert rows[-1]["val_loss"] != rows[0]["val_loss"]
    # Only rank 0 logs progress lines.
    assert done.stderr.count("step 4/4") == 1


def test_torchrun_passes_rank_flag():
    # torchrun's own parser reads "--r" as an ambiguous abbreviation of its options (--role,
    # --redirects, ...), so the documented spelling is "--rank", which it passes through.
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    args = parser.parse_args(["--standalone", "--nproc_per_node=2", "-m", "nora_core", "train",
                              "--rank", "4"])
    assert args.module
    assert args.training_script == "nora_core"
    assert args.training_script_args == ["train", "--rank", "4"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--standalone", "--nproc_per_node=2", "-m", "nora_core", "train", "--r", "4"])


def test_single_process_ignores_missing_launcher(monkeypatch):
    from nora_core.distributed import init_distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context, device = init_distributed("cpu")
    assert not context.enabled
    assert context.is_main
    assert device.type == "cpu"


def test_launcher_variables_missing_raises(monkeypatch):
    from nora_core.distributed import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="start the job with torchrun or accelerate launch"):
        init_distributed("cpu")

