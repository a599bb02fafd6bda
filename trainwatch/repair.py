"""Repair a failed run: back to its last good checkpoint, the first fix applied, the remaining steps trained again.

The lesson's loop is: diagnose, apply the first fix ("try 10× lower"), run again from where the run was still good,
check. trainwatch knows every piece: the failure and its onset (the Diagnoser), the checkpoint before it
(:func:`trainwatch.checkpoints.checkpoint_for`, its weights checked finite) and the fix as argument values
(:func:`trainwatch.fixes.argument_changes`, the values the fix list prints). :func:`train_with_repair` closes the
loop around any Trainer you can build from its arguments::

    def build(args: TrainingArguments) -> Trainer:  # a fresh model on each call
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8, lora_alpha=16))
        return Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation)

    result = train_with_repair(build, TrainingArguments(output_dir="out", ...), max_repairs=2)
    print(result.format())      # the failure, the checkpoint it went back to, the change, how each attempt ended
    result.trainer.model        # the final model, saved in result.final_model when repaired
    sys.exit(result.exit_code)  # 0 healthy or repaired, 1 a failure remains, 4 no argument change can repair it

Each attempt is a new run: a Trainer from ``build`` with the changed arguments and its own output dir
(``out-repair-1``, ...: the original's files are never touched), its own Diagnoser, the checkpoint's weights loaded
(the adapter, for LoRA), a fresh optimizer and schedule, for the steps the original still had to go. Its logs count
its own steps from 0; ``start_step`` places it on the original run's axis. The story is printed, written to
``<output_dir>/trainwatch/repair.json`` and, as ``context``, into each attempt's diagnosis.json and TensorBoard text.
"""

from __future__ import annotations

import copy
import gc
import glob
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from trainwatch.callbacks import Diagnoser, DiagnosisCallback
from trainwatch.checkpoints import checkpoint_for
from trainwatch.findings import HEALTHY, KINDS, OVERFITTING, Finding, verdict
from trainwatch.fixes import argument_changes
from trainwatch.report import write_json_atomic

logger = logging.getLogger("trainwatch")

REPAIRED, FAILED, UNREPAIRABLE = "repaired", "failed", "unrepairable"
EXIT_CODES = {HEALTHY: 0, REPAIRED: 0, FAILED: 1, UNREPAIRABLE: 4}
"""Exit status of a repaired run (``python -m trainwatch.train --repair``): 0 it ended healthy (as it began, or
repaired), 1 a failure remains after ``max_repairs`` attempts, 4 a failure that no argument change can repair (no
target tokens, zero gradients, frozen layers): the diagnosis says what to fix by hand. (2 is a usage error, 3
``trainwatch analyze``'s "not judged".)"""
REPORT = "repair.json"


@dataclass
class Attempt:
    """One run of a repair: the original (``number`` 0) or a repair attempt, as it ended."""

    number: int
    output_dir: str
    start_step: int = 0
    """The original run's step this attempt began at: its checkpoint's (0: the start). Its own logs count from 0."""
    checkpoint: str | None = None
    """The checkpoint whose weights it began with; None: the model as ``build`` made it."""
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    """The fix applied, ``{argument: (before, after)}``."""
    steps: int = 0
    planned_steps: int = 0
    findings: list[Finding] = field(default_factory=list)
    stopped_by: Finding | None = None
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    """``(step on the original run's axis, eval loss)`` of each evaluation."""
    args: TrainingArguments | None = field(default=None, repr=False)
    """The arguments it trained with (the next attempt's start from a copy)."""
    hyperparameters: dict[str, Any] = field(default_factory=dict, repr=False)
    """The arguments the fixes were rendered from (the Diagnoser's facts)."""
    objective: str | None = None

    @property
    def failure(self) -> Finding | None:
        """The failure to repair: the first decided (the verdict's)."""
        return self.findings[0] if self.findings else None

    @property
    def verdict(self) -> str:
        return verdict(self.findings)

    def describe(self) -> str:
        """One line: which run, where it began, and how it ended."""
        name = "original run" if self.number == 0 else f"attempt {self.number}"
        began = f", from {Path(self.checkpoint).name if self.checkpoint else 'the start'}" if self.number else ""
        ended = f"{self.failure.kind} ({self.failure.cause})" if self.failure else "healthy"
        losses = [loss for _, loss in self.eval_losses]
        evals = f", eval loss {losses[0]:.4g} → {losses[-1]:.4g}" if losses else ""
        span = f"steps {self.start_step}–{self.start_step + self.steps}"
        return f"{name} ({self.output_dir}){began}: {span}, {ended}{evals}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "output_dir": self.output_dir,
            "start_step": self.start_step,
            "checkpoint": self.checkpoint,
            "changes": {name: list(values) for name, values in self.changes.items()},
            "steps": self.steps,
            "planned_steps": self.planned_steps,
            "verdict": self.verdict,
            "failure": self.failure.to_dict() if self.failure else None,
            "stopped_by": self.stopped_by.to_dict() if self.stopped_by else None,
            "eval_losses": [[step, loss if math.isfinite(loss) else str(loss)] for step, loss in self.eval_losses],
        }


