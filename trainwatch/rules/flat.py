"""Flat: the run is not learning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainwatch.findings import FLAT, HIGH, MEDIUM, Finding
from trainwatch.history import EVAL_LOSS, GRAD_NORM, LEARNING_RATE, LOSS, REINFORCEMENT, History, Trend


@dataclass(frozen=True)
class Movement:
    """How far a curve moved since the warmup ended, and how far it would get by the planned last step.

    Falls are fractions of the curve's mean level (positive: the loss went down; negative: it rose). ``noise`` is
    the fall's standard error as a fraction of that level, from the curve's own scatter around its line.
    """

    fall: float
    projected_fall: float
    noise: float
    projected_noise: float
    """The projected fall's standard error: the slope's, carried to the planned last step."""
    start: float
    """Where the line begins: the curve's level when the warmup ended."""
    scatter: float
    """The points' standard deviation around the line."""

    @classmethod
    def of(cls, trend: Trend, plan_end: float) -> Movement | None:
        mean = trend.mean
        if trend.n < 3 or not mean > 0:
            return None
        slope, error, scatter = trend.fit()
        span = trend.span
        start = mean - slope * trend.sx / trend.n
        ahead = max(plan_end, trend.last_x) - trend.x0
        return cls(-slope * span / mean, -slope * ahead / mean, error * span / mean, error * ahead / mean, start, scatter)

    def is_flat(self, tolerance: float, significance: float, allowance: float) -> bool:
        """At its best estimate within ``tolerance`` of where it began, both ways, and on course to end within it;
        and, even at ``significance`` standard errors, on course to fall less than ``allowance`` × ``tolerance``:
        the noise cannot be hiding real learning, now or by the end of the plan (early in a long run it could).
        (A rise the noise may hide is no sign of learning; one that stands out is the exploding rule's.)"""
        return (
            abs(self.fall) < tolerance
            and abs(self.projected_fall) < tolerance
            and self.projected_fall + significance * self.projected_noise < allowance * tolerance
        )

    def is_learning(self, tolerance: float, significance: float) -> bool:
        """Fell beyond its noise and is on course to fall more than ``tolerance`` by the end."""
        return self.fall > significance * self.noise and self.projected_fall >= tolerance


