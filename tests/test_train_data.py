"""The reference run's data path: JSONL records in, masked token ids out (in-process, fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, DataCollatorForSeq2Seq

from trainwatch.data import IGNORE_INDEX, DataError, InstructionDataset, encode, load_examples
from trainwatch.train import ASSETS


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ASSETS / "tiny-llama")


def write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prompt_is_masked_and_response_with_eos_is_learned(tokenizer, tmp_path):
    [example] = load_examples(write(tmp_path, [json.dumps({"instruction": "Reverse the word cat.", "response": "tac"})]))
    encoded = encode(example, tokenizer, max_length=128)
    learned = [token for token, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(learned[:-1]) == "tac"
    assert learned[-1] == tokenizer.eos_token_id
    assert encoded.labels[: len(encoded.labels) - 4] == [IGNORE_INDEX] * (len(encoded.labels) - 4)
    assert not encoded.truncated


def test_pad_equal_to_eos_never_masks_the_real_eos(tokenizer, tmp_path):
    """Most hub tokenizers have pad == eos: padding must not turn the learned EOS into -100."""
    lines = [json.dumps({"instruction": "Reverse the word cat.", "response": r}) for r in ("tac", "a much longer answer")]
    dataset = InstructionDataset(load_examples(write(tmp_path, lines)), tokenizer, max_length=128)
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-llama")
    tokenizer.pad_token = tokenizer.eos_token
    batch = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)([dataset[0], dataset[1]])
    short = batch["labels"][0].tolist()
    real_eos_position = len(dataset[0]["labels"]) - 1
    assert short[real_eos_position] == tokenizer.eos_token_id
    assert set(short[real_eos_position + 1 :]) == {IGNORE_INDEX}


def test_chat_messages_learn_only_the_last_assistant_turn(tokenizer, tmp_path):
    record = {"messages": [{"role": "user", "content": "Reverse the word cat."}, {"role": "assistant", "content": "tac"}]}
    [example] = load_examples(write(tmp_path, [json.dumps(record)]))
    encoded = encode(example, tokenizer, max_length=128)
    assert tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX][:-1]) == "tac"


def test_cut_responses_are_counted_and_empty_ones_dropped(tokenizer, tmp_path):
    lines = [
        json.dumps({"instruction": "Spell the word kabode letter by letter.", "response": "k-a-b-o-d-e"}),
        json.dumps({"instruction": "x" * 100, "response": "y"}),
        json.dumps({"instruction": "Reverse the word cat.", "response": "tac"}),
    ]
    dataset = InstructionDataset(load_examples(write(tmp_path, lines)), tokenizer, max_length=80)
    assert (dataset.truncated, dataset.dropped, len(dataset)) == (2, 1, 2)


def test_mask_response_reproduces_the_all_masked_bug(tokenizer, tmp_path):
    path = write(tmp_path, [json.dumps({"instruction": "Reverse the word cat.", "response": "tac"})])
    dataset = InstructionDataset(load_examples(path), tokenizer, 128, mask_response=True)
    assert set(dataset[0]["labels"]) == {IGNORE_INDEX}


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"instruction": "a", "response": "b"', ""], "data.jsonl:1: not valid JSON"),
        (['{"instruction": "a"}'], "data.jsonl:1: needs string fields 'instruction' and 'response'"),
        (['{"instruction": "a", "response": "b"}', "[1, 2]"], "data.jsonl:2: expected a JSON object"),
        (['{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}'], "last message"),
        (["", "  "], "no examples"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, lines, message):
    with pytest.raises(DataError, match=message.replace("[", r"\[")):
        load_examples(write(tmp_path, lines))


def test_shipped_assets_are_small_and_complete():
    size = sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file())
    assert size < 5 * 2**20
    assert len(load_examples(ASSETS / "instructions-train.jsonl")) == 800
    assert len(load_examples(ASSETS / "instructions-eval.jsonl")) == 160
