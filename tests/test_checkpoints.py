"""The checkpoint to go back to: saved before the failure began, and with finite weights where they are cheap to read.

Real tiny runs that go NaN (a masked batch makes a token-mean loss 0/0, and AdamW writes NaN into the weights)
while saving every step: the checkpoint saved at the onset step already holds the NaN update.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback, TrainingArguments

import trainwatch
from trainwatch import Diagnoser
from trainwatch.checkpoints import Choice, checkpoint_before, nonfinite_tensors
from trainwatch.testing import Progressions, tiny_model, tiny_trainer, token_mean_loss


def steps_of(output_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*"))


def poison(weights: Path) -> None:
    """Write a NaN into the first tensor of a safetensors file, as an update through inf weights leaves it."""
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})


class PoisonFrom(TrainerCallback):
    """Poison every checkpoint saved from ``step`` on: weights that blew up before the loss showed it."""

    def __init__(self, step: int, weights: str) -> None:
        self.step, self.weights = step, weights

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            poison(Path(args.output_dir) / f"checkpoint-{state.global_step}" / self.weights)


def lora_trainer(output_dir: Path, callbacks: list[TrainerCallback]) -> Trainer:
    """The "non_finite" scenario on a LoRA adapter: the checkpoints hold adapter_model.safetensors only."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=1, learning_rate=1e-2, max_steps=60, logging_steps=1,
        save_strategy="steps", save_steps=1, use_cpu=True, report_to=[], disable_tqdm=True, seed=0, data_seed=0,
    )
    return Trainer(
        model=model, args=args, train_dataset=Progressions(512, masked_fraction=0.03),
        compute_loss_func=token_mean_loss, callbacks=callbacks,
    )


def test_the_checkpoint_named_predates_the_onset_and_is_finite(tmp_path, caplog) -> None:
    diagnoser = Diagnoser(stop_on=["exploding"])
    trainer = tiny_trainer(
        "non_finite", str(tmp_path), callbacks=[diagnoser], report_to=[], save_strategy="steps", save_steps=1
    )
    with caplog.at_level(logging.WARNING, logger="trainwatch"):
        trainer.train()
    (finding,) = diagnoser.diagnoses
    onset = finding.evidence["onset_step"]
    assert finding.cause == "non_finite" and onset == finding.step >= 2
    # The run really left a poisoned checkpoint at the onset (saved right after the decision) and clean ones before.
    assert steps_of(tmp_path) == list(range(1, onset + 1))
    assert nonfinite_tensors(tmp_path / f"checkpoint-{onset}" / "model.safetensors")
    assert not nonfinite_tensors(tmp_path / f"checkpoint-{onset - 1}" / "model.safetensors")
    report = json.loads((tmp_path / "trainwatch" / "diagnosis.json").read_text())  # written at the end: all saved
    assert report["checkpoints_to_keep"]["exploding"] == str(tmp_path / f"checkpoint-{onset - 1}")
    good = tmp_path / f"checkpoint-{onset - 1}"
    assert f"checkpoint to go back to: {good} (weights checked: all finite)" in caplog.text
    # trainwatch analyze names the same one, from the logs of the latest (poisoned) checkpoint
    result = subprocess.run(
        [sys.executable, "-m", "trainwatch", "analyze", "--json", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    (analysed,) = map(json.loads, result.stdout.splitlines())  # JSON Lines: one object per run
    assert result.returncode == 1 and analysed["checkpoints_to_keep"] == report["checkpoints_to_keep"]


def test_a_poisoned_adapter_checkpoint_is_skipped_for_an_earlier_clean_one(tmp_path, caplog) -> None:
    diagnoser = Diagnoser(stop_on=["exploding"])
    trainer = lora_trainer(tmp_path, [PoisonFrom(2, "adapter_model.safetensors"), diagnoser])
    with caplog.at_level(logging.WARNING, logger="trainwatch"):
        trainer.train()
    (finding,) = diagnoser.diagnoses
    onset = finding.evidence["onset_step"]
    assert finding.cause == "non_finite" and onset >= 3, "the run must leave a poisoned checkpoint before its onset"
    assert {p.name for p in (tmp_path / "checkpoint-1").iterdir()} >= {"adapter_model.safetensors"}
    assert not (tmp_path / "checkpoint-1" / "model.safetensors").exists()
    report = json.loads((tmp_path / "trainwatch" / "diagnosis.json").read_text())
    assert report["checkpoints_to_keep"]["exploding"] == str(tmp_path / "checkpoint-1")
    advice = next(r.getMessage() for r in caplog.records if "checkpoint to go back to" in r.getMessage())
    assert f"checkpoint to go back to: {tmp_path / 'checkpoint-1'} (weights checked: all finite)" in advice
    assert f"skipped checkpoint-{onset - 1}: NaN/inf in 1 tensor(s) of adapter_model.safetensors" in advice
    assert "checkpoint-2: NaN/inf" in advice
    (analysed,) = trainwatch.analyze(tmp_path)
    assert analysed.checkpoints_to_keep == {"exploding": str(tmp_path / "checkpoint-1")}
    assert any(n.startswith("checkpoint to go back to after exploding: ") and "skipped" in n for n in analysed.notes)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A clean run saved at steps 2, 4 and 6 (a real model.safetensors in each)."""
    output_dir = tmp_path_factory.mktemp("saved")
    tiny_trainer("healthy", str(output_dir), report_to=[], max_steps=6, save_strategy="steps", save_steps=2).train()
    return output_dir


def test_walking_back_and_what_is_trusted(saved, tmp_path) -> None:
    import shutil

    output_dir = tmp_path / "run"
    shutil.copytree(saved, output_dir)
    assert checkpoint_before(output_dir, 6) == Choice(output_dir / "checkpoint-4", verified=True)
    assert checkpoint_before(output_dir, 6, inclusive=True).path == output_dir / "checkpoint-6"
    assert checkpoint_before(output_dir, 2) == Choice(None)
    poison(output_dir / "checkpoint-4" / "model.safetensors")
    choice = checkpoint_before(output_dir, 6)
    assert choice.path == output_dir / "checkpoint-2" and choice.verified
    assert choice.skipped == ("checkpoint-4: NaN/inf in 1 tensor(s) of model.safetensors (lm_head.weight)",)
    # A model file above max_bytes is not read: trusted on its step.
    assert checkpoint_before(output_dir, 6, max_bytes=1000) == Choice(output_dir / "checkpoint-4", verified=False)
    # A truncated file is no checkpoint to go back to either.
    weights = output_dir / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    choice = checkpoint_before(output_dir, 6)
    assert choice.path is None and len(choice.skipped) == 2 and "not a readable safetensors file" in choice.skipped[1]
    assert choice.advice().startswith("none (every earlier checkpoint is damaged); skipped checkpoint-4")
    assert checkpoint_before(tmp_path / "missing", 6) == Choice(None) and Choice(None).advice() == ""


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_non_finite_values_are_found_in_every_float_format(tmp_path, dtype) -> None:
    path = tmp_path / "w.safetensors"
    clean = torch.tensor([0.0, -1.5, 65000.0 if dtype == torch.float16 else 1e30], dtype=dtype)
    tensors = {"clean": clean, "ints": torch.tensor([-1, 2**31 - 1], dtype=torch.int32)}
    tensors |= {f"has_{v}": torch.tensor([1.0, float(v)], dtype=dtype) for v in ("nan", "inf", "-inf")}
    save_file(tensors, path)
    assert sorted(nonfinite_tensors(path)) == ["has_-inf", "has_inf", "has_nan"]
