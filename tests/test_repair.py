"""Repair for real: failed runs go back to their last good checkpoint, take the first fix, and train on.

The reference run's ``--repair`` in a subprocess (exploding, and a cause no argument repairs), and the Python API
around a user's own LoRA Trainer (too low a learning rate, attempts used up, overfitting). Tiny runs, seconds each.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback, TrainingArguments

from trainwatch import train_with_repair
from trainwatch.checkpoints import nonfinite_tensors
from trainwatch.fixes import argument_changes, fixes_for
from trainwatch.repair import FAILED, REPAIRED
from trainwatch.testing import Progressions, pretrain, tiny_model

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
TINY = ["--disable_tqdm", "true", "--max_examples", "96", "--max_eval_examples", "8", "--logging_steps", "2"]
"""The reference run cut to 6 steps an epoch (18 in all), logged every 2 steps, evaluated and saved every 2."""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train several times faster on one thread than on two cores shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_run(*flags: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainwatch.train", *TINY, "--output_dir", str(out), *flags],
        check=False,
        cwd=out.parent,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_exploding_reference_run_is_repaired_at_the_usual_learning_rate(tmp_path):
    out = tmp_path / "run"
    result = reference_run("--scenario", "exploding", "--repair", out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    repair = read_json(out / "trainwatch" / "repair.json")
    original, attempt = repair["attempts"]
    assert (repair["status"], original["verdict"], attempt["verdict"]) == ("repaired", "exploding", "healthy")
    # the fix list's first fix, as printed: lr 100 is 500 000x too high, and at 10 or 1 it explodes too
    assert attempt["changes"] == {"learning_rate": [100.0, 0.0002], "max_grad_norm": [0.0, 0.3]}
    assert "learning_rate 100 → 0.0002" in original["failure"]["fixes"][0]
    # back to the newest checkpoint saved before the onset whose weights are finite, or the start; on to step 18
    onset = original["failure"]["evidence"]["onset_step"]
    start = attempt["start_step"]
    assert attempt["checkpoint"] == (str(out / f"checkpoint-{start}") if start else None) and start < onset
    assert attempt["output_dir"] == f"{out}-repair-1" and start + attempt["steps"] == 18
    assert all(math.isfinite(loss) for _, loss in attempt["eval_losses"])
    # the final model is the repaired run's, saved in its own folder; the original keeps its own report
    assert repair["final_model"] == f"{out}-repair-1"
    assert nonfinite_tensors(Path(repair["final_model"]) / "adapter_model.safetensors") == []
    assert not (out / "adapter_model.safetensors").exists()
    assert read_json(out / "trainwatch" / "diagnosis.json")["verdict"] == "exploding"
    # the repaired run's report says how it came to be, in diagnosis.json and in TensorBoard
    report = read_json(Path(f"{out}-repair-1") / "trainwatch" / "diagnosis.json")
    assert report["verdict"] == "healthy"
    assert report["context"][0].startswith(f"repair attempt 1 of {out}, begun from ")
    assert "learning_rate 100 → 0.0002, max_grad_norm 0 → 0.3" in report["context"][1]
    assert "learning_rate 100 → 0.0002" in tensorboard_text(Path(f"{out}-repair-1"))
    assert "trainwatch repair: repaired, final model in" in result.stdout
    assert f"attempt 1 ({out}-repair-1), from " in result.stdout and f"steps {start}–18, healthy" in result.stdout


def tensorboard_text(output_dir: Path) -> str:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = (output_dir / "runs").iterdir()
    events = EventAccumulator(str(run), size_guidance={"tensors": 0})
    events.Reload()
    return "".join(t.tensor_proto.string_val[0].decode() for t in events.Tensors("trainwatch/diagnosis/text_summary"))


def test_a_cause_no_argument_repairs_ends_with_its_diagnosis_and_exit_4(tmp_path):
    out = tmp_path / "masked"
    result = reference_run("--mask_response", "--repair", out=out)
    assert result.returncode == 4, result.stderr[-3000:]
    repair = read_json(out / "trainwatch" / "repair.json")
    assert repair["status"] == "unrepairable" and repair["exit_code"] == 4
    assert [a["verdict"] for a in repair["attempts"]] == ["flat"]
    assert "no argument change repairs no_target_tokens" in repair["story"][0]
    assert "fix 1. check the label masking" in result.stdout
    assert not Path(f"{out}-repair-1").exists()


# -- the Python API, around a user's own Trainer ----------------------------------------------------------------------
def lora_trainer(
    args: TrainingArguments, callbacks: tuple[TrainerCallback, ...] = (), train_size: int = 1024
) -> Trainer:
    """A user's setup: a LoRA on a small causal LM that knows part of its task (a large alpha, so that the usual LoRA
    rate, 2e-4, visibly moves a model this tiny within a few dozen steps)."""
    from peft import LoraConfig, get_peft_model

    base = pretrain(tiny_model(), 75)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=256, target_modules="all-linear", task_type="CAUSAL_LM"))
    return Trainer(
        model=model,
        args=args,
        callbacks=list(callbacks),
        train_dataset=Progressions(train_size),
        eval_dataset=Progressions(64, seed=1000),
    )


def full_trainer(args: TrainingArguments, train_size: int = 512) -> Trainer:
    """A user's full fine-tune of a small causal LM."""
    return Trainer(
        model=tiny_model(), args=args, train_dataset=Progressions(train_size), eval_dataset=Progressions(64, seed=1000)
    )