@dataclass
class RepairResult:
    """How a run and its repairs ended: every attempt in order, the status, and where the final model is."""

    attempts: list[Attempt]
    status: str = HEALTHY
    """``healthy`` (nothing to repair), ``repaired``, ``failed`` (a failure remains) or ``unrepairable``."""
    story: list[str] = field(default_factory=list)
    """One line per decision: the failure, the checkpoint gone back to, the change; or why it stopped there."""
    final_model: str | None = None
    """Where the final model's weights are: the repaired attempt's output dir, or the best checkpoint kept."""
    trainer: Trainer | None = field(default=None, repr=False)
    """The last attempt's Trainer: its model is the final model."""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "final_model": self.final_model,
            "story": self.story,
            "attempts": [a.to_dict() for a in self.attempts],
        }

    def format(self) -> str:
        """The whole story for a person: each run and how it ended, then what was decided about it."""
        lines = [
            f"trainwatch repair: {self.status}" + (f", final model in {self.final_model}" if self.final_model else "")
        ]
        for attempt, decision in itertools.zip_longest(self.attempts, self.story):
            if attempt is not None:
                lines.append(f"  {attempt.describe()}")
            if decision is not None:
                lines.append(f"    → {decision}")
        return "\n".join(lines)


def train_with_repair(
    build: Callable[[TrainingArguments], Trainer],
    args: TrainingArguments,
    *,
    max_repairs: int = 2,
    retrain_overfitting: bool = False,
) -> RepairResult:
    """Train ``build(args)``; while a failure that an argument fixes is decided, repair it, at most ``max_repairs``
    times: back to the last clean checkpoint before its onset (or the start), the fix applied, the remaining steps.

    Args:
        build: makes a Trainer from the arguments it is given, with a freshly loaded model each call. Its trainwatch
            callbacks (a :class:`~trainwatch.Diagnoser`) judge each attempt; without one, ``Diagnoser(stop_on=all
            kinds)`` is added, so a failing attempt stops at once.
        args: the original run's arguments; each attempt gets a copy with the fix and its own ``output_dir``.
        max_repairs: attempts after the original (0: train and diagnose only).
        retrain_overfitting: overfitting keeps the best checkpoint as the final model and ends, unless this asks to
            train again from the start with fewer epochs (or steps).
    """
    if max_repairs < 0:
        raise ValueError(f"max_repairs must be ≥ 0, not {max_repairs}")
    result = RepairResult([])
    first_folder = _first_free_number(str(args.output_dir))  # known before any run writes: the same on every rank
    attempt = _train(build, args, Attempt(0, str(args.output_dir)), result)
    while max_repairs and (failure := attempt.failure) is not None:
        at = f"{failure.kind} ({failure.cause}) at step {attempt.start_step + failure.step} of {attempt.output_dir}"
        changes = argument_changes(failure.cause, attempt.hyperparameters, attempt.objective)
        keep_best = failure.kind == OVERFITTING and not retrain_overfitting
        if not changes and not keep_best:
            _decide(result, UNREPAIRABLE, f"{at}: no argument change repairs {failure.cause}; see the diagnosis' fixes")
            break
        if attempt.number >= max_repairs:
            _decide(result, FAILED, f"{at}: {max_repairs} repair attempt(s) allowed, the failure remains")
            break
        if keep_best and (best := _best_checkpoint(result.trainer, failure, attempt.output_dir)):
            _load_weights(result.trainer, best)
            result.final_model = best
            _decide(result, REPAIRED, f"{at}: kept the best checkpoint, {best}, as the final model")
            break
        if not changes:
            _decide(result, FAILED, f"{at}: no checkpoint to keep as the final model, and no epoch to cut")
            break
        folder = f"{result.attempts[0].output_dir}-repair-{first_folder + attempt.number}"
        next_args, start, checkpoint, line = _plan(attempt, failure, changes, folder)
        _decide(result, FAILED, f"{at}: {line}")  # failed, until an attempt ends healthy
        changed = {name: (attempt.hyperparameters.get(name), value) for name, value in changes.items()}
        attempt = _train(
            build, next_args, Attempt(attempt.number + 1, next_args.output_dir, start, checkpoint, changed), result
        )
    if attempt.number and attempt.failure is None:
        result.trainer.save_model()  # into the attempt's own output dir: the original's files stay as they were
        result.final_model = attempt.output_dir
        _decide(result, REPAIRED, f"attempt {attempt.number} ended healthy; final model in {attempt.output_dir}")
    elif attempt.failure is not None and not result.story:  # max_repairs 0: diagnosed, not repaired
        result.status = FAILED
    _write(result)
    return result


