"""Exploding: the loss (or the weights behind it) blew up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainwatch.findings import EXPLODING, Finding
from trainwatch.history import GRAD_NORM, LEARNING_RATE, LOSS, History, is_finite


@dataclass(frozen=True)
class ExplodingRule:
    """Decides *exploding* on a non-finite loss, a loss spike, or a sustained rise.

    Args:
        max_loss: a logged train loss at or above this is an explosion (cause ``lr_too_high``); no language model
            sits at 100 nats.
        rise_factor: the smoothed loss level at or above ``rise_factor`` × its lowest level so far is a sharp rise
            (cause ``lr_too_high``) once it is also worse than where the run began. Both conditions are needed: a
            noisy batch can double a small loss, but it does not undo all the training.
        uniform_margin: for a language model (vocab size known) the uniform guess ln(vocab_size) is the loss of
            a model that knows nothing. A run whose best level was more than ``uniform_margin`` × ln V below it,
            and whose level climbed back to within ``uniform_margin`` of that distance from it, has lost what it
            learned (cause ``lr_too_high``), however small the ratio to its best.

    A NaN/inf loss is ``non_finite``. With Trainer's default ``logging_nan_inf_filter`` a NaN step is replaced by
    the window's average, and a window of NaN steps is logged as exactly 0.0 beside a NaN grad norm: that
    signature is read as non-finite too. A run whose loss was *never* finite and positive had no target token
    (all labels -100): that is the flat rule's ``no_target_tokens``, not an explosion, so this rule abstains.
    A non-finite grad norm with a finite loss is a step the fp16 loss scaler skipped, harmless on its own.
    """

    max_loss: float = 100.0
    rise_factor: float = 2.0
    uniform_margin: float = 0.1
    kind: ClassVar[str] = EXPLODING

    def observe(self, history: History) -> Finding | None:
        loss, grad_norm = history[LOSS], history[GRAD_NORM]
        if not loss.positive_seen or loss.last is None:
            return None
        common = {
            "loss": loss.last,
            "lowest_loss_level": history.loss_floor,
            "lowest_loss_step": history.loss_floor_step,
            "learning_rate": history[LEARNING_RATE].last,
            "grad_norm": grad_norm.last,
            "max_grad_norm_seen": grad_norm.max,
        }
        hidden_nan = loss.last == 0.0 and grad_norm.last_step == loss.last_step and not is_finite(grad_norm.last)
        if not is_finite(loss.last) or hidden_nan:
            onset = min(s for s in (loss.first_nonfinite_step, grad_norm.first_nonfinite_step) if s is not None)
            how = "logged as 0.0 by logging_nan_inf_filter, with a non-finite grad norm" if hidden_nan else f"{loss.last}"
            return Finding(
                self.kind,
                "non_finite",
                history.step,
                f"the train loss became non-finite ({how}) at step {onset}, after training normally",
                {**common, "onset_step": onset},
            )
        if loss.last >= self.max_loss:
            return Finding(
                self.kind,
                "lr_too_high",
                history.step,
                f"the train loss spiked to {loss.last:.4g} (≥ {self.max_loss:g})",
                {**common, "onset_step": history.loss_floor_step, "max_loss": self.max_loss},
            )
        level, floor, start = history.loss_level, history.loss_floor, history.loss_start
        if level is None or floor is None or start is None:
            return None
        uniform = history.facts.uniform_loss
        rose = level >= self.rise_factor * floor and level > start
        learned = uniform is not None and uniform - floor >= self.uniform_margin * uniform
        forgot = learned and uniform - level <= self.uniform_margin * (uniform - floor)  # type: ignore[operator]
        if rose or forgot:
            worse = f"worse than where it started ({start:.4g})" if rose else f"back at a uniform guess (ln vocab = {uniform:.4g})"
            return Finding(
                self.kind,
                "lr_too_high",
                history.step,
                f"the loss rose from {floor:.4g} (step {history.loss_floor_step}) to {level:.4g}, "
                f"{level / floor:.1f}× its best and {worse}",
                {**common, "loss_level": level, "start_loss": start, "uniform_loss": uniform, "onset_step": history.loss_floor_step},
            )
        return None
