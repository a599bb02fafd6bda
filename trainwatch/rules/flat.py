"""Flat: the run is not learning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainwatch.findings import FLAT, Finding
from trainwatch.history import EVAL_LOSS, GRAD_NORM, LEARNING_RATE, LOSS, History


@dataclass(frozen=True)
class FlatRule:
    """Decides *flat*, naming the first cause that fits, most certain first.

    Args:
        patience_steps: optimizer steps the loss must stay flat before the run is called flat (cause
            ``lr_too_low``). They are counted from the moment the learning rate stopped rising, so a slow start
            under a long warmup is never judged.
        min_logs: ... and train losses logged over them, so that a run logged every 500 steps is not judged on
            two points.
        tolerance: "flat" means the smoothed train loss (and the eval loss, when there is one) never moved more
            than this fraction away from its starting level. 2 %, not 5 %: a healthy run with a small batch can
            learn as slowly as 4 % in 50 steps, while a learning rate that is really too low moves it well under
            1 %.
        confirm_steps: optimizer steps a certain cause must hold before it is decided: a loss that was never
            anything but 0.0 or NaN beside a grad norm that was never positive (``no_target_tokens``: every label
            is -100, so the loss is NaN, or 0.0 after Trainer's NaN filter), or a grad norm of exactly 0.0 while
            the learning rate is not 0 (``zero_gradients``: no trainable parameter is reached by the backward
            pass).
        confirm_logs: ... and consecutive zero grad norms logged over them.
        zero_grad_tolerance: while the grad norm is 0 the smoothed loss must also stay within this fraction of its
            level when the zeros began (without gradients it cannot move: if it does, the logged norm is not the
            gradient that trains the model, as with some optimizers' skipped steps). Wider than ``tolerance``
            because it is judged after a few logs, not after ``patience_steps``.

    A loss that is 0.0 beside a positive grad norm is a real objective that happens to be 0 (GRPO logs that), and a
    loss that goes negative is not a cross-entropy: ``lr_too_low`` is only judged on a positive loss level.
    """

    patience_steps: int = 50
    min_logs: int = 5
    tolerance: float = 0.02
    confirm_steps: int = 5
    confirm_logs: int = 3
    zero_grad_tolerance: float = 0.05
    kind: ClassVar[str] = FLAT

    def observe(self, history: History) -> Finding | None:
        if history.zero_grad_since is None and history.largest_move > self.tolerance and not history.never_a_loss:
            return None  # the loss has moved and gradients flow: no cause can hold now (asked on every log)
        loss, lr = history.series[LOSS], history.series[LEARNING_RATE]
        if loss.count == 0:
            return None
        if history.never_a_loss:
            if history.step < self.confirm_steps:
                return None
            return Finding(
                self.kind,
                "no_target_tokens",
                history.step,
                f"no finite, positive train loss in {history.step} steps (every value {loss.last}): "
                "no example has a label other than -100",
                {**_evidence(history), "logged_losses": loss.count, "non_finite_losses": loss.nonfinite},
            )
        since, before, now = history.zero_grad_since, history.zero_grad_level, history.loss_level
        loss_flat = before is not None and now is not None and before > 0 and abs(now / before - 1) <= self.zero_grad_tolerance
        if (
            since is not None
            and history.step - since >= self.confirm_steps
            and history.zero_grad_logs >= self.confirm_logs
            and loss_flat
            and lr.last != 0.0
        ):
            return Finding(
                self.kind,
                "zero_gradients",
                history.step,
                f"the grad norm has been exactly 0.0 since step {since + 1} while the learning rate is "
                f"{lr.last}: no gradient reaches the trainable parameters",
                {**_evidence(history), "onset_step": since + 1, "loss_level": history.loss_level},
            )
        start = history.plateau_step
        eval_moved = history.series[EVAL_LOSS].count > 0 and history.eval_largest_move > self.tolerance
        if (
            start is not None
            and history.step - start >= self.patience_steps
            and history.plateau_logs >= self.min_logs
            and history.plateau_level is not None
            and history.plateau_level > 0
            and history.loss_is_nonnegative
            and history.largest_move <= self.tolerance
            and not eval_moved
        ):
            return Finding(
                self.kind,
                "lr_too_low",
                history.step,
                f"the loss stayed within {history.largest_move:.1%} of {history.plateau_level:.4g} for "
                f"{history.step - start} steps at learning rate {lr.last}",
                {
                    **_evidence(history),
                    "loss_level": history.loss_level,
                    "reference_loss": history.plateau_level,
                    "reference_step": start,
                    "largest_move": history.largest_move,
                    "eval_largest_move": history.eval_largest_move if history.series[EVAL_LOSS].count else None,
                    "max_learning_rate": lr.max,
                },
            )
        return None


def _evidence(history: History) -> dict[str, float | None]:
    """The last values every flat finding quotes, built only when one is decided (not on every log)."""
    series = history.series
    return {"loss": series[LOSS].last, "grad_norm": series[GRAD_NORM].last, "learning_rate": series[LEARNING_RATE].last}
