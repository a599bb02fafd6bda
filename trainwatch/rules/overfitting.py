"""Overfitting: the model learns the training set at the expense of everything else."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice
from typing import ClassVar

from trainwatch.findings import MEDIUM, OVERFITTING, Finding, confidence
from trainwatch.history import EVAL_LOSS, LOSS, PREFERENCE, REINFORCEMENT, History, noise_scale


@dataclass(frozen=True)
class OverfittingRule:
    """Decides *overfitting* from the train/eval pair, at each evaluation.

    A widening gap is the eval loss going up while the train loss goes down, each beyond its own noise: the eval
    loss's noise is measured on its last ``noise_evals`` evaluations (a run whose eval swings ±15 % has to rise
    further than one whose eval moves in the fourth digit), the train loss's on its last logged values. And a rise
    no higher above the best than one the eval loss has already come back from (to a new best) is that same swing
    again, not overfitting.

    Args:
        train_below: a smoothed train loss below this ...
        val_above: ... while the eval loss is above this is memorization (cause ``memorization``).
        rising_evals: the eval loss rising over this many consecutive evaluations while the train loss falls, and
            ending ``rise_over_noise`` above its best, is a widening gap (cause ``widening_gap``), however small
            the rise: a steady gap, however large, is healthy. So is an eval loss that stayed above its best at
            each of this many evaluations since, their mean ``rise_over_noise`` above it and the last no lower
            than the first, while the train loss fell: a jagged rise that never goes up three times in a row.
        rise_over_noise: how many times the eval loss's own noise a rise above its best must be to count (the
            noise of a difference of two evaluations, √2 × that of one).
        min_rise: a rise of less than this fraction of the best eval loss is too small to matter, however far
            above the noise of an eval loss that moves in its fourth digit.
        noise_evals: the recent evaluations whose scatter is the eval loss's noise.
        min_noise_evals: evaluations needed before their scatter is taken as the eval loss's noise: a robust scale
            of fewer than four second differences is no measure (the median of two is their mean, and the smooth
            stretch of a falling curve makes it tiny, so that the first swing after it "stands out" many times
            over). Until then the rule decides as for a run evaluated a few times (``sharp_rise``).
        significance: how many times its own noise the train loss must have fallen to count as falling.
        sharp_rise: an eval loss this fraction above its best, standing out of its noise, while the train loss
            fell since that best evaluation, is a widening gap at once, at one evaluation: a run evaluated only a
            few times (once an epoch) would never show ``rising_evals`` rises. Where the eval loss's noise cannot
            be measured yet (fewer than ``min_noise_evals`` evaluations), the train loss must instead have fallen
            by ``train_fall`` since the best evaluation, or the eval loss have risen at each of the last two
            evaluations; where it can, a sharp rise must stand out of it however it came (a loss swinging ±15 %
            rises 10 % above its best, twice in a row, by chance).
        train_fall: see ``sharp_rise``; two consecutive rises from the best evaluation are enough too when the
            train loss fell this fraction over them (a gap that goes from nothing to most of the loss).

    A run that never had a finite, positive train loss (all labels -100, logged as 0.0) is never overfitting, and
    the ratio tests are only made on a loss that is never negative (cross-entropy), never on an RL objective. A
    preference run (DPO, reward models) whose eval accuracy is no lower than at its best evaluation is not
    overfitting, whatever its eval loss does: a rising loss with margins and accuracy still improving is the model
    growing more confident, not worse.
    """

    train_below: float = 0.1
    val_above: float = 1.0
    rising_evals: int = 3
    rise_over_noise: float = 3.0
    min_rise: float = 0.005
    noise_evals: int = 8
    min_noise_evals: int = 6
    significance: float = 2.0
    sharp_rise: float = 0.1
    train_fall: float = 0.5
    kind: ClassVar[str] = OVERFITTING

    def observe(self, history: History) -> Finding | None:
        if EVAL_LOSS not in history.latest or not history.series[LOSS].positive_seen or not history.evals:
            return None  # decided at an evaluation: between two, the train/eval pair it judges does not change
        evals = history.evals
        last = evals[-1]
        if last.train_level is None or not history.loss_is_nonnegative or history.facts.objective == REINFORCEMENT:
            return None
        evidence = {
            "train_loss": last.train_level,
            "eval_loss": last.loss,
            "gap": last.loss - last.train_level,
            "best_eval_loss": history.best_eval,
            "best_eval_step": history.best_eval_step,
            "onset_step": history.best_eval_step,
        }
        if last.train_level < self.train_below and last.loss > self.val_above:
            return Finding(
                self.kind,
                "memorization",
                history.step,
                f"train loss {last.train_level:.4g} < {self.train_below:g} while eval loss {last.loss:.4g} > "
                f"{self.val_above:g}: the model memorised the training set",
                evidence,
            )
        best, at_best = history.best_eval, history.best_eval_train_level
        if best is None or best <= 0 or at_best is None or at_best <= 0 or last.loss <= best:
            return None
        rise = last.loss - best
        if rise < self.min_rise * best or rise <= history.eval_recovered:
            return None  # too small to matter, or a swing the eval loss has already come back from
        accuracy, accuracy_at_best = last.accuracy, history.best_eval_accuracy
        if history.facts.objective == PREFERENCE and accuracy is not None and accuracy_at_best is not None:
            if accuracy >= accuracy_at_best:
                return None  # a preference run that still ranks held-out pairs as well as at its best
        recent = islice(evals, max(0, len(evals) - self.noise_evals), None)
        noise = noise_scale(e.loss for e in recent) if len(evals) >= self.min_noise_evals else None
        # two evaluations differ by √2 × the noise of one: that is the scale a rise above the best is measured in
        over = rise / (noise * math.sqrt(2)) if noise else (None if noise is None else math.inf)
        how = self._widening(history, rise, noise, over)
        if how is None:
            return None
        train_fell = 1 - last.train_level / at_best
        shown = f", {over:.1f}× its noise" if over is not None and math.isfinite(over) else ""
        return Finding(
            self.kind,
            "widening_gap",
            history.step,
            f"the eval loss {how} to {last.loss:.4g}, {rise / best:.1%} above its best {best:.4g} (step "
            f"{history.best_eval_step}){shown}, while the train loss fell {at_best:.4g} → {last.train_level:.4g} "
            f"({train_fell:.0%}): better on the training data, worse on everything else",
            {**evidence, "rise_over_noise": over, "rising_evals": history.rising_evals, "train_loss_at_best_eval": at_best},
            confidence=MEDIUM if over is None else confidence(over, self.rise_over_noise),
        )

    def _widening(self, history: History, rise: float, noise: float | None, over: float | None) -> str | None:
        """Which sign of a widening gap the evaluations show, in words, or None."""
        evals, best, at_best = history.evals, history.best_eval, history.best_eval_train_level
        last, streak = evals[-1], history.rising_evals
        assert best is not None and at_best is not None and last.train_level is not None
        stands_out = over is not None and over >= self.rise_over_noise
        train_fell = 1 - last.train_level / at_best
        streak_start = evals[-1 - streak] if streak < len(evals) else None
        train_noise = noise_scale(history.loss_window)
        if streak_start is not None and self._train_fell(streak_start.train_level, last.train_level, train_noise):
            if streak >= self.rising_evals and (stands_out or over is None):
                return f"rose at each of the last {streak} evaluations"
            from_best = streak_start.step == history.best_eval_step
            sharp = rise >= self.sharp_rise * best and (stands_out or over is None)
            if from_best and streak >= 2 and (sharp or train_fell >= self.train_fall):
                return f"rose at each of the {streak} evaluations since its best"
        if rise >= self.sharp_rise * best and (
            (stands_out and last.train_level < at_best) or (over is None and train_fell >= self.train_fall)
        ):
            return "jumped"
        since = [e.loss for e in evals if e.step > history.best_eval_step]  # type: ignore[operator]
        if len(since) >= self.rising_evals and noise and self._train_fell(at_best, last.train_level, train_noise):
            # the mean of k evaluations against one (the best): its noise is √(1 + 1/k) × that of one
            held = (sum(since) / len(since) - best) / (noise * math.sqrt(1 + 1 / len(since)))
            not_returning = since[-1] >= since[0]  # an eval loss on its way back to its best is a bump
            if min(since) >= best * (1 + self.min_rise) and held >= self.rise_over_noise and not_returning:
                return f"stayed above its best at each of the {len(since)} evaluations since"
        return None

    def _train_fell(self, before: float | None, now: float, noise: float | None) -> bool:
        """The smoothed train loss fell from ``before`` to ``now`` by more than ``significance`` × its ``noise``."""
        if before is None or now >= before:
            return False
        return noise is None or before - now > self.significance * noise
