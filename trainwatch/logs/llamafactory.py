"""LLaMA-Factory's ``trainer_log.jsonl``: one JSON line per Trainer ``on_log``, appended as the run goes.

Its ``LogCallback`` (``src/llamafactory/train/callbacks.py``) writes, per log call, ``json.dumps`` of
``current_steps`` (the global step), ``total_steps`` (the planned total, Trainer's ``state.max_steps``), ``loss``,
``eval_loss``, ``lr``, ``epoch``, ``reward``, ``accuracy`` (DPO's ``rewards/accuracies``), progress and timing, with
the keys whose value is None left out. It keeps no grad norm: the rules that read it say what they skipped.

The file is appended to across a resume (unless the output dir is overwritten), so a resumed run logs the steps after
its checkpoint twice: the later lines win. A line cut off by a crash, or damaged, is skipped with a note. Facts come
from ``total_steps`` and from the output dir: ``config.json``/``adapter_config.json`` as for trainer_state.json, and
the ``training_args.yaml`` LLaMA-Factory's web UI saves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from trainwatch.history import Facts
from trainwatch.logs import LogReadError
from trainwatch.logs.source import Entry, LoggedRun, as_step, is_number, without_replaced
from trainwatch.logs.trainer_state import facts_beside, hyperparameters_from_args

TRAINER_LOG = "trainer_log.jsonl"
TRAINING_ARGS = "training_args.yaml"
KEYS = {
    "loss": "loss",
    "eval_loss": "eval_loss",
    "lr": "learning_rate",
    "epoch": "epoch",
    "reward": "reward",
    "accuracy": "rewards/accuracies",
    "predict_loss": "predict_loss",
}
"""LogCallback's keys and the Trainer log keys they were read from."""
YAML_NAMES = {"lora_rank": "lora_r"}
"""LLaMA-Factory argument names that the fixes know by another name."""


def read_trainer_log(path: str | os.PathLike[str]) -> LoggedRun:
    """Read a ``trainer_log.jsonl`` and the facts beside it; :class:`LogReadError` when no line is a log entry."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except OSError as error:
        raise LogReadError(f"{path}: cannot read ({error.strerror or error})") from None
    log_history: list[Entry] = []
    skipped: list[int] = []
    total_steps = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _record(line)
        step = as_step(record.get("current_steps")) if record is not None else None
        if record is None or step is None:
            skipped.append(number)
            continue
        if as_step(record.get("total_steps")):
            total_steps = as_step(record["total_steps"])
        logs = {ours: record[theirs] for theirs, ours in KEYS.items() if is_number(record.get(theirs))}
        if any(key in logs for key in ("loss", "eval_loss", "learning_rate")):
            log_history.append((step, logs))
    if not log_history and skipped:
        raise LogReadError(f"{path}: not a trainer_log.jsonl (no line is a log entry with current_steps)")
    log_history, notes = without_replaced(log_history, str(path))
    if skipped:
        cut = " (the last one cut off: the run stopped mid-write)" if skipped[-1] == len(lines) else ""
        which = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        notes.insert(0, f"{path}: skipped {len(skipped)} line(s) that are not a log entry: line {which}{cut}")
    if not log_history:
        notes.append(f"{path}: no log entry yet (the run stopped before its first log)")
    return LoggedRun(log_history, _facts(path.parent, total_steps), notes)


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)  # Python's json reads the NaN/Infinity that json.dumps wrote
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _facts(output_dir: Path, total_steps: int | None) -> Facts:
    """The output dir's model and adapter configs, the web UI's arguments, and the planned total of steps."""
    facts = facts_beside(output_dir)
    params = dict(facts.hyperparameters)
    try:
        path = output_dir / TRAINING_ARGS
        args = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        args = None
    if isinstance(args, dict):
        params.update({YAML_NAMES.get(k, k): v for k, v in hyperparameters_from_args(args).items()})
    return Facts(
        vocab_size=facts.vocab_size,
        hyperparameters=params,
        max_steps=total_steps if total_steps and total_steps > 0 else facts.max_steps,
        objective=facts.objective,
    )
