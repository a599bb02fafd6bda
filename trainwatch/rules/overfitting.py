"""Overfitting: the model learns the training set at the expense of everything else."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import ClassVar

from trainwatch.findings import OVERFITTING, Finding
from trainwatch.history import EVAL_LOSS, LOSS, History


@dataclass(frozen=True)
class OverfittingRule:
    """Decides *overfitting* from the train/eval pair, at each evaluation.

    Args:
        train_below: a smoothed train loss below this ...
        val_above: ... while the eval loss is above this is memorization (cause ``memorization``).
        rising_evals: the eval loss rising over this many consecutive evaluations while the train loss falls is a
            widening gap (cause ``widening_gap``); a steady gap, however large, is healthy.
        min_rise: ... provided the eval loss is also this fraction above its best, so that a rise within
            evaluation noise is not called overfitting.
        sharp_rise: an eval loss this fraction above its best ...
        train_fall: ... while the smoothed train loss fell by this fraction since that best evaluation is a
            widening gap at once, at one evaluation (cause ``widening_gap``): the model got much better on its
            training data and clearly worse on everything else. Evaluation noise does not move both that far
            together, and a run evaluated only a few times (once an epoch) would never show ``rising_evals`` rises.

    A run that never had a finite, positive train loss (all labels -100, logged as 0.0) is never overfitting, and
    memorization is only judged on a loss that is never negative (cross-entropy).
    """

    train_below: float = 0.1
    val_above: float = 1.0
    rising_evals: int = 3
    min_rise: float = 0.02
    sharp_rise: float = 0.1
    train_fall: float = 0.5
    kind: ClassVar[str] = OVERFITTING

    def observe(self, history: History) -> Finding | None:
        if EVAL_LOSS not in history.latest or not history.series[LOSS].positive_seen or not history.evals:
            return None  # decided at an evaluation: between two, the train/eval pair it judges does not change
        last = history.evals[-1]
        if last.train_level is None:
            return None
        evidence = {
            "train_loss": last.train_level,
            "eval_loss": last.loss,
            "gap": last.loss - last.train_level,
            "best_eval_loss": history.best_eval,
            "best_eval_step": history.best_eval_step,
            "onset_step": history.best_eval_step,
        }
        if last.train_level < self.train_below and last.loss > self.val_above and history.loss_is_nonnegative:
            return Finding(
                self.kind,
                "memorization",
                history.step,
                f"train loss {last.train_level:.4g} < {self.train_below:g} while eval loss {last.loss:.4g} > "
                f"{self.val_above:g}: the model memorised the training set",
                evidence,
            )
        best, at_best = history.best_eval, history.best_eval_train_level
        if (
            best is not None
            and best > 0
            and at_best is not None
            and at_best > 0
            and history.loss_is_nonnegative
            and last.loss >= best * (1 + self.sharp_rise)
            and last.train_level <= at_best * (1 - self.train_fall)
        ):
            return Finding(
                self.kind,
                "widening_gap",
                history.step,
                f"eval loss {last.loss:.4g} is {last.loss / best - 1:.0%} above its best {best:.4g} (step "
                f"{history.best_eval_step}) while train loss fell {at_best:.4g} → {last.train_level:.4g} "
                f"({1 - last.train_level / at_best:.0%}): better on the training data, worse on everything else",
                {**evidence, "train_loss_at_best_eval": at_best},
            )
        span = list(history.evals)[-(self.rising_evals + 1) :]
        if len(span) <= self.rising_evals or span[0].train_level is None:
            return None
        rising = all(b.loss > a.loss for a, b in pairwise(span))
        train_falling = span[-1].train_level < span[0].train_level
        above_best = history.best_eval is not None and last.loss > history.best_eval * (1 + self.min_rise)
        if rising and train_falling and above_best:
            first_gap = span[0].loss - span[0].train_level
            return Finding(
                self.kind,
                "widening_gap",
                history.step,
                f"eval loss rose over {self.rising_evals} evaluations ({span[0].loss:.4g} → {last.loss:.4g}) while "
                f"train loss fell ({span[0].train_level:.4g} → {last.train_level:.4g}); the gap widened "
                f"{first_gap:.3g} → {evidence['gap']:.3g}",
                {**evidence, "gap_before": first_gap, "rising_evals": self.rising_evals},
            )
        return None
