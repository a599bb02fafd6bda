"""The signals of one run, summarised in O(1) memory.

A run of a million optimizer steps must cost the same to watch as one of a hundred, so nothing here keeps the
whole series: each signal keeps its extremes, its last values and the few derived quantities the rules ask about.
Both feeders (the live callback and the log readers) call :meth:`History.record` with Trainer's own log keys, so
the same series always leaves the same History behind.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

LOSS = "loss"
GRAD_NORM = "grad_norm"
LEARNING_RATE = "learning_rate"
EVAL_LOSS = "eval_loss"
SIGNALS = (LOSS, GRAD_NORM, LEARNING_RATE, EVAL_LOSS)


class Signals(dict):
    """A log entry of Trainer's signals only, each a float, as a log reader makes it: :meth:`History.record` takes
    it as it is, without sorting out the keys a live entry also carries (epoch, runtimes, ...) one by one."""


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def hidden_nan(loss: float | None, grad_norm: float | None) -> bool:
    """A loss of exactly 0.0 logged beside a non-finite grad norm: NaN steps hidden by Trainer's
    ``logging_nan_inf_filter``, which logs a window of them as 0.0."""
    return loss == 0.0 and grad_norm is not None and not math.isfinite(grad_norm)


PREFERENCE, REINFORCEMENT = "preference", "reinforcement"
"""What a run's loss is when it is not a per-token cross-entropy (``Facts.objective`` None: Trainer, SFT): a pairwise
preference loss (DPO and its kin, reward models: ``-log σ(margin)``, ln 2 at the start) or an RL objective (GRPO,
RLOO, PPO: a surrogate around 0 that says nothing of progress on its own)."""
OBJECTIVE_KEYS = {
    "rewards/margins": PREFERENCE,
    "rewards/accuracies": PREFERENCE,
    "logps/chosen": PREFERENCE,
    "mean_reward": PREFERENCE,  # TRL's RewardTrainer: a pairwise loss too
    "min_reward": PREFERENCE,
    "reward_std": REINFORCEMENT,
    "frac_reward_zero_std": REINFORCEMENT,
    "completions/mean_length": REINFORCEMENT,
}
"""Log keys only one kind of trainer writes (TRL's), for a run whose arguments are unknown (a bare trainer_state)."""
EVAL_ACCURACY_KEYS = ("eval_rewards/accuracies", "eval_accuracy")
"""A preference run's held-out accuracy (DPO's chosen-over-rejected rate, a reward model's): its real progress."""


def objective_from_args(args: Mapping[str, Any]) -> str | None:
    """The objective a trainer's config implies by the fields only it has (TRL's GRPOConfig, DPOConfig, ...)."""
    if "num_generations" in args:
        return REINFORCEMENT
    if "center_rewards_coefficient" in args or ("beta" in args and ("loss_type" in args or "rpo_alpha" in args)):
        return PREFERENCE
    return None


TOKEN_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForMaskedLM", "WithLMHead")
"""Transformers' model classes whose loss is a cross-entropy over the vocabulary: causal, masked and seq2seq
language models (``LlamaForCausalLM``, ``GPT2LMHeadModel``, ``T5ForConditionalGeneration``, ``BertForMaskedLM``,
PEFT's ``PeftModelForCausalLM``)."""
_TASK_HEAD = re.compile(r"For[A-Z]")


def predicts_tokens(architectures: Iterable[Any]) -> bool | None:
    """Whether a model's loss is a cross-entropy over its vocabulary, told by its class names (``<Model>For<Task>``):
    True for a language-model head (:data:`TOKEN_HEADS`); False for any other task head (sequence classification or
    regression, CTC, question answering, ...), whose config's ``vocab_size`` says nothing of its loss (a CTC loss
    averaged over target lengths starts near 3 × ln 32); None when no name tells (a bare or custom model)."""
    names = [name for name in architectures if isinstance(name, str)]
    if any(head in name for name in names for head in TOKEN_HEADS):
        return True
    if any(_TASK_HEAD.search(name) for name in names):
        return False
    return None


def _positive(value: Any) -> bool:
    """A finite number > 0 as a logged or configured value (not a bool: JSON's ``true`` is no count)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def tells_steps_per_epoch(epoch: Any) -> bool:
    """Whether a logged epoch (the fraction of the run's epochs done) gives the steps per epoch to within a few
    percent: any epoch > 0, except one rounded to two decimals below 0.1 (older Trainers round it: 0.01 is
    ±50 %)."""
    return _positive(epoch) and (epoch >= 0.1 or abs(epoch - round(epoch, 2)) > 1e-6)


def planned_from_epoch(num_train_epochs: Any, step: int, epoch: float) -> int | None:
    """An epoch-based run's planned optimizer steps, ``num_train_epochs`` × ``step / epoch``: Trainer's own
    ``max_steps``, which the live callback is given and its arguments hold only as -1. None without a number of
    epochs or from a pair that does not tell (:func:`tells_steps_per_epoch`)."""
    if not _positive(num_train_epochs) or step <= 0 or not tells_steps_per_epoch(epoch):
        return None
    return round(num_train_epochs * step / epoch)


@dataclass
class Facts:
    """What is known about the run besides its curves: used to judge (vocab size, objective, planned length) and to
    make fixes concrete."""

    vocab_size: int | None = None
    """The vocabulary a language model predicts over (None for any other model: :func:`predicts_tokens`)."""
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """TrainingArguments fields plus ``lora_r``, ``lora_alpha``, ``lora_dropout`` where known."""
    max_steps: int | None = None
    """The optimizer steps the run plans to take: "very slowly declining" is judged against how far the loss would
    get by then at its measured rate."""
    objective: str | None = None
    """None (a per-token cross-entropy), :data:`PREFERENCE` or :data:`REINFORCEMENT`; from the arguments when not
    given, else from the first log entry whose keys tell (:data:`OBJECTIVE_KEYS`)."""

    def __post_init__(self) -> None:
        if self.objective is None:
            self.objective = objective_from_args(self.hyperparameters)

    @property
    def loss_scaler(self) -> bool | None:
        """Whether fp16 loss scaling (which skips steps with non-finite gradients) is on; None when unknown."""
        fp16 = self.hyperparameters.get("fp16")
        return fp16 if isinstance(fp16, bool) else None

    @property
    def reference_loss(self) -> float | None:
        """The loss of a model that knows nothing: ln(vocab) for a token cross-entropy (a uniform guess), ln 2 for
        a preference loss (a coin toss between chosen and rejected), none for an RL objective."""
        if self.objective == PREFERENCE:
            return math.log(2)
        if self.objective == REINFORCEMENT or not self.vocab_size or self.vocab_size < 2:
            return None
        return math.log(self.vocab_size)

    @property
    def reference_name(self) -> str:
        return "a coin toss ln 2 between chosen and rejected" if self.objective == PREFERENCE else "a uniform guess ln(vocab)"


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
class Trend:
    """The least-squares line through ``(step, value)`` points, from running sums: O(1) memory, a few flops a point.

    What the flat rule asks of a noisy curve: how fast it moves (the slope), how sure that is (the slope's standard
    error, from the residuals' own scatter) and its mean level. Curvature counts as scatter, which only makes a
    decision more cautious. Sums are kept relative to the first point, so a million steps lose no precision.
    """

    n: int = 0
    x0: float = 0.0
    y0: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    syy: float = 0.0
    last_x: float = 0.0

    def add(self, x: float, y: float) -> None:
        if self.n == 0:
            self.x0, self.y0 = x, y
        self.n += 1
        self.last_x = x
        x -= self.x0
        y -= self.y0
        self.sx += x
        self.sy += y
        self.sxx += x * x
        self.sxy += x * y
        self.syy += y * y

    @property
    def span(self) -> float:
        """Steps between the first and the last point."""
        return self.last_x - self.x0 if self.n else 0.0

    @property
    def mean(self) -> float:
        return self.y0 + self.sy / self.n if self.n else math.nan

    def fit(self) -> tuple[float, float, float]:
        """``(slope, its standard error, the points' scatter around the line)``; the last two are inf below 3 points."""
        n = self.n
        cxx = self.sxx - self.sx * self.sx / n if n else 0.0
        if n < 2 or cxx <= 0:
            return 0.0, math.inf, math.inf
        cxy = self.sxy - self.sx * self.sy / n
        slope = cxy / cxx
        if n < 3:
            return slope, math.inf, math.inf
        scatter = math.sqrt(max(0.0, self.syy - self.sy * self.sy / n - slope * cxy) / (n - 2))
        return slope, scatter / math.sqrt(cxx), scatter


@dataclass(slots=True)
class EvalPoint:
    """One evaluation, with the smoothed train loss at the same moment, so the gap can be followed."""

    step: int
    loss: float
    train_level: float | None
    accuracy: float | None = None
    """A preference run's eval accuracy (:data:`EVAL_ACCURACY_KEYS`), where logged."""


class History:
    """Everything the rules may ask about one run.

    Args:
        smoothing: how many of the last finite train losses make the smoothed *level* (their median); a median of
            three ignores one odd batch without delaying a real trend by more than one log.
        eval_window: how many recent evaluations are kept with their train level.
        noise_window: how many recent train losses are kept to measure their noise.
    """

    def __init__(
        self, smoothing: int = 3, eval_window: int = 16, facts: Facts | None = None, noise_window: int = 16
    ) -> None:
        self.smoothing = smoothing
        self.facts = facts or Facts()
        self.step = 0
        self.series: dict[str, Series] = {name: Series() for name in SIGNALS}
        self.recent_losses: deque[float] = deque(maxlen=smoothing)
        self.loss_window: deque[float] = deque(maxlen=max(noise_window, smoothing))
        """The last finite train losses, for their noise (:func:`noise_scale`)."""
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
        self.loss_trend = Trend()
        """The train losses since ``plateau_step``: their line and scatter."""
        self.eval_trend = Trend()
        """The eval losses since ``plateau_step``."""
        self.lr_rising = False
        self.zero_grad_since: int | None = None
        """Step of the last non-zero gradient norm before the current run of exact zeros (None: not in one)."""
        self.last_nonzero_grad_step = 0
        self.zero_grad_logs = 0
        """Consecutive grad-norm observations of exactly 0.0."""
        self.zero_grad_level: float | None = None
        """The loss level when the current run of zero grad norms began: real zero gradients leave it unchanged."""
        self.nonfinite_grad_logs = 0
        """Consecutive grad-norm observations that were NaN/inf: an fp16 loss scaler skips one step, not many."""
        self.nonfinite_grad_since: int | None = None
        """Step of the first of those."""
        self.evals: deque[EvalPoint] = deque(maxlen=eval_window)
        self.best_eval: float | None = None
        self.best_eval_step: int | None = None
        self.best_eval_train_level: float | None = None
        """The smoothed train loss when the eval loss was at its best: how far training went on from there."""
        self.best_eval_accuracy: float | None = None
        """A preference run's eval accuracy at that evaluation."""
        self.rising_evals = 0
        """Consecutive evaluations, up to the last, each higher than the one before."""
        self.eval_excursion = 0.0
        """How far the eval loss has risen above its best since that best (its highest point minus the best)."""
        self.eval_recovered = 0.0
        """The largest such excursion the eval loss came back from (to a new best): its own noise, seen whole."""

    def __getitem__(self, signal: str) -> Series:
        return self.series[signal]

    def record(self, step: int, logs: Mapping[str, Any]) -> bool:
        """Add one log entry (Trainer's keys); returns whether it carried any signal the rules read.

        It runs on every logged step, between torch's passes, where each object and function it touches is a cache
        miss: hence the few calls. It is most of what watching costs (``docs/benchmarks.md``, overhead).
        """
        if type(logs) is Signals:
            values: dict[str, float] = logs
        else:
            values = {}
            for key, value in logs.items():  # not a comprehension: before Python 3.12 that is one more function call
                if key in SIGNALS and isinstance(value, (int, float)):
                    values[key] = float(value)
                elif key in OBJECTIVE_KEYS and self.facts.objective is None:
                    self.facts.objective = OBJECTIVE_KEYS[key]
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
            self._record_eval(step, eval_loss, _eval_accuracy(logs))
        low, high = series[LOSS].min, series[LOSS].max
        self.never_a_loss = low in (None, 0.0) and high in (None, 0.0) and not series[GRAD_NORM].positive_seen
        self.loss_is_nonnegative = low is None or low >= 0
        return True

    def _record_grad_norm(self, step: int, value: float) -> None:
        if math.isfinite(value):
            self.nonfinite_grad_logs, self.nonfinite_grad_since = 0, None
        else:
            self.nonfinite_grad_logs += 1
            if self.nonfinite_grad_since is None:
                self.nonfinite_grad_since = step
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
        self.loss_window.append(value)
        self.loss_level = level = _median(recent)
        self.sustained_loss = min(recent) if len(recent) == self.smoothing else None
        if self.loss_start is None:
            self.loss_start = value
        if self.loss_floor is None or level < self.loss_floor:
            self.loss_floor, self.loss_floor_step = level, step
        if self.zero_grad_since is not None and self.zero_grad_level is None:
            self.zero_grad_level = level  # the zeros began with the run: compare with its first level
        if self.plateau_step is None:
            self.plateau_step = step
            self.loss_trend, self.eval_trend = Trend(), Trend()
        self.loss_trend.add(step, value)

    def _record_eval(self, step: int, value: float, accuracy: float | None) -> None:
        """A finite eval loss, kept with the train level (and a preference run's eval accuracy) of the same moment."""
        evals = self.evals
        self.rising_evals = self.rising_evals + 1 if evals and value > evals[-1].loss else 0
        evals.append(EvalPoint(step, value, self.loss_level, accuracy))
        if self.best_eval is None or value < self.best_eval:
            self.best_eval, self.best_eval_step, self.best_eval_train_level = value, step, self.loss_level
            self.best_eval_accuracy = accuracy
            self.eval_recovered = max(self.eval_recovered, self.eval_excursion)
            self.eval_excursion = 0.0
        else:
            self.eval_excursion = max(self.eval_excursion, value - self.best_eval)
        if self.plateau_step is not None and step >= self.plateau_step:
            self.eval_trend.add(step, value)

    def state_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot of everything the rules read (NaN allowed): to compare two histories, or to debug."""
        skip = ("series", "recent_losses", "loss_window", "evals", "facts", "loss_trend", "eval_trend")
        state = {k: v for k, v in vars(self).items() if k not in skip}
        state["series"] = {name: asdict(s) for name, s in self.series.items()}
        state["recent_losses"] = list(self.recent_losses)
        state["loss_window"] = list(self.loss_window)
        state["loss_trend"], state["eval_trend"] = asdict(self.loss_trend), asdict(self.eval_trend)
        state["evals"] = [asdict(e) for e in self.evals]
        state["eval_window"] = self.evals.maxlen
        state["facts"] = {
            "vocab_size": self.facts.vocab_size,
            "max_steps": self.facts.max_steps,
            "objective": self.facts.objective,
            "hyperparameters": dict(self.facts.hyperparameters),
        }
        return state


def _eval_accuracy(logs: Mapping[str, Any]) -> float | None:
    for key in EVAL_ACCURACY_KEYS:
        value = logs.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


def noise_scale(values: Iterable[float]) -> float | None:
    """A robust standard deviation of a series' point-to-point noise, blind to a steady trend; None below 4 points.

    Second differences ``x[i] - 2 x[i-1] + x[i-2]`` cancel any straight line, leaving noise of variance 6σ² for
    independent noise σ; their median absolute value (0.6745 · √6 σ for Gaussian noise) ignores the odd spike.
    Asked only when a rule is about to decide, never on every log.
    """
    points = list(values)
    if len(points) < 4:
        return None
    second = sorted(abs(c - 2 * b + a) for a, b, c in zip(points, points[1:], points[2:]))
    middle = len(second) // 2
    median = second[middle] if len(second) % 2 else (second[middle - 1] + second[middle]) / 2
    return median / (0.6745 * math.sqrt(6))


def _median(values: deque[float]) -> float:
    """``statistics.median`` without its generality: this runs on every logged step."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
