"""Fuzzing the log readers: generated and damaged event files and trainer_state.json documents never raise
anything but a one-line LogReadError, and what they read always replays through the engine (and ``analyze``).

A short run here (CI); ``benchmarks/fuzz_readers.py`` runs the same generators for >= 10 000 cases per reader
(result in docs/fuzzing.md).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from fuzz_inputs import GENERATORS, event_file, exercise, known_bug, record
from trainwatch.engine import Engine
from trainwatch.logs.tensorboard import Undecodable, read_run


@pytest.mark.parametrize("kind", sorted(GENERATORS))
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rng=st.randoms(use_true_random=False))
def test_reader_never_raises_on_generated_input(kind: str, rng: random.Random, tmp_path: Path) -> None:
    try:
        outcome = exercise(kind, GENERATORS[kind](rng), str(tmp_path))
    except Exception as error:
        if known_bug(error):  # reported, reproduced below; keep looking for new ones
            reject()
        raise
    assert outcome in ("read", "refused")


def test_undamaged_generated_files_are_read_whole(tmp_path: Path) -> None:
    """The generators are not only noise: an undamaged file is read record by record, without a note."""
    payloads = event_file(random.Random(1))
    path = tmp_path / "events.out.tfevents.1.host.1.0"
    path.write_bytes(b"".join(map(record, payloads)))
    run = read_run([path])
    assert run.records == len(payloads) and run.scalars > 10 and not run.notes


# -- what the long run found, reported and not yet fixed: these fail (strict xfail) once fixed ----------------------
@pytest.mark.xfail(strict=True, raises=ZeroDivisionError, reason="engine: ExplodingRule divides by a 0.0 loss floor")
def test_known_bug_zero_loss_floor() -> None:
    Engine().replay([(step, {"loss": 0.0 if step < 4 else 1.0}) for step in range(1, 7)])


@pytest.mark.xfail(strict=True, raises=RecursionError, reason="read_trainer_state: RecursionError on nested JSON")
def test_known_bug_deeply_nested_trainer_state(tmp_path: Path) -> None:
    from trainwatch.logs.trainer_state import read_trainer_state

    path = tmp_path / "trainer_state.json"
    path.write_text("[" * 100_000)
    read_trainer_state(path)


@pytest.mark.xfail(strict=True, raises=OverflowError, reason="analyze: a step beyond int64 overflows the curves")
def test_known_bug_step_beyond_int64(tmp_path: Path) -> None:
    analysis = pytest.importorskip("trainwatch.analysis")
    path = tmp_path / "trainer_state.json"
    path.write_text('{"log_history": [{"step": 1, "loss": 2.0}, {"step": 100000000000000000000, "loss": 1.0}]}')
    analysis.analyze(path)


@pytest.mark.xfail(strict=True, raises=Undecodable, reason="read_events: an overlong step varint escapes its try")
def test_known_bug_overlong_step_varint(tmp_path: Path) -> None:
    path = tmp_path / "events.out.tfevents.1.host.1.0"
    # wall_time, then a step whose varint never ends within 10 bytes, on the reader's fast path.
    path.write_bytes(record(b"\x09" + bytes(8) + b"\x10" + b"\xff" * 11 + bytes(10)))
    read_run([path])