@dataclass(frozen=True)
class FlatRule:
    """Decides *flat*, naming the first cause that fits, most certain first.

    Args:
        patience_steps: optimizer steps the loss must stay flat before the run is called flat (cause
            ``lr_too_low``). They are counted from the moment the learning rate stopped rising, so a slow start
            under a long warmup is never judged.
        min_logs: ... and train losses logged over them, so that a run logged every 500 steps is not judged on
            two points.
        tolerance: the lesson's "barely moves — flat or very slowly declining", against the run's own noise and
            length: the straight line through the train losses since warmup must have fallen less than this
            fraction of their level (and, at ``significance`` standard errors, be on course to fall less than
            ``noise_allowance`` times it, so noise cannot hide a real fall), *and* at that rate the loss would end
            within it by the planned last step (``Facts.max_steps``; the last step seen when unknown); nor may the
            loss have fallen further than it since its first log (beyond the line's scatter: a run that learned
            early and levelled off has converged). 10 %: the labelled real runs read a whole run down 5–10 % as
            "very slowly declining" and one down 11 % or more as a slow learner. A slow but real learner (4 % per
            50 steps over a long run) projects far beyond it; pure noise around a constant projects to nothing.
        significance: standard errors a fall must stand out from the noise by: on the train losses, to count as
            "fell" at all; on the eval losses, to veto a flat call. About 95 % one-sided confidence at 2.
        noise_allowance: how much a flat line's noise may leave open, as a multiple of ``tolerance``: at
            ``significance`` standard errors the line's fall projected to the planned last step must still be
            less than ``noise_allowance × tolerance`` (20 % by default). Demanding the whole interval inside the
            tolerance would need hundreds of per-step losses swinging ±20 % before any run could be called flat; a line
            whose best estimate does not move and whose noise rules out a 20 % fall by the end is a run that barely
            moves, the lesson's reading of such a curve. Early in a long plan the projection's interval is wide, so
            a slow learner is not called flat on its first noisy steps.
        uniform_margin: a line more than this fraction above a uniform guess (``Facts.reference_loss``: ln V for
            a language model) at a learning rate above ``high_learning_rate`` is never ``lr_too_low``: a model
            worse than knowing nothing that stays there at such a rate was wrecked by it, which the exploding rule
            (the same argument, the same meaning) decides. At a low rate the same curve is a base model
            confidently wrong on new data that does not move (the shipped tiny model at 2e-7): flat.
        high_learning_rate: 10 × the top of the lesson's LoRA range (3e-4): no fine-tune's rate is too low there.
        min_evals: evaluations since warmup, over ``patience_steps``, that make the eval loss evidence on its own:
            an eval loss that is flat by the same test (the least noisy signal a run has) makes the run flat while
            the train loss, at ``significance`` standard errors, fell less than the tolerance. An eval loss that is
            clearly learning (three evaluations are enough to show it) vetoes flat.
        confirm_steps: optimizer steps a certain cause must hold before it is decided: a loss that was never
            anything but 0.0 or NaN beside a grad norm that was never positive (``no_target_tokens``: every label
            is -100, so the loss is NaN, or 0.0 after Trainer's NaN filter), or a grad norm of exactly 0.0 while
            the learning rate is not 0 (``zero_gradients``: no trainable parameter is reached by the backward
            pass).
        confirm_logs: ... and consecutive zero grad norms logged over them.
        zero_grad_tolerance: while the grad norm is 0 the smoothed loss must also stay within this fraction of its
            level when the zeros began (without gradients it cannot move: if it does, the logged norm is not the
            gradient that trains the model, as with some optimizers' skipped steps).

    A loss that is 0.0 beside a positive grad norm is a real objective that happens to be 0 (GRPO logs that), and a
    loss that goes negative is not a cross-entropy: ``lr_too_low`` is only judged on a positive loss level, and
    never on an RL objective, whose surrogate loss is no measure of progress. An RL run whose loss and grad norm
    are never anything but 0.0 is ``no_reward_signal``: every group's rewards were identical (a reward function too
    strict or too easy), not a label-masking problem.
    """

    patience_steps: int = 50
    min_logs: int = 5
    tolerance: float = 0.10
    significance: float = 2.0
    noise_allowance: float = 2.0
    uniform_margin: float = 0.1
    high_learning_rate: float = 3e-3
    min_evals: int = 5
    confirm_steps: int = 5
    confirm_logs: int = 3
    zero_grad_tolerance: float = 0.05
    kind: ClassVar[str] = FLAT

    def observe(self, history: History) -> Finding | None:
        loss = history.series[LOSS]
        if loss.count == 0:
            return None
        if history.never_a_loss:
            if history.step < self.confirm_steps:
                return None
            if history.facts.objective == REINFORCEMENT:
                return Finding(
                    self.kind,
                    "no_reward_signal",
                    history.step,
                    f"loss and grad norm exactly 0.0 for {history.step} steps: every completion of every group got "
                    "the same reward, so no group has an advantage to learn from",
                    {**_evidence(history), "logged_losses": loss.count},
                )
            return Finding(
                self.kind,
                "no_target_tokens",
                history.step,
                f"no finite, positive train loss in {history.step} steps (every value {loss.last}): "
                "no example has a label other than -100",
                {**_evidence(history), "logged_losses": loss.count, "non_finite_losses": loss.nonfinite},
            )
        if history.zero_grad_since is not None:
            return self._zero_gradients(history)
        return self._not_learning(history)

    def _zero_gradients(self, history: History) -> Finding | None:
        since, before, now = history.zero_grad_since, history.zero_grad_level, history.loss_level
        lr = history.series[LEARNING_RATE].last
        loss_flat = before is not None and now is not None and before > 0 and abs(now / before - 1) <= self.zero_grad_tolerance
        if (
            since is None
            or history.step - since < self.confirm_steps
            or history.zero_grad_logs < self.confirm_logs
            or not loss_flat
            or lr == 0.0
        ):
            return None
        return Finding(
            self.kind,
            "zero_gradients",
            history.step,
            f"the grad norm has been exactly 0.0 since step {since + 1} while the learning rate is "
            f"{lr}: no gradient reaches the trainable parameters",
            {**_evidence(history), "onset_step": since + 1, "loss_level": history.loss_level},
        )

    def _wrecked(self, history: History, level: float) -> bool:
        """Worse than knowing nothing at a high learning rate: the exploding rule's to decide, not a rate too low."""
        uniform, rate = history.facts.reference_loss, history.series[LEARNING_RATE].max
        return (
            uniform is not None
            and level > (1 + self.uniform_margin) * uniform
            and rate is not None
            and rate > self.high_learning_rate
        )

    def _not_learning(self, history: History) -> Finding | None:
        """``lr_too_low``: the train loss (or, as strong evidence, the eval loss) barely moves for the whole plan."""
        start, trend = history.plateau_step, history.loss_trend
        if (
            start is None
            or history.step - start + 1 < self.patience_steps
            or trend.n < self.min_logs
            or not history.loss_is_nonnegative
            or history.facts.objective == REINFORCEMENT  # its loss is no measure of progress; its reward is
            or LOSS not in history.latest and EVAL_LOSS not in history.latest
            or trend.n % (trend.n // 64 + 1)
        ):
            return None  # (the last: past 64 logs, judged every 1/64th of them: a slow failure, decided <2 % late)
        plan_end = history.facts.max_steps or history.step
        train = Movement.of(trend, plan_end)
        if train is None or self._wrecked(history, trend.mean):
            return None
        evals = history.eval_trend
        held_out = Movement.of(evals, plan_end)
        if held_out is not None and held_out.is_learning(self.tolerance, self.significance):
            return None
        judged_evals = evals.n >= self.min_evals and evals.span + 1 >= self.patience_steps
        train_flat = train.is_flat(self.tolerance, self.significance, self.noise_allowance)
        eval_flat = (
            judged_evals
            and held_out is not None
            and held_out.is_flat(self.tolerance, self.significance, self.noise_allowance)
        )
        if not (train_flat or eval_flat and train.fall + self.significance * train.noise < self.tolerance):
            return None
        first = history.loss_start
        now = train.start - train.fall * trend.mean  # where the line is at the last log
        if first is not None and first - now > self.tolerance * first + self.significance * train.scatter:
            return None  # it fell from its first log (in the warmup, or faster than a line follows), then levelled off
        lr = history.series[LEARNING_RATE]
        on = "train loss" if train_flat else "eval loss"
        by_end = f", on course for {{:.1%}} by step {plan_end}" if history.facts.max_steps else ""
        moved = f"the train loss moved {-train.fall:+.1%} in {history.step - start + 1} steps since step {start}"
        moved += by_end.format(-train.projected_fall)
        if held_out is not None:
            evals_moved = f"the eval loss moved {-held_out.fall:+.1%} over {evals.n} evaluations"
            evals_moved += by_end.format(-held_out.projected_fall)
            moved = f"{evals_moved}; {moved}" if on == "eval loss" else f"{moved}; {evals_moved}"
        return Finding(
            self.kind,
            "lr_too_low",
            history.step,
            f"the {on} barely moves: {moved}"
            + (f"; learning rate {lr.last:g}" if lr.last is not None else ""),
            {
                **_evidence(history),
                "decided_on": on,
                "loss_level": trend.mean,
                "reference_step": start,
                "train_fall": train.fall,
                "train_fall_noise": train.noise,
                "projected_fall": train.projected_fall,
                "planned_steps": history.facts.max_steps,
                "eval_fall": held_out.fall if held_out is not None else None,
                "eval_projected_fall": held_out.projected_fall if held_out is not None else None,
                "max_learning_rate": lr.max,
            },
            confidence=HIGH if train_flat and (eval_flat or held_out is None) else MEDIUM,
        )

def _evidence(history: History) -> dict[str, float | None]:
    """The last values every flat finding quotes, built only when one is decided (not on every log)."""
    series = history.series
    return {"loss": series[LOSS].last, "grad_norm": series[GRAD_NORM].last, "learning_rate": series[LEARNING_RATE].last}
