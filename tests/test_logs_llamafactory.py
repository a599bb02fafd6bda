"""LLaMA-Factory's trainer_log.jsonl, written during real Trainer runs the way LLaMA-Factory's LogCallback writes it.

LLaMA-Factory cannot be installed here without its whole framework, so :class:`LlamaFactoryLog` is its
``LogCallback.on_log`` (src/llamafactory/train/callbacks.py, commit bdcb92d) with the web UI, thread pool and
timing left out: the same dict of the same keys from ``state.log_history[-1]``, None values dropped, appended as one
``json.dumps`` line per log call to ``<output_dir>/trainer_log.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import Trainer, TrainerCallback

from trainwatch.analysis import analyze
from trainwatch.logs import LogReadError
from trainwatch.logs.llamafactory import read_trainer_log
from trainwatch.testing import tiny_trainer


class LlamaFactoryLog(TrainerCallback):
    """LLaMA-Factory's LogCallback.on_log, as it writes trainer_log.jsonl."""

    def on_log(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        last = state.log_history[-1]
        logs = {
            "current_steps": state.global_step,
            "total_steps": state.max_steps,
            "loss": last.get("loss"),
            "eval_loss": last.get("eval_loss"),
            "predict_loss": last.get("predict_loss"),
            "reward": last.get("reward"),
            "accuracy": last.get("rewards/accuracies"),
            "lr": last.get("learning_rate"),
            "epoch": last.get("epoch"),
            "percentage": round(state.global_step / state.max_steps * 100, 2) if state.max_steps != 0 else 100,
            "elapsed_time": "0:00:01",
            "remaining_time": "0:00:01",
        }
        logs = {k: v for k, v in logs.items() if v is not None}
        with open(os.path.join(args.output_dir, "trainer_log.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(logs) + "\n")


def train(output_dir: Path, scenario: str, resume: str | None = None, **overrides) -> Trainer:
    trainer = tiny_trainer(scenario, str(output_dir), callbacks=[LlamaFactoryLog()], report_to=[], **overrides)
    logging.disable(logging.WARNING)
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        logging.disable(logging.NOTSET)
    return trainer


@pytest.fixture(scope="module")
def exploding(tmp_path_factory) -> Path:
    """A real run that explodes (lr 1.0, no clipping), with its trainer_log.jsonl and, as LLaMA-Factory saves it at
    the end, its trainer_state.json."""
    output_dir = tmp_path_factory.mktemp("exploding")
    train(output_dir, "exploding", max_steps=40, eval_strategy="steps", eval_steps=20).save_state()
    return output_dir


def test_the_log_gives_the_verdict_trainer_state_gives_without_a_grad_norm(exploding) -> None:
    log = exploding / "trainer_log.jsonl"
    run = read_trainer_log(log)
    assert run.facts.max_steps == 40  # total_steps: the planned total
    assert all("grad_norm" not in logs for _, logs in run.log_history)
    [from_log], [from_state] = analyze(log), analyze(exploding / "trainer_state.json")
    assert from_log.format == "llamafactory" and from_log.verdict == "exploding"
    assert [(f.kind, f.cause, f.step) for f in from_log.diagnoses] == [
        (f.kind, f.cause, f.step) for f in from_state.diagnoses
    ]
    assert any(n.startswith("no grad norm logged: the zero-gradient") for n in from_log.notes)
    assert not any("grad norm" in n for n in from_state.notes)
    # the output dir: its own trainer_state.json (saved at the end, with the grad norms) is read, the log named
    [report] = analyze(exploding)
    assert report.format == "trainer_state" and any("trainer_log.jsonl exists too" in n for n in report.notes)


def test_a_line_cut_off_mid_write_is_a_note(exploding, tmp_path) -> None:
    lines = (exploding / "trainer_log.jsonl").read_text().splitlines()[:-1]  # up to the last log with a signal
    cut = tmp_path / "trainer_log.jsonl"
    cut.write_text("\n".join(lines)[:-20])  # a crash: that last line half written
    run = read_trainer_log(cut)
    assert len(run.log_history) == len(lines) - 1
    assert any("cut off" in n and "skipped 1 line(s)" in n for n in run.notes)


def test_a_resumed_run_appends_and_the_later_lines_win(tmp_path) -> None:
    """Resumed from checkpoint-4 after 8 steps: LLaMA-Factory appends steps 5-8 again, and those count."""
    train(tmp_path, "healthy", max_steps=8, save_strategy="steps", save_steps=4, eval_strategy="no")
    first = (tmp_path / "trainer_log.jsonl").read_text().count("\n")
    train(
        tmp_path,
        "healthy",
        max_steps=12,
        save_strategy="steps",
        save_steps=4,
        eval_strategy="no",
        resume=str(tmp_path / "checkpoint-4"),
    )
    run = read_trainer_log(tmp_path / "trainer_log.jsonl")
    steps = [step for step, logs in run.log_history if "loss" in logs]
    assert first == 9 and steps == list(range(1, 13))
    assert any("logs again from step 5 (a resume): replaced 4 earlier entries" in n for n in run.notes)
    # found in its output dir beside Trainer's checkpoints, the log (complete) is read, not checkpoint-12's state
    [report] = analyze(tmp_path)
    assert report.format == "llamafactory" and any(
        "checkpoint-12/trainer_state.json exists too" in n for n in report.notes
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "no log entry yet"),
        (b'{"current_steps": 1, "loss": 2.0', "not a trainer_log.jsonl"),
        (b"\xff\xfe", "not a"),
    ],
)
def test_bad_input_is_one_line(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "trainer_log.jsonl"
    path.write_bytes(content)
    try:
        run = read_trainer_log(path)
    except LogReadError as error:
        assert message in str(error) and "\n" not in str(error)
    else:
        assert any(message in n for n in run.notes)


def test_cli_exit_codes(exploding, tmp_path) -> None:
    """1 for the failing run; 2 when nothing could be read; NaN losses as LogCallback writes them are read."""
    cli = [sys.executable, "-m", "trainwatch", "analyze"]
    assert (
        subprocess.run([*cli, str(exploding / "trainer_log.jsonl")], check=False, capture_output=True).returncode == 1
    )
    broken = tmp_path / "trainer_log.jsonl"
    broken.write_text("{not json\n")
    result = subprocess.run([*cli, str(broken)], check=False, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not a trainer_log.jsonl" in result.stderr
    broken.write_text(json.dumps({"current_steps": 1, "loss": math.nan, "lr": 1e-3}) + "\n")
    assert math.isnan(read_trainer_log(broken).log_history[0][1]["loss"])
