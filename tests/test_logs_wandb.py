"""W&B run folders, written by a real Trainer run with ``report_to="wandb"`` in offline mode."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from trainwatch.analysis import analyze
from trainwatch.logs import LogReadError
from trainwatch.logs.wandb_log import BLOCK, FILE_HEADER, RECORD_HEADER, read_wandb_run
from trainwatch.testing import VOCAB_SIZE, tiny_trainer

wandb = pytest.importorskip("wandb", reason="the W&B tests need wandb (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory) -> tuple[Path, Path]:
    """An exploding run (lr 1.0, no clipping) logged to W&B offline: its run folder, and its trainer_state.json."""
    root = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_DIR", str(root))
        env.setenv("WANDB_SILENT", "true")
        env.setenv("WANDB_PROJECT", "trainwatch-tests")
        trainer = tiny_trainer(
            "exploding", str(root / "out"), report_to=["wandb"], max_steps=40, eval_strategy="steps", eval_steps=20
        )
        logging.disable(logging.WARNING)
        try:
            trainer.train()
        finally:
            logging.disable(logging.NOTSET)
            wandb.finish()  # as the end of the process would: the run's exit record
            wandb.teardown()  # finish() returns before wandb-core has written the log out: wait for it
    trainer.save_state()
    [run_folder] = (root / "wandb").glob("offline-run-*")
    [log] = run_folder.glob("*.wandb")
    assert not read_wandb_run(log).notes, "the fixture's log is complete, up to its exit record"
    return run_folder, root / "out" / "trainer_state.json"


def test_same_verdict_and_facts_as_trainer_state(offline_run) -> None:
    run_folder, state = offline_run
    [report] = analyze(run_folder.parent)  # the wandb/ folder: its run folders are found
    [expected] = analyze(state, vocab_size=VOCAB_SIZE)  # the state file alone lacks the model config W&B has
    assert report.format == "wandb" and report.source == str(run_folder)
    assert report.verdict == "exploding" and report.entries == expected.entries
    assert [(f.kind, f.cause, f.step) for f in report.diagnoses] == [
        (f.kind, f.cause, f.step) for f in expected.diagnoses
    ]
    facts = report.history.facts
    assert facts.vocab_size == 64 and facts.max_steps == 40  # the model config and the arguments, from the config
    assert facts.hyperparameters["learning_rate"] == 1.0 and facts.hyperparameters["max_grad_norm"] == 0.0
    assert "lower the learning rate 10×: learning_rate 1 → 0.1" in report.diagnoses[0].fixes
    assert not [n for n in report.notes if not n.startswith("no evaluation")]


def middle_of_a_record(data: bytes, after: int) -> int:
    """The middle of the first record that starts at or after byte ``after`` (the log's framing: 32 KiB blocks of
    records with a 7-byte header, the block's tail padded), so that a cut there is always mid-record."""
    pos = FILE_HEADER.size
    while pos < len(data):
        room = BLOCK - pos % BLOCK
        _, length, kind = RECORD_HEADER.unpack_from(data, pos) if room >= RECORD_HEADER.size else (0, 0, 0)
        if kind == 0 and length == 0:  # padding to the block's end
            pos += room
            continue
        if pos >= after and length >= 2:
            return pos + RECORD_HEADER.size + length // 2
        pos += RECORD_HEADER.size + length
    raise AssertionError(f"no record after byte {after}")


def test_a_log_cut_off_mid_write_still_reads(offline_run, tmp_path) -> None:
    run_folder, _ = offline_run
    [log] = run_folder.glob("*.wandb")
    data = log.read_bytes()
    cut = tmp_path / log.name
    cut.write_bytes(data[: middle_of_a_record(data, len(data) * 2 // 3)])  # a crash: the writer stopped mid-record
    whole, partial = read_wandb_run(log), read_wandb_run(cut)
    assert 0 < len(partial.log_history) < len(whole.log_history)
    assert partial.log_history == whole.log_history[: len(partial.log_history)]
    assert any("cut off mid-record" in n for n in partial.notes) and any("no exit record" in n for n in partial.notes)


def test_a_damaged_block_costs_that_block(offline_run, tmp_path) -> None:
    run_folder, _ = offline_run
    [log] = run_folder.glob("*.wandb")
    data = bytearray(log.read_bytes())
    assert len(data) > BLOCK  # the console output and system stats fill more than one block
    data[BLOCK // 2] ^= 0xFF
    damaged = tmp_path / log.name
    damaged.write_bytes(bytes(data))
    whole, read = read_wandb_run(log), read_wandb_run(damaged)
    assert 0 < len(read.log_history) < len(whole.log_history)  # the next block is read
    assert all(entry in whole.log_history for entry in read.log_history)
    assert any("1 damaged block(s)" in n for n in read.notes)


@pytest.mark.parametrize("content", [b"", b":W&B", b"garbage " * 100, b":W&B\xe1\xbe\x07" + bytes(50)])
def test_not_a_wandb_log_is_one_line(tmp_path, content: bytes) -> None:
    path = tmp_path / "run-x.wandb"
    path.write_bytes(content)
    with pytest.raises(LogReadError) as error:
        read_wandb_run(path)
    assert "\n" not in str(error.value) and str(error.value).startswith(str(path))


def test_cli_bad_input_exit_code(tmp_path) -> None:
    path = tmp_path / "run-x.wandb"
    path.write_bytes(b"not a transaction log")
    result = subprocess.run(
        [sys.executable, "-m", "trainwatch", "analyze", str(path)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no :W&B header" in result.stderr
