"""Exploding: the loss (or the weights behind it) blew up."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from trainwatch.findings import EXPLODING, Finding
from trainwatch.history import GRAD_NORM, LEARNING_RATE, LOSS, History, is_finite


@dataclass(frozen=True)
class ExplodingRule:
    """Decides *exploding* on a non-finite loss, a loss spike, or a sustained rise.

    Args:
        max_loss: a logged train loss at or above this, in a run that started below it, is an explosion (cause
            ``lr_too_high``): no language model sits at 100 nats. (A loss that starts above it is not a
            per-token cross-entropy, and this test does not apply.)
        uniform_factor: for a language model (vocab size known), a single train loss at or above
            ``uniform_factor`` × ln(vocab_size), in a run that started below it, is a spike too: a loss twice that
            of a uniform guess needs confident wrong answers on most tokens, which damaged weights give and one odd
            batch does not. The spike threshold is the lower of this and ``max_loss``.
        rise_factor: every one of the last ``smoothing`` losses at or above ``rise_factor`` × the lowest smoothed
            level so far, and above where the run began, is a sharp rise (cause ``lr_too_high``). Each condition
            is needed: a long or odd batch can double a small loss once, but not every time, and a rise that stays
            below the start has not undone the training.
        uniform_margin: for a language model (vocab size known) the uniform guess ln(vocab_size) is the loss of
            a model that knows nothing. A run whose best level was more than ``uniform_margin`` × ln V below it,
            and whose last losses all climbed back to within ``uniform_margin`` of that distance from it, has lost
            what it learned (cause ``lr_too_high``), however small the ratio to its best.

    The ratio tests apply to losses that are never negative (cross-entropy); a loss that goes below 0 (DPO, RL
    objectives) is only judged on non-finite values.

    A NaN/inf loss is ``non_finite``. With Trainer's default ``logging_nan_inf_filter`` a NaN step is replaced by
    the window's average, and a window of NaN steps is logged as exactly 0.0 beside a NaN grad norm: that
    signature is read as non-finite too. A run in which no loss was ever computed (every label -100, see
    ``History.never_a_loss``) is the flat rule's ``no_target_tokens``, not an explosion, so this rule abstains.
    A non-finite grad norm with a finite loss is a step the fp16 loss scaler skipped, harmless on its own.
    """

    max_loss: float = 100.0
    uniform_factor: float = 2.0
    rise_factor: float = 2.0
    uniform_margin: float = 0.1
    kind: ClassVar[str] = EXPLODING

    def observe(self, history: History) -> Finding | None:
        if LOSS not in history.latest and GRAD_NORM not in history.latest:
            return None  # nothing this rule reads has changed
        loss, grad_norm = history.series[LOSS], history.series[GRAD_NORM]
        if history.never_a_loss or loss.last is None:
            return None
        hidden_nan = loss.last == 0.0 and grad_norm.last_step == loss.last_step and not is_finite(grad_norm.last)
        if hidden_nan or not math.isfinite(loss.last):
            onset = min(s for s in (loss.first_nonfinite_step, grad_norm.first_nonfinite_step) if s is not None)
            how = "logged as 0.0 by logging_nan_inf_filter, with a non-finite grad norm" if hidden_nan else f"{loss.last}"
            return Finding(
                self.kind,
                "non_finite",
                history.step,
                f"the train loss became non-finite ({how}) at step {onset}, after training normally",
                _evidence(history, onset_step=onset),
            )
        start, uniform = history.loss_start, history.facts.uniform_loss
        spike = min(self.max_loss, self.uniform_factor * uniform) if uniform is not None else self.max_loss
        if loss.last >= spike and start is not None and start < spike:
            return Finding(
                self.kind,
                "lr_too_high",
                history.step,
                f"the train loss spiked to {loss.last:.4g} (≥ {spike:.4g}, "
                + ("max_loss)" if spike == self.max_loss else f"{self.uniform_factor:g} × a uniform guess ln(vocab))"),
                _evidence(history, onset_step=history.loss_floor_step, spike_threshold=spike),
            )
        level, floor = history.sustained_loss, history.loss_floor
        if level is None or floor is None or start is None or floor <= 0 or not history.loss_is_nonnegative:
            return None
        rose = level >= self.rise_factor * floor and level > start
        learned = uniform is not None and uniform - floor >= self.uniform_margin * uniform
        forgot = learned and uniform - level <= self.uniform_margin * (uniform - floor)  # type: ignore[operator]
        if rose or forgot:
            worse = (
                f"worse than where it started ({start:.4g})" if rose else f"back at a uniform guess (ln vocab = {uniform:.4g})"
            )
            return Finding(
                self.kind,
                "lr_too_high",
                history.step,
                f"the loss rose from {floor:.4g} (step {history.loss_floor_step}) to ≥ {level:.4g} for "
                f"{history.smoothing} logs, {level / floor:.1f}× its best and {worse}",
                _evidence(
                    history, loss_level=level, start_loss=start, uniform_loss=uniform, onset_step=history.loss_floor_step
                ),
            )
        return None


def _evidence(history: History, **extra: float | int | None) -> dict[str, float | int | None]:
    """The numbers every explosion finding rests on, built only when one is decided (not on every log)."""
    loss, grad_norm = history.series[LOSS], history.series[GRAD_NORM]
    return {
        "loss": loss.last,
        "lowest_loss_level": history.loss_floor,
        "lowest_loss_step": history.loss_floor_step,
        "learning_rate": history.series[LEARNING_RATE].last,
        "grad_norm": grad_norm.last,
        "max_grad_norm_seen": grad_norm.max,
        **extra,
    }
