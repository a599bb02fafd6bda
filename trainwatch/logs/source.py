"""The run-source interface: what every log format gives ``analyze``, so that ``analyze`` never asks which it was.

A run read from disk is its facts (:class:`~trainwatch.history.Facts`: hyperparameters, vocab size, planned steps,
objective), its log entries in the order they were logged, ``(step, logs)`` with Trainer's own keys (``loss``,
``grad_norm``, ``learning_rate``, ``eval_loss``, ``epoch``, ...), the notes its reading left (damage, restarts,
which column was read as which signal) and its curves for plotting. TensorBoard streams its entries
(:class:`~trainwatch.logs.tensorboard.TensorBoardRun`); every other format is small enough to be read whole into a
:class:`LoggedRun`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from trainwatch.curves import Decimator
from trainwatch.history import EVAL_LOSS, LOSS, SIGNALS, Facts, tells_steps_per_epoch

Entry = tuple[int, dict[str, Any]]
Curves = dict[str, tuple[np.ndarray, np.ndarray]]
INT64 = (-(1 << 63), 1 << 63)
"""The steps every format can hold (an int64, as TensorBoard's and MLflow's); one beyond them is damage."""


class RunLog(Protocol):
    """One run read from disk, whatever its format."""

    facts: Facts
    notes: list[str]
    """Complete once :meth:`entries` has been iterated to its end (a streamed format counts what it dropped then)."""
    other_keys: dict[str, int]
    """Logged keys that are none of Trainer's signals, with their number of values (to say what a run logged
    instead, when it logged none of them)."""
    epoch_mark: tuple[int, float] | None
    """The first logged ``(step, epoch)`` that tells the steps per epoch: an epoch-based run's planned length."""

    def entries(self) -> Iterator[Entry]:
        """``(step, logs)`` per log call, in the order the run logged them, with Trainer's keys."""
        ...

    def curves(self) -> Curves:
        """Each signal's ``(steps, values)`` for plotting, decimated (:class:`~trainwatch.curves.Decimator`)."""
        ...


@dataclass
class LoggedRun:
    """A run read whole into memory: every format but TensorBoard's (logs of a fine-tuning run, not streamed)."""

    log_history: list[Entry]
    facts: Facts = field(default_factory=Facts)
    notes: list[str] = field(default_factory=list)

    @property
    def other_keys(self) -> dict[str, int]:
        return other_keys_of(self.log_history)

    @property
    def epoch_mark(self) -> tuple[int, float] | None:
        return epoch_mark_of(self.log_history)

    def entries(self) -> Iterator[Entry]:
        return iter(self.log_history)

    def curves(self) -> Curves:
        return curves_of(self.log_history)


def curves_of(log_history: Iterable[Entry]) -> Curves:
    """The curves of entries held in memory, decimated as TensorBoard's are, so every format plots alike."""
    points: dict[str, tuple[list[int], list[float]]] = {name: ([], []) for name in SIGNALS}
    for step, logs in log_history:
        for name in SIGNALS:
            if is_number(logs.get(name)):
                points[name][0].append(step)
                points[name][1].append(float(logs[name]))
    curves: Curves = {}
    for name, (steps, values) in points.items():
        decimator = Decimator()
        decimator.extend(np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64))
        curves[name] = decimator.curve()
    return curves


def epoch_mark_of(log_history: Iterable[Entry]) -> tuple[int, float] | None:
    """The first ``(step, epoch)`` of entries held in memory that tells the steps per epoch."""
    for step, logs in log_history:
        epoch = logs.get("epoch")
        if step > 0 and tells_steps_per_epoch(epoch):
            return step, float(epoch)
    return None


def other_keys_of(log_history: Iterable[Entry]) -> dict[str, int]:
    """How often each key that is none of Trainer's signals was logged."""
    counts: dict[str, int] = {}
    for _, logs in log_history:
        for key in logs:
            if key not in SIGNALS and key != "step":  # trainer_state.json keeps the step in each entry
                counts[key] = counts.get(key, 0) + 1
    return counts


def is_number(value: Any) -> bool:
    """An int or float as a log value: not a bool (JSON's ``true`` is no loss)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_step(value: Any) -> bool:
    """An integer step within int64."""
    return isinstance(value, int) and not isinstance(value, bool) and INT64[0] <= value < INT64[1]


def as_step(value: Any) -> int | None:
    """A step written as a number (``3``, ``3.0``, ``"3"``); None when it is not a whole number within int64."""
    if isinstance(value, str):
        try:
            value = float(value) if value.strip() else None
        except ValueError:
            return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return value if is_step(value) else None


def as_number(value: Any) -> float | None:
    """A log value written as a number or as its text (a CSV cell); None when it is not one."""
    if is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def without_replaced(entries: Iterable[Entry], where: str) -> tuple[list[Entry], list[str]]:
    """The entries a resumed run left, as the run that went on saw them, and a note per resume.

    A log that is appended to across a resume from a checkpoint (LLaMA-Factory's ``trainer_log.jsonl``) holds the
    steps after the checkpoint twice: a train loss at a step no later than the last one, or an eval loss at a step
    before the last one (``trainer.evaluate()`` after training evaluates the last step again: no resume), marks the
    resume, and the earlier entries from that step on are replaced by what follows, as TensorBoard's reader does.
    """
    kept: list[Entry] = []
    last = {LOSS: INT64[0], EVAL_LOSS: INT64[0]}
    notes = []
    for step, logs in entries:
        if (LOSS in logs and step <= last[LOSS]) or (EVAL_LOSS in logs and step < last[EVAL_LOSS]):
            dropped = 0
            while kept and kept[-1][0] >= step:
                kept.pop()
                dropped += 1
            notes.append(
                f"{where}: logs again from step {step} (a resume): replaced {dropped} earlier entr"
                f"{'y' if dropped == 1 else 'ies'}"
            )
            last = {key: max((s for s, e in kept if key in e), default=INT64[0]) for key in last}
        for key in last:
            if key in logs:
                last[key] = step
        kept.append((step, logs))
    return kept, notes


def grouped(values: Iterable[tuple[int, str, float]]) -> Iterator[Entry]:
    """Values logged one by one, ``(step, key, value)`` in order, as the entries Trainer's ``on_log`` saw: a new
    entry at a new step, between train and eval values, or when a key comes again (as TensorBoard's reader groups
    them). ``epoch``, logged beside train and eval values alike, joins the entry it comes with."""
    current: dict[str, Any] = {}
    current_step, current_eval = 0, None  # None: no train or eval value in the entry yet
    for step, key, value in values:
        is_eval = None if key == "epoch" else key.startswith("eval_")
        changed = is_eval is not None and current_eval is not None and is_eval != current_eval
        if current and (step != current_step or changed or (key in current and key != "epoch")):
            yield current_step, current
            current, current_eval = {}, None
        current_step = step
        current_eval = current_eval if is_eval is None else is_eval
        current[key] = value
    if current:
        yield current_step, current