def tiny_args(output_dir: Path, **overrides) -> TrainingArguments:
    settings = {
        "per_device_train_batch_size": 8,
        "logging_steps": 1,
        "eval_strategy": "steps",
        "eval_steps": 20,
        "save_steps": 20,
        "use_cpu": True,
        "disable_tqdm": True,
        "report_to": [],
        **overrides,
    }
    return TrainingArguments(output_dir=str(output_dir), **settings)


class AdapterAtStart(TrainerCallback):
    """The adapter weights each attempt begins with."""

    def __init__(self) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.seen.append({k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k})


def test_too_low_a_learning_rate_goes_back_to_its_checkpoint_and_learns(tmp_path):
    start = AdapterAtStart()
    result = train_with_repair(
        lambda args: lora_trainer(args, (start,)), tiny_args(tmp_path / "run", learning_rate=1e-7, max_steps=80)
    )
    assert result.status == REPAIRED and result.exit_code == 0
    original, attempt = result.attempts
    assert (original.failure.cause, attempt.verdict) == ("lr_too_low", "healthy")
    assert attempt.changes == {"learning_rate": (1e-7, 2e-4)}
    # decided at step 50: the newest clean checkpoint by then is step 40; the attempt trains the 40 steps left
    assert (original.steps, attempt.checkpoint, attempt.start_step) == (50, str(tmp_path / "run" / "checkpoint-40"), 40)
    assert attempt.steps == 40 and result.trainer.args.learning_rate == 2e-4
    saved = load_file(tmp_path / "run" / "checkpoint-40" / "adapter_model.safetensors")
    began = start.seen[1]
    assert len(saved) == len(began) == 2 * 7 * 2  # lora_A and lora_B of 7 linear layers in each of 2 layers
    for name, tensor in saved.items():
        (loaded,) = [v for k, v in began.items() if k.replace(".default", "") == name]
        assert torch.equal(loaded, tensor), name
    assert any(name.endswith("lora_B.weight") and tensor.abs().sum() > 0 for name, tensor in saved.items())
    # the original did not move; the repaired attempt learned
    before = [loss for _, loss in original.eval_losses]
    after = [loss for _, loss in attempt.eval_losses]
    assert abs(before[-1] - before[0]) < 1e-3 * before[0] and after[-1] < 0.95 * before[-1]
    assert [step for step, _ in attempt.eval_losses] == [60, 80]  # on the original run's step axis
    assert result.final_model == str(tmp_path / "run-repair-1")
    assert (tmp_path / "run-repair-1" / "adapter_model.safetensors").is_file()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and modification time, but the repair's own report beside the original's."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != "repair.json"]
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def test_attempts_used_up_leave_every_run_in_its_own_folder_and_exit_1(tmp_path):
    original = tmp_path / "run"
    earlier = tmp_path / "run-repair-1"  # a folder an earlier repair left: never written into
    earlier.mkdir()
    (earlier / "keep.txt").write_text("mine")
    snapshots = []

    def build(args):
        if args.output_dir != str(original):  # the original has ended: its files must not change from here on
            snapshots.append(snapshot(original))
        return full_trainer(args)

    result = train_with_repair(build, tiny_args(original, learning_rate=100.0, max_grad_norm=0.0, max_steps=40))
    assert result.status == FAILED and result.exit_code == 1
    assert [a.verdict for a in result.attempts] == ["exploding"] * 3
    assert result.attempts[1].changes == {"learning_rate": (100.0, 10.0), "max_grad_norm": (0.0, 0.3)}
    assert result.attempts[2].changes == {"learning_rate": (10.0, 1.0)}  # clipping was on already
    assert [a.output_dir for a in result.attempts] == [
        str(original),
        str(tmp_path / "run-repair-2"),
        str(tmp_path / "run-repair-3"),
    ]
    assert (earlier / "keep.txt").read_text() == "mine" and len(list(earlier.iterdir())) == 1
    assert snapshots[0] == snapshots[1] == snapshot(original)
    assert [a["number"] for a in read_json(original / "trainwatch" / "repair.json")["attempts"]] == [0, 1, 2]
    assert "2 repair attempt(s) allowed, the failure remains" in result.story[-1]
    assert result.final_model is None


