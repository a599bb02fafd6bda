"""``trainwatch analyze`` gives the live verdict where the logs cannot: it reads the live callback's own report, and
never calls a run without a single train loss "healthy".

The run is the real one of the issue: a train set without a single target token, stopped by the pre-flight at step
0 (Trainer runs one step before it reads the stop flag).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trainwatch
from trainwatch import Diagnoser
from trainwatch.findings import Finding
from trainwatch.logs.live_report import LiveReport, with_live_decisions
from trainwatch.testing import tiny_trainer


def stopped_by_the_preflight(output_dir: Path, **overrides) -> Diagnoser:
    diagnoser = Diagnoser(stop_on=("flat",))
    trainer = tiny_trainer("no_target_tokens", str(output_dir), callbacks=[diagnoser], **overrides)
    logging.disable(logging.WARNING)
    try:
        trainer.train()
    finally:
        logging.disable(logging.NOTSET)
    trainer.save_state()  # output_dir/trainer_state.json
    assert trainer.state.global_step == 1
    assert [(f.kind, f.cause, f.step) for f in diagnoser.diagnoses] == [("flat", "no_target_tokens", 0)]
    return diagnoser


def analyze_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainwatch", "analyze", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


@pytest.fixture(scope="module")
def one_loss_logged(tmp_path_factory) -> Path:
    """Stopped after one step, whose loss (0.0: nothing to learn from) is logged."""
    output_dir = tmp_path_factory.mktemp("one_loss_logged")
    stopped_by_the_preflight(output_dir)
    return output_dir


@pytest.fixture(scope="module")
def no_loss_logged(tmp_path_factory) -> Path:
    """Stopped after one step, with logging every 10 steps: not a single train loss on disk."""
    output_dir = tmp_path_factory.mktemp("no_loss_logged")
    stopped_by_the_preflight(output_dir, logging_steps=10)
    return output_dir


def test_analyze_gives_the_pre_flight_decision_of_the_live_report(one_loss_logged) -> None:
    text = analyze_cli(str(one_loss_logged))
    assert text.returncode == 1, text.stdout + text.stderr
    assert "FLAT (no_target_tokens) at step 0" in text.stdout and ": healthy" not in text.stdout
    live = one_loss_logged / "trainwatch" / "diagnosis.json"
    assert f"note: verdict from trainwatch's live report {live}: flat (no_target_tokens) at step 0, decided by the " \
           "pre-flight" in text.stdout
    for path in (one_loss_logged, one_loss_logged / "trainer_state.json"):  # the TensorBoard run, then the state
        result = analyze_cli("--json", str(path))
        assert result.returncode == 1
        (report,) = map(json.loads, result.stdout.splitlines())  # JSON Lines: one object per run
        assert report["verdict"] == "flat"
        [diagnosis] = report["diagnoses"]
        assert diagnosis["cause"] == "no_target_tokens" and diagnosis["evidence"]["decided_by"] == "pre-flight"
        assert diagnosis["fixes"] and any("live report" in n for n in report["notes"])


def test_a_run_without_a_train_loss_is_not_judged_unless_the_live_report_decided(no_loss_logged, tmp_path) -> None:
    with_report = analyze_cli(str(no_loss_logged))
    assert with_report.returncode == 1 and "FLAT (no_target_tokens) at step 0" in with_report.stdout
    # Without trainwatch's report the logs alone have nothing to judge: not "healthy", and its own exit code.
    (no_loss_logged / "trainwatch" / "diagnosis.json").unlink()
    text = analyze_cli(str(no_loss_logged))
    assert text.returncode == 3, text.stdout + text.stderr
    assert text.stdout.splitlines()[0].endswith(": not judged") and "healthy" not in text.stdout
    assert "were logged: nothing to judge" in text.stdout
    result = analyze_cli("--json", str(no_loss_logged / "trainer_state.json"))
    assert result.returncode == 3
    (report,) = map(json.loads, result.stdout.splitlines())
    assert report["verdict"] == "not judged" and report["diagnoses"] == []
    (api,) = trainwatch.analyze(no_loss_logged)
    assert api.verdict == "not judged" and not api.judged and not api.failed


def test_a_damaged_live_report_is_a_note_and_the_logs_still_speak(one_loss_logged, tmp_path) -> None:
    import shutil

    output_dir = tmp_path / "run"
    shutil.copytree(one_loss_logged, output_dir)
    (output_dir / "trainwatch" / "diagnosis.json").write_text('{"verdict": "flat", "diagnoses": [{"kind": "fl')
    (report,) = trainwatch.analyze(output_dir / "trainer_state.json")
    assert report.verdict == "healthy"  # one loss logged, nothing decided by the logs alone after one step
    assert any("cannot be read (JSONDecodeError): not used" in n for n in report.notes)


def test_live_decisions_replace_the_logs_per_class_up_to_the_last_step_read() -> None:
    def finding(kind: str, cause: str, step: int, **evidence) -> Finding:
        return Finding(kind, cause, step, "", evidence)

    logs = [finding("flat", "no_target_tokens", 5), finding("overfitting", "widening_gap", 40)]
    live = LiveReport(
        [Path("diagnosis.json")],
        [finding("flat", "no_target_tokens", 0, decided_by="pre-flight"), finding("exploding", "non_finite", 60)],
    )
    merged, notes = with_live_decisions(logs, live, last_step=50)
    assert [(f.kind, f.step) for f in merged] == [("flat", 0), ("overfitting", 40)]
    assert "flat (no_target_tokens) at step 0, decided by the pre-flight" in notes[0]
    assert notes[1] == (
        "the live report also decided exploding (non_finite) at step 60, after step 50, the last one read here"
    )
    same, notes = with_live_decisions(logs[1:], LiveReport([Path("d.json")], logs[1:]), last_step=50)
    assert same == logs[1:] and notes == ["trainwatch's live report d.json was read: it gives the same decisions"]
