"""``python -m trainwatch.train`` for real, in a subprocess, offline: the reference run, its failure scenarios, the
grid search, and the one-line errors. Sizes are reduced with the script's own flags so the file runs in minutes."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
QUIET = ["--disable_tqdm", "true"]


def train(*flags: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainwatch.train", *QUIET, *flags],
        cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout,
    )


def diagnosis(output_dir: Path) -> dict:
    return json.loads((output_dir / "trainwatch" / "diagnosis.json").read_text())


def test_reduced_default_run_is_healthy_and_says_so(tmp_path):
    out = tmp_path / "run"
    result = train("--output_dir", str(out), "--max_examples", "160", "--max_eval_examples", "16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "effective batch size 16 (per device 4 × accumulation 4 × devices 1)" in result.stdout
    assert "expected total steps 30 (160 examples // 16 × 3 epochs)" in result.stdout
    assert "trainwatch (30 steps" in result.stdout and "): healthy" in result.stdout
    assert diagnosis(out)["verdict"] == "healthy"
    state = json.loads(max(out.glob("checkpoint-*/trainer_state.json"), key=lambda p: p.stat().st_mtime).read_text())
    evals = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e]
    assert len(evals) >= 2 and evals[-1] < evals[0]
    assert list((out / "runs").rglob("events.out.tfevents.*")), "report_to=tensorboard wrote no event file"


@pytest.mark.parametrize(
    "scenario, kind, cause, fix",
    [
        ("exploding", "exploding", ("non_finite", "lr_too_high"), "lower the learning rate 10×"),
        ("flat", "flat", ("lr_too_low",), "raise the learning rate 10×"),
        ("overfitting", "overfitting", None, "more (or more varied) training data"),
    ],
)
def test_scenario_is_stopped_early_with_its_diagnosis_and_fixes(tmp_path, scenario, kind, cause, fix):
    out = tmp_path / scenario
    result = train("--scenario", scenario, "--output_dir", str(out), "--max_eval_examples", "32", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    report = diagnosis(out)
    assert report["verdict"] == kind
    assert report["stopped_by"]["kind"] == kind
    if cause:
        assert report["stopped_by"]["cause"] in cause
    assert f"stopped early by the Diagnoser: {kind}" in result.stdout
    assert "fix 1." in result.stdout and fix in result.stdout


def test_masked_responses_are_diagnosed_as_no_target_tokens(tmp_path):
    out = tmp_path / "masked"
    result = train(
        "--mask_response", "--output_dir", str(out), "--max_examples", "160", "--max_eval_examples", "16",
        "--logging_steps", "1", cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert diagnosis(out)["stopped_by"]["cause"] == "no_target_tokens"


def test_short_sweep_ranks_trials_and_names_the_best(tmp_path):
    out = tmp_path / "sweep"
    result = train(
        "--sweep", "--sweep_learning_rates", "2e-4", "2", "--sweep_lora_ranks", "4", "--sweep_max_steps", "20",
        "--max_examples", "320", "--max_eval_examples", "16", "--max_grad_norm", "0", "--logging_steps", "2",
        "--output_dir", str(out), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = json.loads((out / "sweep.json").read_text())
    assert [t["learning_rate"] for t in table["trials"]] == [2e-4, 2]
    assert table["best"]["learning_rate"] == 2e-4 and table["trials"][0]["diagnosis"] == "healthy"
    failed = table["trials"][1]
    assert failed["diagnosis"] == "exploding" and failed["stopped"] and failed["steps"] < 20, failed
    with (out / "sweep.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
    assert "best setting: learning_rate 0.0002, lora_r 4" in result.stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--no_such_flag", "1"], "not used by the HfArgumentParser"),
        (["--data", "missing.jsonl"], "missing.jsonl does not exist"),
        (["--data", "bad.jsonl"], r"bad.jsonl:2: not valid JSON"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, flags, message):
    (tmp_path / "bad.jsonl").write_text('{"instruction": "a", "response": "b"}\n{"instruction": \n')
    result = train(*flags, "--output_dir", str(tmp_path / "out"), cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and re.search(message, errors[0]), result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--learning_rate", "fast"], "invalid float value"),
        (["--scenario", "melting"], "invalid choice"),
        (["--stop_on", "boredom"], "unknown kind"),
        (["--eval_steps", "2.5"], "--eval_steps must be an integer"),
    ],
)
def test_flag_errors_are_one_line_exit_2_in_process(capsys, flags, message):
    """The same parser as the command, without paying a process start per case."""
    from trainwatch.train import parse

    with pytest.raises(SystemExit) as stopped:
        parse([*flags, "--output_dir", "unused"])
    assert stopped.value.code == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and re.search(message, stderr), stderr


def test_help_explains_the_run(tmp_path):
    result = train("--help", cwd=tmp_path, timeout=120)
    assert result.returncode == 0
    for words in ("--scenario", "--sweep", "--stop_on", "--lora_r", "--no_4bit", "exit status", "(default: 0.0002)"):
        assert words in result.stdout
