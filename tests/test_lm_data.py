"""Tests of the language-model data side: byte tokenizer, batches, procedures, uploads."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from nora_core.lm.batches import IGNORE_INDEX, causal_lm_loss, collate_examples, encode_prompt_response
from nora_core.lm.corpus import WindowSampler, split_train_val, tiled_windows
from nora_core.lm.procedures import PROCEDURES, extract_answer, generate_examples
from nora_core.lm.tasks import LMTaskConfig
from nora_core.lm.tokenizer import BYTE_OFFSET, BYTE_VOCAB_SIZE, load_byte_tokenizer
from nora_core.lm.upload import UploadError, parse_upload

TEXT = "Tis brave — naïve café, 世界 🎭\nEnd."


def test_tokenizer_round_trip_non_ascii():
    tokenizer = load_byte_tokenizer()
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]

    assert ids == [b + BYTE_OFFSET for b in TEXT.encode("utf-8")]
    assert tokenizer.decode(ids) == TEXT
    assert tokenizer.batch_decode([ids, ids[:3]]) == [TEXT, "Tis"]
    assert max(ids) < BYTE_VOCAB_SIZE


def test_tokenizer_special_ids_and_reload(tmp_path):
    tokenizer = load_byte_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)

    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert reloaded(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    assert tokenizer(TEXT)["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(tokenizer(TEXT)["input_ids"], skip_special_tokens=True) == TEXT


def test_labels_masked_on_prompt_only():
    tokenizer = load_byte_tokenizer()
    ids, labels = encode_prompt_response(tokenizer, "calc 1+2*3\n", "2*3=6", max_length=64)
    n_prompt = len("calc 1+2*3\n")

    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tokenizer.eos_token_id
    assert labels[-1] == tokenizer.eos_token_id


def test_padding_keeps_eos_label_when_pad_equals_eos():
    tokenizer = load_byte_tokenizer(pad_to_eos=True)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    short = encode_prompt_response(tokenizer, "ab\n", "c", max_length=64)
    long = encode_prompt_response(tokenizer, "abcdef\n", "ghij", max_length=64)
    batch = collate_examples([short, long], tokenizer.pad_token_id)

    # Row 0: prompt 3, response 1 + eos; the rest is padding written with the eos id.
    assert batch["labels"][0, 4].item() == tokenizer.eos_token_id
    assert batch["attention_mask"][0].tolist() == [1] * 5 + [0] * 7
    assert batch["labels"][0, 5:].tolist() == [IGNORE_INDEX] * 7
    assert batch["input_ids"][0, 5:].tolist() == [tokenizer.eos_token_id] * 7
    assert batch["labels"][1, -1].item() == tokenizer.eos_token_id


def test_loss_counts_eos_label_with_gpt2_model():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=BYTE_VOCAB_SIZE, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        bos_token_id=1, eos_token_id=1, pad_token_id=1)
    model = GPT2LMHeadModel(config).eval()
    tokenizer = load_byte_tokenizer(pad_to_eos=True)
    batch = collate_examples(
        [encode_prompt_response(tokenizer, "ab\n", "c", 64), encode_prompt_response(tokenizer, "abcdef\n", "ghij", 64)],
        tokenizer.pad_token_id,
    )

    with torch.no_grad():
        loss = causal_lm_loss(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Explicit list of target positions: row 0 predicts "c" and eos, row 1 "ghij" and eos.
    targets = [(0, 3), (0, 4)] + [(1, t) for t in range(7, 12)]
    expected = torch.stack(
        [-torch.log_softmax(logits[row, t - 1], dim=-1)[batch["input_ids"][row, t]] for row, t in targets]
    ).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)  # float32 summation order only


def test_window_sampler_stays_in_segment():
    segments = [torch.arange(0, 30), torch.arange(1000, 1005), torch.arange(2000, 2050)]
    sampler = WindowSampler(segments, window=8)
    windows = sampler.sample(torch.Generator().manual_seed(0), 200)
    again = sampler.sample(torch.Generator().manual_seed(0), 200)

    assert windows.shape == (200, 8)
    assert torch.equal(windows, again)
    assert bool(((windows[:, 1:] - windows[:, :-1]) == 1).all())  # contiguous, so one segment
    assert not bool(((windows >= 1000) & (windows < 1005)).any())  # the 5-token segment is too short
    assert {int(w[0]) // 1000 for w in windows} == {0, 2}


def test_tiled_windows_round_robin():
    windows = tiled_windows([torch.arange(0, 20), torch.arange(100, 110)], window=5, max_windows=3)
    assert windows[:, 0].tolist() == [0, 100, 5]
    with pytest.raises(ValueError, match="shorter than one window"):
        tiled_windows([torch.arange(3)], window=5, max_windows=2)


def test_split_train_val_tail():
    train, val = split_train_val("abcdefghij", 0.2)
    assert (train, val) == ("abcdefgh", "ij")


@pytest.mark.parametrize("procedure", sorted(PROCEDURES))
def test_procedure_answers_correct(procedure):
    train, val = generate_examples(procedure, 300, 50, seed=1)

    assert not {p for p, _ in train} & {p for p, _ in val}
    for prompt, response in train + val:
        argument = prompt.split(" ", 1)[1].strip()
        if procedure == "arithmetic":
            expected = str(eval(argument, {"__builtins__": {}}))  # digits, + and * only
        elif procedure == "reverse":
            expected = argument[::-1]
        else:
            expected = " ".join(sorted(argument.split()))
        assert extract_answer(response) == expected, (prompt, response)


def test_procedure_space_exhausted():
    with pytest.raises(ValueError, match="distinct examples"):
        generate_examples("arithmetic", 2000, 100, seed=0)


def _jsonl(*records) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records).encode("utf-8")


GOOD = {"prompt": "p", "response": "r"}

UPLOAD_ERRORS = [
    ("too_large", b"x" * 101, {"max_bytes": 100}, ["101 bytes", "100 bytes"]),
    ("empty", b"", {}, ["empty"]),
    ("whitespace", b" \n\t\n", {}, ["empty"]),
    ("not_utf8", b"ok\n\xff\xfe", {}, ["UTF-8", "line 2", "0xff"]),
    ("bad_json", _jsonl(GOOD, '{"prompt": "a",'), {}, ["line 2", "invalid JSON"]),
    ("not_object", _jsonl(GOOD, "[1, 2]"), {}, ["line 2", "array"]),
    ("missing_key", _jsonl(GOOD, GOOD, {"prompt": "a"}), {}, ["line 3", '"response"']),
    ("number_value", _jsonl({"prompt": 42, "response": "b"}), {}, ["line 1", '"prompt"', "42"]),
    ("null_value", _jsonl(GOOD, {"prompt": "a", "response": None}), {}, ["line 2", "null"]),
    ("empty_response", _jsonl({"prompt": "a", "response": "  "}), {}, ["line 1", "empty"]),
    ("too_few", _jsonl(GOOD, GOOD, GOOD), {}, ["found 3", "at least 8"]),
    ("forced_jsonl", b"plain text\n", {"upload_format": "jsonl"}, ["line 1", "invalid JSON"]),
]


@pytest.mark.parametrize("data,kwargs,fragments", [c[1:] for c in UPLOAD_ERRORS], ids=[c[0] for c in UPLOAD_ERRORS])
def test_upload_rejects(data, kwargs, fragments):
    with pytest.raises(UploadError) as caught:
        parse_upload(data, **kwargs)
    assert isinstance(caught.value, ValueError)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_upload_jsonl_split():
    records = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(20)]
    parsed = parse_upload(_jsonl(*records, ""), seed=3)

    assert parsed.format == "jsonl"
    assert len(parsed.val_pairs) == 2
    assert sorted(parsed.train_pairs + parsed.val_pairs) == sorted((r["prompt"], r["response"]) for r in records)


def test_upload_text_split():
    parsed = parse_upload(("line of text\n" * 100).encode("utf-8"))
    assert parsed.format == "text"
    assert parsed.train_text + parsed.val_text == "line of text\n" * 100
    assert len(parsed.val_text) == pytest.approx(130, abs=1)  # a tenth, cut at a character


CONFIG_ERRORS = [
    ({"seq_len": 4}, "seq_len must be >= 8"),
    ({"n_val": 0}, "n_val must be >= 1"),
    ({"task": "poetry"}, "task must be one of"),
    ({"dtype": "int8"}, "dtype must be one of"),
    ({"n_train": 2.5}, "n_train must be an integer"),
    ({"model_name": ""}, "model_name must be"),
]


@pytest.mark.parametrize("kwargs,message", CONFIG_ERRORS)
def test_task_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LMTaskConfig(**kwargs)

