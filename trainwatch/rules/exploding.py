"""Exploding: the loss (or the weights behind it) blew up."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from trainwatch.findings import EXPLODING, HIGH, Finding, confidence
from trainwatch.history import (
    EVAL_LOSS,
    GRAD_NORM,
    LEARNING_RATE,
    LOSS,
    REINFORCEMENT,
    History,
    hidden_nan,
    is_finite,
    noise_scale,
)


@dataclass(frozen=True)
class ExplodingRule:
    """Decides *exploding* on a non-finite loss or gradient, a loss spike, a sustained rise, or a language model
    that is worse than knowing nothing.

    Args:
        max_loss: a logged train loss at or above this, in a run that started below it, is an explosion (cause
            ``lr_too_high``): no language model sits at 100 nats. (A loss that starts above it is not a
            per-token cross-entropy, and this test does not apply.)
        uniform_factor: for a language model (vocab size known), a single train loss at or above
            ``uniform_factor`` × ln(vocab_size), in a run that started below it, is a spike too: a loss twice that
            of a uniform guess needs confident wrong answers on most tokens, which damaged weights give and one odd
            batch does not. The spike threshold is the lower of this and ``max_loss``. For a preference loss (DPO,
            reward models) the reference is ln 2, a coin toss between chosen and rejected, in this test and the
            ``uniform_margin`` ones (``Facts.reference_loss``); an RL objective has none.
        rise_factor: every one of the last ``smoothing`` losses at or above ``rise_factor`` × the lowest smoothed
            level so far, above where the run began, and ``rise_over_noise`` × the loss's own noise above that
            level, is a sharp rise (cause ``lr_too_high``). Each condition is needed: a long or odd batch can
            double a small loss once, but not every time; a rise that stays below the start has not undone the
            training; and a per-step loss that swings between 2 and 10 around a falling mean swings, it does not
            rise.
        rise_over_noise: see ``rise_factor``.
        uniform_margin: for a language model (vocab size known) the uniform guess ln(vocab_size) is the loss of
            a model that knows nothing. A run whose best level was more than ``uniform_margin`` × ln V below it,
            and whose last losses all climbed back to within ``uniform_margin`` of that distance from it, has lost
            what it learned (cause ``lr_too_high``), however small the ratio to its best. A run that was never
            below ln V and whose last losses are all more than ``uniform_margin`` above it, while the newer half
            of its last 16 losses is no lower than the older half beyond 2 standard errors, is worse than knowing
            nothing: it exploded before its first log (a high learning rate without warmup or
            clipping) or stalled on a plateau only a diverged model sits on. (A base model confidently wrong on new
            data can start above ln V too, but it falls.) So is one whose
            first log, taken after some updates (step > 1), is already at the spike threshold: no model starts
            there. (At step 1 no update has happened yet: a first loss that high is a loss summed or scaled, not an
            explosion; a loss scaled by ``gradient_accumulation_steps`` gets that factor of room.)
        nonfinite_grad_logs: a non-finite grad norm beside a finite loss is a step the fp16 loss scaler skipped,
            harmless on its own, but only where there is a loss scaler (``fp16``); without one (the arguments say
            ``fp16`` is off) the optimizer applied it, and the weights are NaN. Where the arguments are unknown,
            this many consecutive non-finite grad norms decide it: a scaler halves its scale at each skip, so a
            few skips in a row are normal at the start (from its initial 2^16), many are not.

    The ratio tests apply to losses that are never negative (cross-entropy); a loss that goes below 0 (DPO, RL
    objectives) is only judged on non-finite values.

    A NaN/inf loss is ``non_finite``. With Trainer's default ``logging_nan_inf_filter`` a NaN step is replaced by
    the window's average, and a window of NaN steps is logged as exactly 0.0 beside a NaN grad norm: that
    signature is read as non-finite too, and so is a non-finite eval loss after finite ones, or beside a non-finite
    grad norm (a held-out set does not pass through a loss scaler). A run in which no loss was ever computed (every
    label -100, see ``History.never_a_loss``) is the flat rule's ``no_target_tokens``, not an explosion, so this rule
    abstains.
    """

    max_loss: float = 100.0
    uniform_factor: float = 2.0
    rise_factor: float = 2.0
    rise_over_noise: float = 3.0
    uniform_margin: float = 0.1
    nonfinite_grad_logs: int = 8
    kind: ClassVar[str] = EXPLODING

    def observe(self, history: History) -> Finding | None:
        latest = history.latest
        if LOSS not in latest and GRAD_NORM not in latest and EVAL_LOSS not in latest:
            return None  # nothing this rule reads has changed
        loss = history.series[LOSS]
        if history.never_a_loss or loss.last is None:
            return None
        if (
            history.nonfinite_grad_logs
            or not math.isfinite(loss.last)
            or EVAL_LOSS in latest and not is_finite(history.series[EVAL_LOSS].last)
        ):  # the common case, everything finite, costs these three tests
            non_finite = self._non_finite(history)
            if non_finite is not None:
                return non_finite
        if LOSS not in latest or history.facts.objective == REINFORCEMENT:
            return None  # an RL surrogate loss sits around 0 whatever happens: only NaN/inf says it exploded
        start, uniform = history.loss_start, history.facts.reference_loss
        spike = min(self.max_loss, self.uniform_factor * uniform) if uniform is not None else self.max_loss
        if loss.last >= spike and start is not None and start < spike:
            return Finding(
                self.kind,
                "lr_too_high",
                history.step,
                f"the train loss spiked to {loss.last:.4g} (≥ {spike:.4g}, "
                + ("max_loss)" if spike == self.max_loss else f"{self.uniform_factor:g} × {history.facts.reference_name})"),
                _evidence(history, onset_step=history.loss_floor_step, spike_threshold=spike),
            )
        if uniform is not None and start is not None and start < self.max_loss and (loss.min or 0.0) >= uniform:
            return self._worse_than_uniform(history, uniform, spike)
        level, floor = history.sustained_loss, history.loss_floor
        if level is None or floor is None or start is None or floor <= 0 or not history.loss_is_nonnegative:
            return None
        rose = level >= self.rise_factor * floor and level > start
        learned = uniform is not None and uniform - floor >= self.uniform_margin * uniform
        forgot = learned and uniform - level <= self.uniform_margin * (uniform - floor)  # type: ignore[operator]
        if not (rose or forgot):
            return None
        noise = noise_scale(history.loss_window)
        over = (level - floor) / noise if noise else None
        if over is not None and over < self.rise_over_noise:
            return None  # it swings that far all the time
        worse = (
            f"worse than where it started ({start:.4g})" if rose else f"back at {history.facts.reference_name} = {uniform:.4g}"
        )
        return Finding(
            self.kind,
            "lr_too_high",
            history.step,
            f"the loss rose from {floor:.4g} (step {history.loss_floor_step}) to ≥ {level:.4g} for "
            f"{history.smoothing} logs, {level / floor:.1f}× its best and {worse}"
            + (f"; {over:.1f}× its noise" if over is not None else ""),
            _evidence(
                history, loss_level=level, start_loss=start, uniform_loss=uniform, onset_step=history.loss_floor_step,
                rise_over_noise=over,
            ),
            confidence=HIGH if over is None else confidence(over, self.rise_over_noise),
        )

    def _non_finite(self, history: History) -> Finding | None:
        """NaN/inf in the loss (also hidden by Trainer's filter), in the gradients beyond a scaler's skip, or in a
        previously finite eval loss."""
        loss, grad_norm, eval_loss = history.series[LOSS], history.series[GRAD_NORM], history.series[EVAL_LOSS]
        grad_bad = grad_norm.last_step == history.step and not is_finite(grad_norm.last)
        filtered = grad_norm.last_step == loss.last_step and hidden_nan(loss.last, grad_norm.last)
        eval_bad = EVAL_LOSS in history.latest and not is_finite(eval_loss.last)
        if filtered or not is_finite(loss.last):
            how = "logged as 0.0 by logging_nan_inf_filter, with a non-finite grad norm" if filtered else f"{loss.last}"
            what = f"the train loss became non-finite ({how})"
        elif grad_bad and history.facts.loss_scaler is False:
            what = f"the grad norm became {grad_norm.last} with fp16 loss scaling off: the optimizer applied it"
        elif grad_bad and history.nonfinite_grad_logs >= self.nonfinite_grad_logs:
            what = f"the grad norm was non-finite at {history.nonfinite_grad_logs} logs in a row, more than a loss scaler skips"
        elif eval_bad and (eval_loss.count > eval_loss.nonfinite or grad_bad):
            what = f"the eval loss became {eval_loss.last}" + (
                " after finite evaluations" if eval_loss.count > eval_loss.nonfinite else " beside a non-finite grad norm"
            )
        else:
            return None
        eval_onset = eval_loss.first_nonfinite_step if eval_bad else None
        steps = (loss.first_nonfinite_step, history.nonfinite_grad_since, eval_onset, history.step)
        onset = min(s for s in steps if s is not None)
        return Finding(
            self.kind, "non_finite", history.step, f"{what} at step {onset}, after training normally",
            _evidence(history, onset_step=onset),
        )

    def _worse_than_uniform(self, history: History, uniform: float, spike: float) -> Finding | None:
        """A loss never below the reference: far above it already at a first log taken after some updates, or
        settled well above it and no longer falling beyond the noise."""
        loss = history.series[LOSS]
        first, first_step = loss.first, loss.first_step
        accumulation = history.facts.hyperparameters.get("gradient_accumulation_steps")
        scaled = spike * accumulation if isinstance(accumulation, int) and accumulation > 1 else spike
        if first_step is not None and first_step > 1 and first >= scaled:  # type: ignore[operator]
            how = f"its first log (step {first_step}) was already {first:.4g}, {first / uniform:.1f}× that"
        else:
            level, window = history.sustained_loss, history.loss_window
            if level is None or level < (1 + self.uniform_margin) * uniform or len(window) < window.maxlen:  # type: ignore[operator]
                return None
            values, half = list(window), len(window) // 2
            fall = (sum(values[:half]) - sum(values[half:])) / half
            if fall > 2 * (noise_scale(values) or 0.0) * math.sqrt(2 / half):
                return None  # still coming down (a base model confidently wrong on new data does): let it
            how = f"it has stayed above it since its first log ({first:.4g}), now ≥ {level:.4g}, and stopped falling"
        return Finding(
            self.kind,
            "lr_too_high",
            history.step,
            f"the train loss is worse than knowing nothing ({history.facts.reference_name} = {uniform:.4g}): {how}; "
            "the weights blew up (before the first log, if it started there)",
            _evidence(history, start_loss=first, uniform_loss=uniform, onset_step=first_step),
        )


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