def _plan(
    attempt: Attempt, failure: Finding, changes: dict[str, Any], output_dir: str
) -> tuple[TrainingArguments, int, str | None, str]:
    """The next attempt's arguments (the last attempt's, changed), its start step and checkpoint, and what it does:
    the steps from the checkpoint to where the failed attempt planned to end."""
    next_args = copy.deepcopy(attempt.args)
    for name, value in changes.items():
        setattr(next_args, name, value)
    next_args.output_dir = output_dir
    changed = _changes({name: (attempt.hyperparameters.get(name), value) for name, value in changes.items()})
    if failure.kind == OVERFITTING:  # its checkpoints are on the way to overfitting: the whole run again, shorter
        return next_args, 0, None, f"training again from the start with {changed} into {next_args.output_dir}"
    choice = checkpoint_for(failure, attempt.output_dir)
    total = attempt.start_step + attempt.planned_steps
    start = attempt.start_step + int(choice.path.name.rsplit("-", 1)[1]) if choice.path else total
    checkpoint = str(choice.path) if choice.path else None
    if start >= total:  # no clean checkpoint of its own (or only its last): back to where the attempt began
        start, checkpoint = attempt.start_step, attempt.checkpoint
    next_args.max_steps = total - start
    if checkpoint:
        checked = ", weights checked: all finite" if checkpoint == str(choice.path) and choice.verified else ""
        origin = f"back to {checkpoint} (step {start}{checked})"
    else:
        origin = "back to the start (no clean checkpoint before the failure)"
    if choice.skipped:
        origin += "; skipped " + "; ".join(choice.skipped)
    line = f"{origin}; {changed}; training the remaining {total - start} steps into {next_args.output_dir}"
    return next_args, start, checkpoint, line


