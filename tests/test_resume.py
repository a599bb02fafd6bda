"""A resumed run remembers its past: no finding lost, no false alarm from a history that restarts mid-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainwatch.callbacks import Diagnoser
from trainwatch.engine import Engine, build_rules
from trainwatch.history import Facts
from trainwatch.testing import tiny_trainer


class Preempted(TrainerCallback):
    """The job is killed at ``step`` (as a pre-empted cluster job is): training ends there, checkpoints stay."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("restore_flag", [False, True], ids=["default", "restore_callback_states"])
def test_finding_survives_resume_in_the_users_instance(tmp_path: Path, restore_flag: bool) -> None:
    settings = dict(max_steps=50, save_strategy="steps", save_steps=10, restore_callback_states_from_checkpoint=restore_flag)
    first = Diagnoser(patience_steps=20)
    tiny_trainer("lr_too_low", str(tmp_path), callbacks=[first, Preempted(35)], **settings).train()
    [decided] = first.diagnoses
    assert (decided.kind, decided.cause) == ("flat", "lr_too_low") and decided.step < 30

    # A new process: a new Trainer and a new Diagnoser, resumed from the last checkpoint before the kill.
    resumed = Diagnoser(patience_steps=20)
    trainer = tiny_trainer("lr_too_low", str(tmp_path), callbacks=[resumed], **settings)
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-30"))
    assert trainer.state.global_step == 50
    assert resumed in trainer.callback_handler.callbacks  # Trainer kept the user's instance: their reference is live
    assert resumed.diagnoses == [decided]  # same finding, same step and evidence: not lost, not decided twice
    report = json.loads((tmp_path / "trainwatch" / "diagnosis.json").read_text())
    assert report["verdict"] == "flat" and report["diagnoses"] == [decided.to_dict()] and report["step"] == 50


def test_resumed_healthy_run_stays_healthy(tmp_path: Path) -> None:
    settings = dict(max_steps=60, save_strategy="steps", save_steps=40, report_to=[])
    tiny_trainer("healthy", str(tmp_path), callbacks=[Diagnoser(), Preempted(45)], **settings).train()
    resumed = Diagnoser(stop_on=("flat", "exploding"))
    trainer = tiny_trainer("healthy", str(tmp_path), callbacks=[resumed], **settings)
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-40"))
    assert trainer.state.global_step == 60 and resumed.verdict == "healthy"
    assert resumed.engine.history["loss"].first_step == 1  # the history goes back to the run's start


REALRUNS = Path(__file__).resolve().parents[2] / "shared" / "realruns" / "trainer_state"


def _decided(findings) -> list[tuple[str, str, int]]:
    return [(f.kind, f.cause, f.step) for f in findings]


def _resumed_mid_way(logs: list[dict], tmp_path: Path) -> tuple[list, list, list]:
    """(uninterrupted, Diagnoser resumed at the middle train step, history reset at that step) decisions."""
    train_steps = [e["step"] for e in logs if "loss" in e]
    resume_step = train_steps[len(train_steps) // 2]
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    facts = {"hyperparameters": {"fp16": args.fp16}}  # what the live side knows of these runs: no loss scaler
    whole = Engine(build_rules(), facts=Facts(**facts)).replay((e["step"], e) for e in logs)
    tail_only = Engine(build_rules(), facts=Facts(**facts)).replay((e["step"], e) for e in logs if e["step"] > resume_step)

    diagnoser = Diagnoser(preflight=False, report=False)
    state = TrainerState(global_step=resume_step, log_history=[e for e in logs if e["step"] <= resume_step])
    control = TrainerControl()
    diagnoser.on_train_begin(args, state, control)
    for entry in (e for e in logs if e["step"] > resume_step):
        state.global_step = entry["step"]
        diagnoser.on_log(args, state, control, logs={k: v for k, v in entry.items() if k != "step"})
    assert not diagnoser.disabled
    return _decided(whole.findings), _decided(diagnoser.diagnoses), _decided(tail_only.findings)


@pytest.mark.skipif(not REALRUNS.is_dir(), reason="shared/realruns not present")
def test_real_runs_resumed_mid_way_keep_their_verdict(tmp_path: Path) -> None:
    """Every real log resumed at its middle step decides what the uninterrupted run decided; many of them, seen
    only from the resume step on (a history reset there), would cry wolf or miss what happened before."""
    hazards = 0
    for path in sorted(REALRUNS.glob("*.json")):
        logs = [e for e in json.loads(path.read_text())["log_history"] if isinstance(e.get("step"), int)]
        if sum("loss" in e for e in logs) < 20:
            continue
        whole, resumed, tail_only = _resumed_mid_way(logs, tmp_path)
        assert resumed == whole, path.name
        hazards += tail_only != whole
    assert hazards >= 5  # the reset-history hazard is real on real runs, not a thought experiment


def test_same_instance_resumed_from_an_earlier_checkpoint_forgets_the_abandoned_steps(tmp_path: Path) -> None:
    settings = dict(max_steps=40, save_strategy="steps", save_steps=10, report_to=[])
    diagnoser = Diagnoser()
    tiny_trainer("healthy", str(tmp_path), callbacks=[diagnoser, Preempted(25)], **settings).train()
    assert diagnoser.engine.history.step == 25
    trainer = tiny_trainer("healthy", str(tmp_path), callbacks=[diagnoser], **settings)
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-20"))
    # Steps 21-25 were trained twice; the history holds each step once, as the final log history does.
    assert diagnoser.engine.history["loss"].count == 40
    fresh = Engine(build_rules()).replay((e["step"], e) for e in trainer.state.log_history)
    assert diagnoser.engine.history.state_dict() == fresh.history.state_dict() | {"facts": diagnoser.engine.history.state_dict()["facts"]}


def test_a_history_that_starts_mid_run_counts_flatness_from_its_first_loss() -> None:
    """Logs without their past (a trimmed log history): patience is counted from the first loss seen, not step 0."""
    engine = Engine(build_rules(patience_steps=50))
    for step in range(1001, 1050):
        engine.observe(step, {"loss": 2.0, "learning_rate": 1e-4, "grad_norm": 0.5})
    assert engine.findings == []
    engine.observe(1051, {"loss": 2.0, "learning_rate": 1e-4, "grad_norm": 0.5})
    assert [f.cause for f in engine.findings] == ["lr_too_low"]
