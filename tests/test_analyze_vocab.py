"""``trainwatch analyze --vocab-size N``: the vocabulary size for runs whose files do not say it, checked end to end."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import trainwatch
from trainwatch.testing import VOCAB_SIZE, tiny_trainer


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainwatch", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ})


@pytest.fixture(scope="module")
def bare_state(tmp_path_factory) -> Path:
    """A real tiny run's trainer_state.json, alone in a folder: no checkpoint or model config beside it to tell the
    vocabulary size, as when only the state file was kept."""
    output_dir = tmp_path_factory.mktemp("run")
    trainer = tiny_trainer("healthy", str(output_dir), max_steps=20, report_to=[])
    logging.disable(logging.WARNING)
    try:
        trainer.train()
    finally:
        logging.disable(logging.NOTSET)
    trainer.save_state()
    alone = tmp_path_factory.mktemp("alone") / "trainer_state.json"
    shutil.copy(output_dir / "trainer_state.json", alone)
    return alone


def test_vocab_size_reaches_the_facts(bare_state: Path) -> None:
    without = cli("analyze", "--json", str(bare_state))
    assert without.returncode == 0, without.stderr
    [report] = map(json.loads, without.stdout.splitlines())  # JSON Lines: one object per run
    assert report["facts"]["vocab_size"] is None  # the file alone cannot say it

    given = cli("analyze", "--json", "--vocab-size", str(VOCAB_SIZE), str(bare_state))
    assert given.returncode == 0, given.stderr
    [report] = map(json.loads, given.stdout.splitlines())
    assert report["facts"]["vocab_size"] == VOCAB_SIZE
    assert report["signals"]["loss"]["count"] == 20  # the same run, read the same way

    [api] = trainwatch.analyze(bare_state, vocab_size=VOCAB_SIZE)
    assert api.history.facts.vocab_size == VOCAB_SIZE


def test_vocab_size_overrides_what_the_files_say(tmp_path: Path) -> None:
    """An output dir whose checkpoint config says 64: the flag wins, for every run found."""
    trainer = tiny_trainer("healthy", str(tmp_path), max_steps=10, report_to=[], save_strategy="steps", save_steps=10)
    logging.disable(logging.WARNING)
    try:
        trainer.train()
    finally:
        logging.disable(logging.NOTSET)
    [own] = trainwatch.analyze(tmp_path / "checkpoint-10")
    assert own.history.facts.vocab_size == VOCAB_SIZE
    reports = trainwatch.analyze(tmp_path, vocab_size=50_000)
    assert reports and all(r.history.facts.vocab_size == 50_000 for r in reports)


@pytest.mark.parametrize("bad", ["0", "-3", "1", "1.5", "64k", ""])
def test_a_bad_vocab_size_is_one_argparse_error(bad: str, tmp_path: Path) -> None:
    result = cli("analyze", f"--vocab-size={bad}", str(tmp_path))
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("trainwatch analyze: error: argument --vocab-size: must be ")


@pytest.mark.parametrize("bad", [0, -1, 1, 2.5, True, "64"])
def test_a_bad_vocab_size_is_refused_by_the_api(bad, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        trainwatch.analyze(tmp_path, vocab_size=bad)
