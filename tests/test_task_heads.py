"""A model that is no language model has a ``vocab_size`` too, and its loss says nothing of a uniform guess ln(vocab).

A wav2vec2 CTC fine-tune (its loss averaged over target lengths, as the Hugging Face recipe sets it) starts near
3 × ln 32 and falls steadily; a BERT regression head's mean squared error starts at 20 × ln 64. Both were called
"exploding" (worse than knowing nothing) at their first log. Real tiny Trainer runs, live and post-hoc from the
TensorBoard files Trainer wrote, with each model loaded from a checkpoint as a fine-tune loads its base (so its
config names its class) or built from its config (the live report then tells what the logs cannot), plus the rule
on class names alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
    Wav2Vec2Config,
    Wav2Vec2ForCTC,
)

from trainwatch import Diagnoser
from trainwatch.history import predicts_tokens


class Speech(torch.utils.data.Dataset):
    """Random 0.25 s clips and 12-character transcripts: nothing to learn but the characters' frequencies."""

    def __init__(self, size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.audio = torch.randn(size, 4000, generator=generator)
        self.text = torch.randint(3, 32, (size, 12), generator=generator)

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_values": self.audio[i], "labels": self.text[i]}


class Scores(torch.utils.data.Dataset):
    """Token sequences and a score around 8 ± 3 to regress."""

    def __init__(self, size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(5, 64, (size, 16), generator=generator)
        self.score = self.ids.float().mean(1) / 4 + 3 * torch.randn(size, generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.score[i]}


def ctc_model() -> Wav2Vec2ForCTC:
    return Wav2Vec2ForCTC(
        Wav2Vec2Config(
            vocab_size=32,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(32, 32, 32),
            conv_stride=(5, 4, 4),
            conv_kernel=(10, 4, 4),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            ctc_loss_reduction="mean",
            pad_token_id=0,
            mask_time_prob=0.0,
        )
    )


def regression_model() -> BertForSequenceClassification:
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=1,
            problem_type="regression",
        )
    )


def train(model: Any, data: torch.utils.data.Dataset, output_dir: Path, diagnoser: Diagnoser, **settings: Any) -> None:
    """A short Trainer run logging every 5 steps to TensorBoard, watched by ``diagnoser``."""
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=5,
        use_cpu=True,
        report_to=["tensorboard"],
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
        **settings,
    )
    Trainer(model=model, args=args, train_dataset=data, callbacks=[diagnoser]).train()


def analyzed(output_dir: Path) -> tuple[int, str, int | None]:
    """``trainwatch analyze --json`` on the run, in a subprocess: its exit code, verdict and vocabulary size."""
    result = subprocess.run(
        [sys.executable, "-m", "trainwatch", "analyze", "--json", str(output_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    [report] = map(json.loads, result.stdout.splitlines())
    return result.returncode, report["verdict"], report["facts"]["vocab_size"]


@pytest.mark.parametrize(
    ("build", "data"), [(ctc_model, Speech), (regression_model, Scores)], ids=["ctc", "regression"]
)
def test_a_task_heads_loss_is_not_judged_against_its_vocabulary(build, data, tmp_path: Path) -> None:
    torch.manual_seed(0)
    build().save_pretrained(tmp_path / "base")  # its config now names its class, as a hub checkpoint's does
    model = type(build()).from_pretrained(tmp_path / "base")
    output_dir = tmp_path / "run"
    diagnoser = Diagnoser(report=False)
    train(model, data(256), output_dir, diagnoser, max_steps=40, warmup_steps=5)
    history = diagnoser.engine.history
    assert history.facts.vocab_size is None
    assert diagnoser.verdict == "healthy", diagnoser.diagnoses
    assert history.series["loss"].first > 1.5 * torch.log(torch.tensor(float(model.config.vocab_size)))  # the trap

    assert analyzed(output_dir) == (0, "healthy", None)


def test_a_model_built_from_its_config_is_judged_post_hoc_as_it_was_live(tmp_path: Path) -> None:
    """Built from a config, the model names no class in TensorBoard's ``model_config`` (``architectures`` is null):
    only the live run knew it predicts no tokens, and its report says so."""
    torch.manual_seed(0)
    diagnoser = Diagnoser()
    train(ctc_model(), Speech(160), tmp_path, diagnoser, max_steps=20)
    assert diagnoser.verdict == "healthy"
    assert json.loads((tmp_path / "trainwatch" / "diagnosis.json").read_text())["facts"] == {"vocab_size": None}
    assert analyzed(tmp_path) == (0, "healthy", None)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["LlamaForCausalLM"], True),
        (["GPT2LMHeadModel"], True),
        (["T5ForConditionalGeneration"], True),
        (["WhisperForConditionalGeneration"], True),
        (["BertForMaskedLM"], True),
        (["PeftModelForCausalLM", "LlamaForCausalLM"], True),
        (["Wav2Vec2ForCTC"], False),
        (["Wav2Vec2ForPreTraining"], False),
        (["BertForSequenceClassification"], False),
        (["RobertaForTokenClassification"], False),
        (["PeftModel", "LlamaModel"], None),
        (["MyTransformer"], None),
        ([None], None),
    ],
)
def test_which_classes_predict_tokens(names, expected) -> None:
    assert predicts_tokens(names) is expected
