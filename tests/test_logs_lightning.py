"""Lightning's metrics.csv, written by a real tiny Lightning fit with CSVLogger and LearningRateMonitor."""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

import pytest
import torch

from trainwatch.analysis import analyze
from trainwatch.logs import LogReadError
from trainwatch.logs.lightning import read_metrics_csv
from trainwatch.testing import Progressions, tiny_model

L = pytest.importorskip("lightning", reason="the Lightning tests need lightning (pip install -e '.[test]')")


class TinyLM(L.LightningModule):
    """The tests' tiny causal LM, trained as a LightningModule would train it."""

    def __init__(self, lr: float = 3e-3, vocab_size: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = tiny_model()

    def training_step(self, batch, index):
        loss = self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, index):
        self.log("val_loss", self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


@pytest.fixture(scope="module")
def metrics_csv(tmp_path_factory) -> Path:
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    save_dir = tmp_path_factory.mktemp("lightning")
    trainer = L.Trainer(
        max_steps=20,
        val_check_interval=10,
        log_every_n_steps=1,
        logger=CSVLogger(save_dir),
        callbacks=[LearningRateMonitor("step")],
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    data = torch.utils.data.DataLoader(Progressions(512), batch_size=8)
    held_out = torch.utils.data.DataLoader(Progressions(32, seed=1000), batch_size=8)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TinyLM(), data, held_out)
    return save_dir / "lightning_logs" / "version_0" / "metrics.csv"


def test_sparse_rows_become_trainer_entries(metrics_csv: Path) -> None:
    run = read_metrics_csv(metrics_csv)
    train = [(step, logs) for step, logs in run.log_history if "loss" in logs]
    evals = [(step, logs) for step, logs in run.log_history if "eval_loss" in logs]
    assert len(train) == 20 and len(evals) == 2  # the lr row and the loss row of a step are one entry
    assert all(logs["learning_rate"] == 3e-3 for _, logs in train) and not any("loss" in e for _, e in evals)
    assert run.facts.vocab_size == 64 and run.facts.hyperparameters["learning_rate"] == 3e-3  # hparams.yaml
    assert run.notes == [
        f"{metrics_csv}: read train_loss_step as loss, val_loss as eval_loss, lr-AdamW as learning_rate"
    ]


def test_found_under_its_save_dir_and_judged(metrics_csv: Path) -> None:
    [report] = analyze(metrics_csv.parents[2])
    assert report.format == "lightning" and report.verdict == "healthy"
    assert report.history["loss"].last < report.history["loss"].first
    assert any(n.startswith("no grad norm logged") for n in report.notes)  # named, not guessed


def test_no_loss_column_is_a_note_and_not_judged(metrics_csv: Path, tmp_path: Path) -> None:
    rows = list(csv.reader(metrics_csv.open()))
    rows[0] = [{"train_loss_step": "my_objective", "val_loss": "my_val"}.get(c, c) for c in rows[0]]
    renamed = tmp_path / "metrics.csv"
    with renamed.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    [report] = analyze(renamed)
    assert report.verdict == "not judged" and report.error is None
    assert any("read lr-AdamW as learning_rate" in n for n in report.notes)
    assert any("no train loss column (none of train_loss_step" in n and "my_objective" in n for n in report.notes)
    assert any("no train loss logged" in n for n in report.notes)


@pytest.mark.parametrize(
    ("content", "message"), [("", "no header row"), ("a,b\n1,2\n", "no header row"), ("\x00", "no header row")]
)
def test_not_a_metrics_csv_is_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(content)
    with pytest.raises(LogReadError, match=message) as error:
        read_metrics_csv(path)
    assert "\n" not in str(error.value)
