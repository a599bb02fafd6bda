"""trainer_state.json and the files Trainer and peft save beside it."""

from __future__ import annotations

import json
import math
import os
import pickle

import pytest

from trainwatch.logs import LogReadError
from trainwatch.logs.trainer_state import read_trainer_state

LOG_HISTORY = [
    {"loss": 4.1, "grad_norm": 0.9, "learning_rate": 1e-3, "epoch": 0.1, "step": 1},
    {"loss": float("nan"), "grad_norm": float("inf"), "learning_rate": 1e-3, "epoch": 0.2, "step": 2},
    {"eval_loss": 3.9, "eval_runtime": 0.1, "epoch": 0.2, "step": 2},
    {"train_runtime": 3.0, "train_loss": 4.0, "total_flos": 1.0, "epoch": 0.2, "step": 2},
]


def write_state(folder, log_history=LOG_HISTORY, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "trainer_state.json"
    # json.dumps writes NaN/Infinity, as Trainer's save_to_json does
    path.write_text(
        json.dumps({"global_step": 2, "num_train_epochs": 3, "max_steps": 20, "log_history": log_history, **fields})
    )
    return path


def test_entries_are_the_logs_on_log_received(tmp_path):
    state = read_trainer_state(write_state(tmp_path))
    entries = list(state.entries())
    assert [step for step, _ in entries] == [1, 2, 2, 2]
    assert entries[0][1]["loss"] == 4.1
    assert math.isnan(entries[1][1]["loss"]) and entries[1][1]["grad_norm"] == math.inf
    assert entries[2][1]["eval_loss"] == 3.9
    assert state.notes == []


def test_facts_from_the_checkpoint_and_its_output_dir(tmp_path):
    checkpoint = tmp_path / "checkpoint-20"
    path = write_state(checkpoint)
    (checkpoint / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {"vocab_size": 32000}}))
    (tmp_path / "training_args.json").write_text(
        json.dumps({"learning_rate": 2e-4, "max_grad_norm": 0.3, "report_to": []})
    )
    (checkpoint / "training_args.bin").write_bytes(pickle.dumps({"learning_rate": 99}))  # a pickle: never loaded
    facts = read_trainer_state(path).facts
    assert facts.vocab_size == 32000
    assert facts.hyperparameters == {
        "num_train_epochs": 3,
        "learning_rate": 2e-4,
        "max_grad_norm": 0.3,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.05,
    }


def test_entries_without_a_step_are_noted(tmp_path):
    state = read_trainer_state(write_state(tmp_path, [{"loss": 1.0}, *LOG_HISTORY[:1], "junk"]))
    assert len(state.log_history) == 1
    assert state.notes == [f"{tmp_path / 'trainer_state.json'}: skipped 2 log_history entries without a valid step"]


def test_empty_log_history_is_noted(tmp_path):
    state = read_trainer_state(write_state(tmp_path, []))
    assert state.log_history == [] and "log_history is empty" in state.notes[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"log_history": [', "not valid JSON"),
        ("\xff\xfe garbage", "not valid JSON"),
        ('{"global_step": 3}', "no log_history list"),
        ("[1, 2]", "no log_history list"),
    ],
)
def test_not_a_trainer_state_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "trainer_state.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(LogReadError, match=message) as error:
        read_trainer_state(path)
    assert "\n" not in str(error.value)


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(LogReadError, match="cannot read"):
        read_trainer_state(tmp_path / "nope.json")


def test_deeply_nested_json_is_one_clear_error(tmp_path):
    """Found by the fuzzer: json's RecursionError must not escape."""
    path = tmp_path / "trainer_state.json"
    path.write_text("[" * 100_000)
    with pytest.raises(LogReadError, match="nested too deeply"):
        read_trainer_state(path)


def test_step_beyond_int64_is_skipped_with_a_note(tmp_path):
    """Found by the fuzzer: a step no writer can produce is damage, not a value to plot."""
    state = read_trainer_state(write_state(tmp_path, [{"step": 1, "loss": 2.0}, {"step": 10**20, "loss": 1.0}]))
    assert [step for step, _ in state.entries()] == [1]
    assert "skipped 1 log_history entry without a valid step" in state.notes[0]


def test_side_files_that_cannot_be_facts_are_skipped_never_raised_nor_waited_on(tmp_path) -> None:
    """A config.json nested too deeply to parse, and an adapter_config.json that is a FIFO (a read would block)."""
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": [{"step": 1, "loss": 2.0}]}))
    (tmp_path / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    os.mkfifo(tmp_path / "adapter_config.json")
    state = read_trainer_state(tmp_path / "trainer_state.json")
    assert state.facts.vocab_size is None and len(state.log_history) == 1
