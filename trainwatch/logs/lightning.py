"""Lightning's ``metrics.csv`` (``CSVLogger``): one row per ``log_metrics`` call, sparse, with the user's own names.

Each row holds the step and the metrics of one call; train values, the learning rate (``LearningRateMonitor``) and
validation values come on separate rows with the other cells empty. Rows of one step are one entry, train and eval
apart, as Trainer logs them. Lightning has no fixed names, so the usual ones are mapped to Trainer's signals (the
first column found of each list below) and a note says which column was read as which signal; a signal with no
column is named as missing, never guessed. ``*_epoch`` columns are epoch means, not per-step values: left out.
Facts come from ``hparams.yaml`` beside it (``save_hyperparameters()``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import yaml

from trainwatch.history import EVAL_LOSS, GRAD_NORM, LEARNING_RATE, LOSS, Facts, objective_from_args
from trainwatch.logs import LogReadError
from trainwatch.logs.source import LoggedRun, as_number, as_step, grouped
from trainwatch.logs.trainer_state import hyperparameters_from_args, planned_steps, vocab_size_from_config

METRICS_FILE = "metrics.csv"
HPARAMS_FILE = "hparams.yaml"
COLUMNS = {
    LOSS: ("train_loss_step", "train/loss_step", "train_loss", "train/loss", "loss_step", "loss", "training_loss"),
    EVAL_LOSS: ("val_loss", "val/loss", "valid_loss", "validation_loss", "eval_loss", "eval/loss", "val_loss_epoch"),
    LEARNING_RATE: ("lr", "learning_rate", "train/lr", "train/learning_rate"),
    GRAD_NORM: ("grad_norm", "train/grad_norm", "grad_2.0_norm_total", "grad_norm_total", "gradient_norm"),
}
"""Per signal, the column names read as it, most specific first. ``lr-<optimizer>`` columns (LearningRateMonitor)
are read as the learning rate too, after these."""
HPARAM_NAMES = {"lr": "learning_rate"}
"""Hyperparameter names LightningModules use for what the fixes call otherwise."""


def read_metrics_csv(path: str | os.PathLike[str]) -> LoggedRun:
    """Read a Lightning ``metrics.csv`` and the ``hparams.yaml`` beside it; :class:`LogReadError` without a header."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except OSError as error:
        raise LogReadError(f"{path}: cannot read ({error.strerror or error})") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise LogReadError(f"{path}: not a CSV file ({error})") from None
    if not rows or "step" not in rows[0]:
        raise LogReadError(f"{path}: not a Lightning metrics.csv (no header row with a step column)")
    header = rows[0]
    chosen = _choose_columns(header)
    columns = [(index, chosen.get(name, name if name == "epoch" else None)) for index, name in enumerate(header)]
    step_at = header.index("step")
    values: list[tuple[int, str, float]] = []
    skipped = 0
    for row in rows[1:]:
        step = as_step(row[step_at]) if len(row) == len(header) else None
        if step is None:
            skipped += 1
            continue
        for index, key in columns:
            value = as_number(row[index]) if key and row[index] else None
            if value is not None:
                values.append((step, key, value))
    signals = sorted(chosen.items(), key=lambda item: list(COLUMNS).index(item[1]))
    notes = [f"{path}: read " + ", ".join(f"{column} as {signal}" for column, signal in signals)] if signals else []
    if skipped:
        notes.append(f"{path}: skipped {skipped} row(s) without a whole step or with the wrong number of cells")
    if LOSS not in chosen.values():
        others = [name for name in header if name not in chosen and name not in ("step", "epoch")]
        notes.append(
            f"{path}: no train loss column (none of {', '.join(COLUMNS[LOSS])}); "
            f"other columns: {', '.join(others[:8]) or 'none'}"
        )
    return LoggedRun(list(grouped(values)), _facts(path.parent / HPARAMS_FILE, notes), notes)


def _choose_columns(header: list[str]) -> dict[str, str]:
    """Column name -> Trainer's signal, the first match per signal."""
    chosen: dict[str, str] = {}
    for signal, names in COLUMNS.items():
        candidates = [n for n in names if n in header]
        if signal == LEARNING_RATE:
            candidates += [n for n in header if n.startswith("lr-")]
        if candidates:
            chosen[candidates[0]] = signal
    return chosen


def _facts(hparams: Path, notes: list[str]) -> Facts:
    """Hyperparameters and vocab size from ``hparams.yaml``, where the module saved them."""
    if not hparams.is_file():  # none saved (or not a regular file: a FIFO would block the read)
        return Facts()
    try:
        data: Any = yaml.safe_load(hparams.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as error:
        notes.append(f"{hparams}: not read ({type(error).__name__}): no hyperparameters")
        return Facts()
    if not isinstance(data, dict):
        return Facts()
    params = {HPARAM_NAMES.get(k, k): v for k, v in hyperparameters_from_args(data).items()}
    return Facts(
        vocab_size=vocab_size_from_config(data),
        hyperparameters=params,
        max_steps=planned_steps(params),
        objective=objective_from_args(data),
    )
