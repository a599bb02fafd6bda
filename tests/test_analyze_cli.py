"""``trainwatch analyze``: the same verdict from a run's logs as the live callback gave, and the command around it.

Each scenario is a real tiny Trainer run with the live Diagnoser attached, reporting to TensorBoard; its event
files and trainer_state.json are then analysed and must give the live verdict, cause and step.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import trainwatch
from trainwatch import Diagnoser
from trainwatch.logs import LogReadError
from trainwatch.testing import SCENARIOS, tiny_trainer

SAVE_STEPS = 100


def run_live(scenario: str, output_dir: Path, **overrides) -> Diagnoser:
    # The series alone, as the logs have it: the pre-flight decides a train set without targets from the data,
    # before the first log (tests/test_preflight.py checks that the logs then give the same kind and cause), and the
    # gradient probe adds what no log holds (tests/test_gradients.py).
    diagnoser = Diagnoser(report=False, preflight=False, probe_gradients=False)
    trainer = tiny_trainer(
        scenario, str(output_dir), callbacks=[diagnoser], save_strategy="steps", save_steps=SAVE_STEPS, **overrides
    )
    logging.disable(logging.WARNING)
    try:
        trainer.train()
    finally:
        logging.disable(logging.NOTSET)
    trainer.save_state()  # output_dir/trainer_state.json: the whole log_history
    return diagnoser


@pytest.fixture(scope="module")
def live_runs(tmp_path_factory):
    """Every scenario run once, live: {name: (output_dir, diagnoser)}."""
    runs = {}
    for name in SCENARIOS:
        output_dir = tmp_path_factory.mktemp(name)
        runs[name] = (output_dir, run_live(name, output_dir))
    return runs


def decided(findings) -> tuple[str, str | None, int | None]:
    first = findings[0] if findings else None
    return (first.kind, first.cause, first.step) if first else ("healthy", None, None)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_logs_give_the_live_verdict(live_runs, scenario):
    output_dir, diagnoser = live_runs[scenario]
    live = decided(diagnoser.diagnoses)
    kind, cause = SCENARIOS[scenario].expected
    assert live[0] == kind and (cause is None or live[1] == cause)
    (tensorboard,) = trainwatch.analyze(output_dir / "runs")
    (state,) = trainwatch.analyze(output_dir / "trainer_state.json")
    assert decided(tensorboard.diagnoses) == live
    assert decided(state.diagnoses) == live
    for ours, theirs in zip(tensorboard.diagnoses, diagnoser.diagnoses, strict=True):
        assert ours.fixes == theirs.fixes  # the args text summary makes them as concrete as live
        assert ours.evidence == {  # TensorBoard keeps float32
            k: pytest.approx(v, rel=1e-6, nan_ok=True) if isinstance(v, float) else v
            for k, v in theirs.evidence.items()
        }
    for ours, theirs in zip(state.diagnoses, diagnoser.diagnoses, strict=True):
        # trainer_state.json keeps every digit; vocab from the checkpoint (to_dict: NaN as a word, so NaN == NaN)
        assert ours.to_dict()["evidence"] == theirs.to_dict()["evidence"]
    assert tensorboard.verdict == state.verdict == diagnoser.verdict
    # a clean log has nothing to note but the checkpoint to go back to (runs that save some)
    assert not [n for n in tensorboard.notes if "no evaluation" not in n and not n.startswith("checkpoint to go back to")]


@pytest.mark.parametrize("scenario", ["exploding", "lr_too_low", "overfitting"])
def test_a_checkpoint_state_gives_what_was_decided_by_then(live_runs, scenario):
    output_dir, diagnoser = live_runs[scenario]
    (report,) = trainwatch.analyze(output_dir / f"checkpoint-{SAVE_STEPS}")
    assert report.source == str(output_dir / f"checkpoint-{SAVE_STEPS}" / "trainer_state.json")
    assert decided(report.diagnoses) == decided([f for f in diagnoser.diagnoses if f.step <= SAVE_STEPS])


def test_output_dir_reads_the_tensorboard_run_with_the_run_s_facts(live_runs):
    output_dir, diagnoser = live_runs["exploding"]
    (report,) = trainwatch.analyze(output_dir)
    assert report.format == "tensorboard" and report.source.startswith(str(output_dir / "runs"))
    assert report.diagnoses[0].fixes == diagnoser.diagnoses[0].fixes  # args text summary: fixes as concrete as live
    assert "learning_rate 1 → 0.1" in report.diagnoses[0].fixes[0]
    assert report.history.facts.vocab_size == 64
    assert any("trainer_state.json exists too" in n for n in report.notes)


def test_a_directory_of_runs_reports_each(live_runs, tmp_path):
    for name in ("healthy", "zero_gradients"):
        shutil.copytree(live_runs[name][0] / "runs", tmp_path / name)
    reports = trainwatch.analyze(tmp_path)
    assert sorted(r.verdict for r in reports) == ["flat", "healthy"]


def test_an_epoch_based_run_is_judged_against_its_planned_length(tmp_path):
    """Its arguments say max_steps -1; the epochs it logs give the plan the live callback had from Trainer, so the
    flat finding's projection (and its words) are the live ones."""
    diagnoser = run_live("lr_too_low", tmp_path, max_steps=-1, num_train_epochs=3)
    planned = diagnoser.engine.history.facts.max_steps
    assert planned == 3 * 512 // 8
    (report,) = trainwatch.analyze(tmp_path / "runs")
    assert report.history.facts.max_steps == planned
    assert decided(report.diagnoses) == decided(diagnoser.diagnoses) == ("flat", "lr_too_low", 50)
    assert report.diagnoses[0].evidence["planned_steps"] == planned
    assert report.diagnoses[0].summary == diagnoser.diagnoses[0].summary


