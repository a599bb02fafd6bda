"""Fuzzing the log readers: generated and damaged event files, trainer_state.json documents, W&B transaction logs,
MLflow stores, LLaMA-Factory logs and Lightning CSVs never raise anything but a one-line LogReadError, and what they
read always replays through the engine (and ``analyze``).

A short run here (CI); ``benchmarks/fuzz_readers.py`` runs the same generators for >= 10 000 cases per reader
(result in docs/fuzzing.md).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fuzz_inputs import GENERATORS, event_file, exercise, record
from hypothesis import given, settings
from hypothesis import strategies as st

from trainwatch.analysis import analyze
from trainwatch.engine import Engine
from trainwatch.logs import LogReadError
from trainwatch.logs.tensorboard import read_run
from trainwatch.logs.trainer_state import read_trainer_state

CASES = {
    "tensorboard": 150,
    "trainer_state": 150,
    "wandb": 60,
    "mlflow": 40,
    "mlflow_file_store": 40,
    "llamafactory": 60,
    "lightning": 60,
}
"""Hypothesis cases per reader in CI: the long run (benchmarks/fuzz_readers.py) does 10 000 of each."""
NEEDS = {"wandb": "wandb"}
"""Generators that build their files with an optional package (wandb's own Record classes)."""


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_reader_never_raises_on_generated_input(kind: str, tmp_path: Path) -> None:
    if kind in NEEDS:
        pytest.importorskip(NEEDS[kind], reason=f"the {kind} generator needs {NEEDS[kind]} (pip install -e '.[test]')")

    @settings(max_examples=CASES[kind], deadline=None, database=None)
    @given(rng=st.randoms(use_true_random=False))
    def check(rng: random.Random) -> None:
        assert exercise(kind, GENERATORS[kind](rng), str(tmp_path)) in ("read", "refused")

    check()


def test_undamaged_generated_files_are_read_whole(tmp_path: Path) -> None:
    """The generators are not only noise: an undamaged file is read record by record, without a note."""
    payloads = event_file(random.Random(1))
    path = tmp_path / "events.out.tfevents.1.host.1.0"
    path.write_bytes(b"".join(map(record, payloads)))
    run = read_run([path])
    assert run.records == len(payloads) and run.scalars > 10
    assert list(run.entries()) and not run.notes  # no damage (pass 1), no restart that dropped values (pass 2)


# -- the four bugs the long run found (docs/fuzzing.md), fixed, kept as regressions ---------------------------------
def test_zero_loss_floor_then_a_rise_is_judged() -> None:
    engine = Engine().replay([(step, {"loss": 0.0 if step < 4 else 1.0}) for step in range(1, 7)])
    assert all(f.summary for f in engine.findings)


def test_deeply_nested_trainer_state_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "trainer_state.json"
    path.write_text("[" * 100_000)
    with pytest.raises(LogReadError, match="nested too deeply"):
        read_trainer_state(path)


def test_step_beyond_int64_is_skipped_with_a_note(tmp_path: Path) -> None:
    path = tmp_path / "trainer_state.json"
    path.write_text('{"log_history": [{"step": 1, "loss": 2.0}, {"step": 100000000000000000000, "loss": 1.0}]}')
    [report] = analyze(path)
    assert report.error is None and report.entries == 1 and any("without a valid step" in n for n in report.notes)


def test_overlong_step_varint_is_an_undecodable_record(tmp_path: Path) -> None:
    path = tmp_path / "events.out.tfevents.1.host.1.0"
    # wall_time, then a step whose varint never ends within 10 bytes, on the reader's fast path.
    path.write_bytes(record(b"\x09" + bytes(8) + b"\x10" + b"\xff" * 11 + bytes(10)))
    run = read_run([path])
    assert run.records == 1 and run.scalars == 0 and any("not decodable" in n for n in run.notes)


# -- found by the long run over the new readers (docs/fuzzing.md) -------------------------------------------------
@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e400"])
def test_a_non_finite_planned_length_or_vocab_size_is_no_fact(tmp_path: Path, value: str) -> None:
    """A config read from another tool's log may hold anything: int(inf) raised, from trainer_state.json too."""
    path = tmp_path / "trainer_state.json"
    path.write_text(f'{{"max_steps": {value}, "log_history": [{{"step": 1, "loss": 2.0}}]}}')
    (tmp_path / "config.json").write_text(f'{{"vocab_size": {value}}}')
    [report] = analyze(path)
    assert report.history.facts.max_steps is None and report.history.facts.vocab_size is None


def test_a_sqlite_store_damaged_into_non_utf8_is_refused_in_one_line(tmp_path: Path) -> None:
    """Seed 4081 of the long run: SQLite's error message about the damaged schema is not UTF-8, and Python raised
    UnicodeDecodeError decoding it, outside sqlite3.Error."""
    assert exercise("mlflow", GENERATORS["mlflow"](random.Random(4081)), str(tmp_path)) == "refused"


def test_fifos_under_log_names_are_never_opened(tmp_path: Path) -> None:
    """A FIFO named as a log (or as a side file a reader reads) would block a read forever: it is no run, no fact."""
    import os

    for name in ("metrics.csv", "run-x.wandb", "mlflow.db", "hparams.yaml", "trainer_log.jsonl"):
        os.mkfifo(tmp_path / name)
    (tmp_path / "trainer_state.json").write_text('{"log_history": [{"step": 1, "loss": 2.0}]}')
    run = tmp_path / "mlruns" / "0" / "r1"
    (run / "metrics").mkdir(parents=True)
    (run / "params").mkdir()
    os.mkfifo(run / "meta.yaml")
    os.mkfifo(run / "params" / "learning_rate")
    (run / "metrics" / "loss").write_text("1700000000000 2.0 1\n")
    reports = analyze(tmp_path)  # returns: nothing waited on a FIFO
    assert sorted(r.format for r in reports) == ["mlflow", "trainer_state"]
