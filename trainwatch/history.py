"""The signals of one run, summarised in O(1) memory.

A run of a million optimizer steps must cost the same to watch as one of a hundred, so nothing here keeps the
whole series: each signal keeps its extremes, its last values and the few derived quantities the rules ask about.
Both feeders (the live callback and the log readers) call :meth:`History.record` with Trainer's own log keys, so
the same series always leaves the same History behind.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

LOSS = "loss"
GRAD_NORM = "grad_norm"
LEARNING_RATE = "learning_rate"
EVAL_LOSS = "eval_loss"
SIGNALS = (LOSS, GRAD_NORM, LEARNING_RATE, EVAL_LOSS)


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@dataclass
class Facts:
    """What is known about the run besides its curves: used to judge (vocab size) and to make fixes concrete."""

    vocab_size: int | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """TrainingArguments fields plus ``lora_r``, ``lora_alpha``, ``lora_dropout`` where known."""

    @cached_property
    def uniform_loss(self) -> float | None:
        """Cross-entropy of a uniform guess over the vocabulary: a language model above it knows nothing."""
        return math.log(self.vocab_size) if self.vocab_size and self.vocab_size > 1 else None


@dataclass(slots=True)
class Series:
    """One signal: first and last values, finite extremes, and how many values were not finite."""

    count: int = 0
    first: float | None = None
    first_step: int | None = None
    last: float | None = None
    last_step: int | None = None
    min: float | None = None
    min_step: int | None = None
    max: float | None = None
    max_step: int | None = None
    nonfinite: int = 0
    first_nonfinite_step: int | None = None
    positive_seen: bool = False
    """A finite value > 0 was seen: a loss that never had one was never computed on a single target token."""

    def add(self, step: int, value: float) -> None:
        self.count += 1
        if self.first_step is None:
            self.first, self.first_step = value, step
        self.last, self.last_step = value, step
        if not math.isfinite(value):
            self.nonfinite += 1
            if self.first_nonfinite_step is None:
                self.first_nonfinite_step = step
            return
        self.positive_seen = self.positive_seen or value > 0
        if self.min is None or value < self.min:
            self.min, self.min_step = value, step
        if self.max is None or value > self.max:
            self.max, self.max_step = value, step


@dataclass(slots=True)
class EvalPoint:
    """One evaluation, with the smoothed train loss at the same moment, so the gap can be followed."""

    step: int
    loss: float
    train_level: float | None


class History:
    """Everything the rules may ask about one run.

    Args:
        smoothing: how many of the last finite train losses make the smoothed *level* (their median); a median of
            three ignores one odd batch without delaying a real trend by more than one log.
        eval_window: how many recent evaluations are kept with their train level.
    """

    def __init__(self, smoothing: int = 3, eval_window: int = 16, facts: Facts | None = None) -> None:
        self.smoothing = smoothing
        self.facts = facts or Facts()
        self.step = 0
        self.series: dict[str, Series] = {name: Series() for name in SIGNALS}
        self.recent_losses: deque[float] = deque(maxlen=smoothing)
        self.loss_level: float | None = None
        """The median of the last ``smoothing`` finite train losses."""
        self.sustained_loss: float | None = None
        """The lowest of the last ``smoothing`` train losses: what the loss has been at least, every time, lately.
        A rise that shows here has lasted; intermittent spikes (long or odd batches) never reach it."""
        self.never_a_loss = True
        """No loss was ever computed: every train loss 0.0 or NaN, and no positive grad norm beside it. That is what
        Trainer logs when every label is -100 (0/0 is NaN, which its NaN filter logs as 0.0)."""
        self.loss_is_nonnegative = True
        """Cross-entropy-like: the ratio rules only make sense for a loss that is never negative (not DPO/RL)."""
        self.latest: dict[str, float] = {}
        """The signals of the last entry recorded: a rule whose inputs it did not touch has nothing new to decide."""
        self.loss_start: float | None = None
        self.loss_floor: float | None = None
        self.loss_floor_step: int | None = None
        self.plateau_step: int | None = None
        """Step from which the loss is judged for flatness: the first loss once the learning rate stopped rising."""
        self.plateau_level: float | None = None
        self.plateau_logs = 0
        """Finite train losses logged since ``plateau_step``: flatness needs enough of them, not just enough steps."""
        self.largest_move = 0.0
        """Largest relative move of the loss level from its start or its plateau reference: has it ever moved?"""
        self.lr_rising = False
        self.zero_grad_since: int | None = None
        """Step of the last non-zero gradient norm before the current run of exact zeros (None: not in one)."""
        self.last_nonzero_grad_step = 0
        self.zero_grad_logs = 0
        """Consecutive grad-norm observations of exactly 0.0."""
        self.zero_grad_level: float | None = None
        """The loss level when the current run of zero grad norms began: real zero gradients leave it unchanged."""
        self.evals: deque[EvalPoint] = deque(maxlen=eval_window)
        self.best_eval: float | None = None
        self.best_eval_step: int | None = None
        self.best_eval_train_level: float | None = None
        """The smoothed train loss when the eval loss was at its best: how far training went on from there."""
        self.eval_start: float | None = None
        self.eval_largest_move = 0.0

    def __getitem__(self, signal: str) -> Series:
        return self.series[signal]

    def record(self, step: int, logs: Mapping[str, Any]) -> bool:
        """Add one log entry (Trainer's keys); returns whether it carried any signal the rules read.

        It runs on every logged step, between torch's passes, where each object and function it touches is a cache
        miss: hence the few calls. It is most of what watching costs (``docs/benchmarks.md``, overhead).
        """
        values: dict[str, float] = {}
        for key, value in logs.items():  # not a comprehension: before Python 3.12 that is one more function call
            if key in SIGNALS and isinstance(value, (int, float)):
                values[key] = float(value)
        if not values:
            return False
        self.latest = values
        if step > self.step:
            self.step = step
        series = self.series
        lr = values.get(LEARNING_RATE)
        if lr is not None:
            previous = series[LEARNING_RATE].last
            self.lr_rising = previous is not None and math.isfinite(previous) and lr > previous
            if self.lr_rising:
                self.plateau_step = None  # still warming up: flatness is judged from the peak on
        for name, value in values.items():
            series[name].add(step, value)
        grad_norm = values.get(GRAD_NORM)
        if grad_norm is not None:
            self._record_grad_norm(step, grad_norm)
        loss = values.get(LOSS)
        if loss is not None and math.isfinite(loss):
            self._record_loss(step, loss)
        eval_loss = values.get(EVAL_LOSS)
        if eval_loss is not None and math.isfinite(eval_loss):
            self._record_eval(step, eval_loss)
        low, high = series[LOSS].min, series[LOSS].max
        self.never_a_loss = low in (None, 0.0) and high in (None, 0.0) and not series[GRAD_NORM].positive_seen
        self.loss_is_nonnegative = low is None or low >= 0
        return True

    def _record_grad_norm(self, step: int, value: float) -> None:
        if value == 0.0:
            if self.zero_grad_since is None:
                self.zero_grad_since, self.zero_grad_level = self.last_nonzero_grad_step, self.loss_level
            self.zero_grad_logs += 1
        else:
            self.zero_grad_since, self.zero_grad_level, self.zero_grad_logs = None, None, 0
            self.last_nonzero_grad_step = step

    def _record_loss(self, step: int, value: float) -> None:
        """A finite train loss: the smoothed level and everything measured from it."""
        recent = self.recent_losses
        recent.append(value)
        self.loss_level = level = _median(recent)
        self.sustained_loss = min(recent) if len(recent) == self.smoothing else None
        if self.loss_start is None:
            self.loss_start = value
        if self.loss_floor is None or level < self.loss_floor:
            self.loss_floor, self.loss_floor_step = level, step
        if self.zero_grad_since is not None and self.zero_grad_level is None:
            self.zero_grad_level = level  # the zeros began with the run: compare with its first level
        if self.plateau_step is None:
            self.plateau_step, self.plateau_level, self.plateau_logs = step, level, 0
        self.plateau_logs += 1
        start, plateau = self.loss_start, self.plateau_level
        move = max(abs(level / start - 1.0) if start else 0.0, abs(level / plateau - 1.0) if plateau else 0.0)
        if move > self.largest_move:
            self.largest_move = move

    def _record_eval(self, step: int, value: float) -> None:
        """A finite eval loss, kept with the train level of the same moment."""
        self.evals.append(EvalPoint(step, value, self.loss_level))
        if self.best_eval is None or value < self.best_eval:
            self.best_eval, self.best_eval_step, self.best_eval_train_level = value, step, self.loss_level
        if self.eval_start is None:
            self.eval_start = value
        self.eval_largest_move = max(self.eval_largest_move, _relative_move(value, self.eval_start))

    def state_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot of everything the rules read (NaN allowed): to compare two histories, or to debug."""
        state = {k: v for k, v in vars(self).items() if k not in ("series", "recent_losses", "evals", "facts")}
        state["series"] = {name: asdict(s) for name, s in self.series.items()}
        state["recent_losses"] = list(self.recent_losses)
        state["evals"] = [asdict(e) for e in self.evals]
        state["eval_window"] = self.evals.maxlen
        state["facts"] = {"vocab_size": self.facts.vocab_size, "hyperparameters": dict(self.facts.hyperparameters)}
        return state


def _median(values: deque[float]) -> float:
    """``statistics.median`` without its generality: this runs on every logged step."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _relative_move(value: float, reference: float | None) -> float:
    if reference is None or reference == 0:
        return 0.0
    return abs(value / reference - 1.0)
