"""Every real log in ../shared/realruns (trainer_state.json and event files from public repositories) is analysed
without error: exit 0, 1 or 3 (not judged: no train loss), never 2, never a traceback."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

import trainwatch
from trainwatch.cli import main

REALRUNS = Path(__file__).resolve().parents[2] / "shared" / "realruns"
pytestmark = pytest.mark.skipif(not REALRUNS.is_dir(), reason=f"{REALRUNS} not present")


def real_logs() -> list[Path]:
    if not REALRUNS.is_dir():
        return []
    return sorted(REALRUNS.glob("trainer_state/*.json")) + sorted(p for p in REALRUNS.glob("tfevents/*") if p.is_dir())


@pytest.mark.parametrize("path", real_logs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_log_is_analysed(path):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["analyze", "--json", str(path)])
    assert code in (0, 1, 3), err.getvalue()
    assert err.getvalue() == ""


def test_every_tensorboard_value_is_read():
    """Counts of the signal values against TensorBoard's own EventAccumulator keeping all of them."""
    from tensorboard.backend.event_processing import event_accumulator

    for run_dir in sorted(p for p in REALRUNS.glob("tfevents/*") if p.is_dir()):
        for report in trainwatch.analyze(run_dir):
            for folder in report.source.split(" + "):
                accumulator = event_accumulator.EventAccumulator(folder, size_guidance={event_accumulator.SCALARS: 0})
                accumulator.Reload()
                tags = accumulator.Tags()["scalars"]
                expected = sum(len(accumulator.Scalars(tag)) for tag in ("train/loss", "loss") if tag in tags)
                assert report.history["loss"].count == expected, folder


def test_the_whole_collection_in_one_command():
    result = subprocess.run(
        [sys.executable, "-m", "trainwatch", "analyze", "--details", str(REALRUNS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr
    # a directory walk finds event files and trainer states under any name (the collection's are numbered)
    runs = [p for p in REALRUNS.glob("tfevents/*") if p.is_dir()] + list(REALRUNS.glob("*/*.json"))
    assert result.stdout.count("curves:") == len(runs) > 200