def _train(
    build: Callable[[TrainingArguments], Trainer], args: TrainingArguments, attempt: Attempt, result: RepairResult
) -> Attempt:
    """Build and train one attempt (after the previous Trainer is let go: one model in memory at a time)."""
    result.trainer = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trainer = build(args)
    if Path(trainer.args.output_dir) != Path(attempt.output_dir):
        raise ValueError(
            f"build() must give the Trainer the arguments it receives (output_dir {attempt.output_dir}, "
            f"not {trainer.args.output_dir}): a repair never writes into another run's folder"
        )
    diagnosers = [c for c in trainer.callback_handler.callbacks if isinstance(c, DiagnosisCallback)]
    if not diagnosers:
        diagnosers = [Diagnoser(stop_on=KINDS)]
        trainer.add_callback(diagnosers[0])
    if attempt.number:
        original = result.attempts[0].output_dir
        began = (
            f"{Path(attempt.checkpoint).name} (its step 0 is that run's step {attempt.start_step})"
            if attempt.checkpoint
            else "the start"
        )
        header = f"repair attempt {attempt.number} of {original}, begun from {began}"
        for diagnoser in diagnosers:
            diagnoser.context = [header, *result.story]
    if attempt.checkpoint:
        _load_weights(trainer, attempt.checkpoint)
    result.trainer = trainer
    trainer.train()
    state, facts = trainer.state, diagnosers[0].engine.history.facts
    attempt.steps, attempt.planned_steps = state.global_step, state.max_steps
    attempt.findings = sorted((f for d in diagnosers for f in d.diagnoses), key=lambda f: f.step)
    attempt.stopped_by = next((d.stopped_by for d in diagnosers if d.stopped_by), None)
    attempt.eval_losses = [
        (attempt.start_step + e["step"], e["eval_loss"]) for e in state.log_history if "eval_loss" in e
    ]
    attempt.args, attempt.hyperparameters, attempt.objective = (
        trainer.args,
        dict(facts.hyperparameters),
        facts.objective,
    )
    result.attempts.append(attempt)
    _write(result)
    return attempt


def _load_weights(trainer: Trainer, checkpoint: str) -> None:
    """The checkpoint's weights into the Trainer's model (an adapter for a PEFT model), with Trainer's own loader,
    the one ``resume_from_checkpoint`` and ``load_best_model_at_end`` use; the optimizer and schedule stay fresh."""
    trainer._load_from_checkpoint(checkpoint)  # Trainer's weights-only loader has no public name


def _best_checkpoint(trainer: Trainer | None, failure: Finding, output_dir: str) -> str | None:
    """The overfitting run's best checkpoint: Trainer's record of it, else the newest clean one by the best eval."""
    best = trainer.state.best_model_checkpoint if trainer is not None else None
    if best and Path(best).is_dir():
        return best
    choice = checkpoint_for(failure, output_dir)
    return str(choice.path) if choice.path else None


def _first_free_number(original: str) -> int:
    """The N of the first attempt's folder, ``<original>-repair-N``: past every such folder that holds anything (an
    earlier repair's), so that no attempt writes into another run's folder."""
    base = Path(original)
    taken = [
        int(suffix)
        for folder in base.parent.glob(f"{glob.escape(base.name)}-repair-*")
        if (suffix := folder.name.rsplit("-", 1)[1]).isdigit() and folder.is_dir() and any(folder.iterdir())
    ]
    return max(taken, default=0) + 1


def _changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{name} {_num(before)} → {_num(after)}" for name, (before, after) in changes.items())


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _decide(result: RepairResult, status: str, line: str) -> None:
    """One more line of the story, printed as it happens."""
    result.status = status
    result.story.append(line)
    if result.trainer is None or result.trainer.is_world_process_zero():
        logger.warning("trainwatch repair: %s", line)


def _write(result: RepairResult) -> None:
    """``repair.json`` beside the original's report; a disk that refuses it costs the file, never the training."""
    if not result.attempts or (result.trainer is not None and not result.trainer.is_world_process_zero()):
        return
    try:
        write_json_atomic(Path(result.attempts[0].output_dir) / "trainwatch" / REPORT, result.to_dict())
    except OSError as error:
        logger.error("trainwatch repair: %s not written (%s); training goes on", REPORT, error)
