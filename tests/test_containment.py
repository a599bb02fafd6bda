"""trainwatch never breaks the training it watches, and never touches the user's checkpoints or logs."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import pytest

from trainwatch import preflight
from trainwatch.callbacks import Diagnoser
from trainwatch.engine import Engine
from trainwatch.testing import tiny_trainer


def _internal_errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "trainwatch" and "internal error" in r.getMessage()]


def test_internal_error_is_reported_once_and_training_goes_on(tmp_path: Path, monkeypatch, caplog) -> None:
    observe = Engine.observe

    def broken(engine, step, logs):
        if step >= 1:  # the replay at on_train_begin (step 0, nothing to replay) still works
            raise ZeroDivisionError("simulated bug in a rule")
        return observe(engine, step, logs)

    monkeypatch.setattr(Engine, "observe", broken)
    diagnoser = Diagnoser(stop_on=("exploding", "flat", "overfitting"))
    trainer = tiny_trainer("exploding", str(tmp_path), callbacks=[diagnoser], max_steps=30)
    with caplog.at_level(logging.WARNING, logger="trainwatch"):
        trainer.train()
    assert trainer.state.global_step == 30  # this run explodes at step 2, but monitoring was off
    assert diagnoser.disabled
    [error] = _internal_errors(caplog)
    assert "on_log" in error.getMessage() and "simulated bug" in error.getMessage()
    assert "monitoring is off, training goes on" in error.getMessage()


def test_error_in_the_preflight_turns_monitoring_off_not_training(tmp_path: Path, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise KeyError("simulated")

    monkeypatch.setattr(preflight, "check_warmup", broken)
    diagnoser = Diagnoser()
    trainer = tiny_trainer("healthy", str(tmp_path), callbacks=[diagnoser], max_steps=12)
    with caplog.at_level(logging.WARNING, logger="trainwatch"):
        trainer.train()
    assert trainer.state.global_step == 12 and diagnoser.disabled
    assert len(_internal_errors(caplog)) == 1


def test_an_unwritable_report_is_contained_and_leaves_what_is_there(tmp_path: Path, caplog) -> None:
    # Something of the user's sits where the report would go: it must survive, and so must the run.
    occupied = tmp_path / "trainwatch" / "diagnosis.json"
    occupied.mkdir(parents=True)
    (occupied / "keep.txt").write_text("mine")
    diagnoser = Diagnoser(stop_on=("exploding",))
    trainer = tiny_trainer("exploding", str(tmp_path), callbacks=[diagnoser])
    with caplog.at_level(logging.WARNING, logger="trainwatch"):
        trainer.train()
    assert diagnoser.disabled and len(_internal_errors(caplog)) == 1
    assert (occupied / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "trainwatch").iterdir()) == ["diagnosis.json"]  # no temp file left


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash; event file names carry a time stamp, so only count them."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = str(path.relative_to(root))
        name = re.sub(r"^runs/[^/]+/", "runs/RUN/", name)
        name = re.sub(r"events\.out\.tfevents\.[^/]*?(\.trainwatch)?$", r"events.out.tfevents\1", name)
        files[name] = hashlib.sha256(path.read_bytes()).hexdigest() if "tfevents" not in name else "events"
    return files


@pytest.mark.parametrize("scenario", ["healthy", "exploding"])
def test_user_files_are_never_deleted_or_overwritten(tmp_path: Path, scenario: str) -> None:
    settings = dict(max_steps=40, save_strategy="steps", save_steps=10)
    for run in ("without", "with"):
        root = tmp_path / run
        (root / "checkpoint-999").mkdir(parents=True)
        (root / "checkpoint-999" / "adapter_model.safetensors").write_bytes(b"an older run's weights")
        (root / "train.log").write_text("the user's own log\n")
        callbacks = [Diagnoser(stop_on=("exploding",))] if run == "with" else []
        tiny_trainer(scenario, str(root), callbacks=callbacks, seed=0, **settings).train()

    without, with_ = _snapshot(tmp_path / "without"), _snapshot(tmp_path / "with")
    ours = {name for name in with_ if name.startswith("trainwatch/") or name.endswith(".trainwatch")}
    assert ours == {"trainwatch/diagnosis.json", "runs/RUN/events.out.tfevents.trainwatch"}
    assert with_["checkpoint-999/adapter_model.safetensors"] == without["checkpoint-999/adapter_model.safetensors"]
    assert with_["train.log"] == without["train.log"]
    if scenario == "healthy":  # same run, same files: trainwatch only added its own
        assert set(with_) - ours == set(without)
    else:  # stopped early: every checkpoint it saved is still there, none was removed
        saved = {name.split("/")[0] for name in with_ if name.startswith("checkpoint-")}
        assert saved and saved <= {name.split("/")[0] for name in without}
        assert all(f"{c}/model.safetensors" in with_ for c in saved - {"checkpoint-999"})