def test_a_folder_of_renamed_trainer_states_reports_each(live_runs, tmp_path):
    """trainer_state.json files collected under other names (downloads, a folder of runs) are runs; other JSON not."""
    for name in ("healthy", "zero_gradients"):
        shutil.copy(live_runs[name][0] / "trainer_state.json", tmp_path / f"{name} trainer_state (1).json")
    shutil.copy(live_runs["healthy"][0] / "checkpoint-100" / "config.json", tmp_path / "config.json")
    reports = trainwatch.analyze(tmp_path)
    assert sorted((Path(r.source).name, r.verdict) for r in reports) == [
        ("healthy trainer_state (1).json", "healthy"),
        ("zero_gradients trainer_state (1).json", "flat"),
    ]


def test_resumed_run_in_sibling_run_directories_is_one_run(tmp_path):
    """HF v5 writes the resumed process to a new runs/<date>_<host>; the crashed steps it re-logs are replaced."""

    class Crash(Exception):
        pass

    from transformers import TrainerCallback

    class CrashAt(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.global_step == 120:
                raise Crash

    first = tiny_trainer(
        "healthy",
        str(tmp_path),
        callbacks=[Diagnoser(report=False), CrashAt()],
        save_strategy="steps",
        save_steps=SAVE_STEPS,
    )
    with pytest.raises(Crash):
        first.train()
    writer = next(c for c in first.callback_handler.callbacks if type(c).__name__ == "TensorBoardCallback")
    writer.on_train_end(first.args, first.state, first.control)  # the crashed process's writer is gone too
    time.sleep(1.1)  # the run directory's name has a one-second resolution
    diagnoser = Diagnoser(report=False)
    resumed = tiny_trainer(
        "healthy", str(tmp_path), callbacks=[diagnoser], save_strategy="steps", save_steps=SAVE_STEPS
    )
    resumed.train(resume_from_checkpoint=True)
    assert len(list((tmp_path / "runs").iterdir())) == 2
    (report,) = trainwatch.analyze(tmp_path)
    assert " + " in report.source
    assert any("continue each other" in n for n in report.notes)
    assert any("replaced 60 value(s)" in n for n in report.notes)  # steps 101-120: loss, grad_norm, learning_rate
    steps, _ = report.curves["loss"]
    assert list(steps) == list(range(1, 151))
    assert report.verdict == diagnoser.verdict == "healthy"


# -- the command ----------------------------------------------------------------------------------------------------
def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainwatch", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_cli_exit_codes_and_text(live_runs, tmp_path):
    healthy = cli("analyze", str(live_runs["healthy"][0]))
    assert healthy.returncode == 0, healthy.stderr
    assert ": healthy" in healthy.stdout and "curves:" in healthy.stdout
    exploding = cli("analyze", str(live_runs["exploding"][0] / "trainer_state.json"))
    assert exploding.returncode == 1
    assert "EXPLODING (lr_too_high) at step" in exploding.stdout and "fix 1." in exploding.stdout
    for bad in (tmp_path / "missing", tmp_path):
        result = cli("analyze", str(bad))
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith("trainwatch: error: ") and result.stderr.count("\n") == 1
    garbage = tmp_path / "events.out.tfevents.1700000000.host"
    garbage.write_bytes(os.urandom(64))
    result = cli("analyze", str(garbage))
    assert (
        result.returncode == 2 and "Traceback" not in result.stderr and "not a TensorBoard event file" in result.stderr
    )


def test_cli_json(live_runs):
    result = cli("analyze", "--json", str(live_runs["lr_too_low"][0] / "runs"))
    assert result.returncode == 1
    (line,) = result.stdout.splitlines()  # JSON Lines: one object per run
    report = json.loads(line)
    assert report["verdict"] == "flat"
    assert {"source", "verdict", "diagnoses", "notes"} <= report.keys()
    diagnosis = report["diagnoses"][0]
    assert {"kind", "cause", "step", "evidence", "fixes"} <= diagnosis.keys()
    assert diagnosis["cause"] == "lr_too_low" and diagnosis["fixes"]
    assert report["signals"]["loss"]["count"] == 150


def test_cli_plot(live_runs, tmp_path):
    png = tmp_path / "run.png"
    result = cli("analyze", str(live_runs["overfitting"][0]), "--plot", str(png))
    assert result.returncode == 1, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_plot_without_matplotlib_is_one_line(live_runs, tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None; from trainwatch.cli import main; "
        f"sys.exit(main(['analyze', {str(live_runs['healthy'][0])!r}, '--plot', {str(tmp_path / 'x.png')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "trainwatch: error: --plot needs matplotlib: pip install 'trainwatch[plot]'\n"


def test_api_errors_are_log_read_errors(tmp_path):
    with pytest.raises(LogReadError, match="no such file"):
        trainwatch.analyze(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LogReadError, match="no TensorBoard event files or trainer_state.json"):
        trainwatch.analyze(tmp_path)
    with pytest.raises(TypeError, match="unknown threshold"):
        trainwatch.analyze(tmp_path, max_los=3)


def test_analyze_does_not_import_torch():
    code = (
        "import sys, trainwatch.cli, trainwatch.analysis; print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False False"