def test_overfitting_keeps_the_best_checkpoint_as_the_final_model(tmp_path):
    args = tiny_args(
        tmp_path / "run",
        learning_rate=5e-3,
        num_train_epochs=200,
        eval_steps=10,
        save_steps=10,
        load_best_model_at_end=True,
    )
    result = train_with_repair(lambda a: full_trainer(a, train_size=8), args)
    assert result.status == REPAIRED and len(result.attempts) == 1
    assert result.attempts[0].verdict == "overfitting"
    best = min(result.attempts[0].eval_losses, key=lambda pair: pair[1])
    assert result.final_model == str(tmp_path / "run" / f"checkpoint-{best[0]}")
    assert f"kept the best checkpoint, {result.final_model}" in result.story[0]


def test_overfitting_retrains_from_the_start_with_fewer_epochs_when_asked(tmp_path):
    args = tiny_args(tmp_path / "run", learning_rate=5e-3, num_train_epochs=200, eval_steps=10, save_steps=10)
    result = train_with_repair(lambda a: full_trainer(a, train_size=8), args, max_repairs=1, retrain_overfitting=True)
    original, attempt = result.attempts
    assert original.verdict == "overfitting"
    assert attempt.changes == {"num_train_epochs": (200.0, 66)} and (attempt.checkpoint, attempt.start_step) == (
        None,
        0,
    )
    assert attempt.planned_steps == 66 and attempt.output_dir == str(tmp_path / "run-repair-1")


@pytest.mark.parametrize(
    "cause, params, changes",
    [
        ("lr_too_high", {"learning_rate": 1.0, "max_grad_norm": 1.0}, {"learning_rate": 0.1, "max_grad_norm": 0.3}),
        (
            "non_finite",
            {"learning_rate": 100.0, "max_grad_norm": 0.0, "lora_r": 8},
            {"learning_rate": 2e-4, "max_grad_norm": 0.3},
        ),
        ("lr_too_high", {"learning_rate": 1e-3, "max_grad_norm": 0.3, "lora_r": 8}, {"learning_rate": 1e-4}),
        ("lr_too_low", {"learning_rate": 2e-7, "lora_r": 8}, {"learning_rate": 2e-4}),
        ("lr_too_low", {"learning_rate": 2e-6}, {"learning_rate": 2e-5}),
        ("widening_gap", {"num_train_epochs": 3.0, "max_steps": -1}, {"num_train_epochs": 1}),
        ("zero_gradients", {"learning_rate": 2e-4}, {}),
        ("no_target_tokens", {"learning_rate": 2e-4}, {}),
        ("frozen_layers", {"learning_rate": 2e-4}, {}),
    ],
)
def test_the_change_applied_is_the_one_the_fix_list_prints(cause, params, changes):
    assert argument_changes(cause, params) == changes
    text = " ".join(fixes_for(cause, params))
    for name, value in changes.items():
        assert re.search(rf"{name} {params[name]:g}( \(off\))? → {value:g}", text), text


@pytest.mark.parametrize(
    "flags, message", [(["--repair", "--sweep"], "--repair repairs one run"), (["--max_repairs", "-1"], "must be ≥ 0")]
)
def test_repair_flag_errors_are_one_line_exit_2(capsys, flags, message):
    from trainwatch.train import parse

    with pytest.raises(SystemExit) as stopped:
        parse([*flags, "--output_dir", "unused"])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_help_documents_repair_and_its_exit_status(capsys):
    from trainwatch.train import parse

    with pytest.raises(SystemExit) as stopped:
        parse(["--help"])
    assert stopped.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--repair", "--max_repairs", "--retrain_overfitting", "4 (--repair) a failure no argument change"):
        assert words in text, words
