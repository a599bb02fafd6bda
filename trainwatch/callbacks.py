"""The live feeder: Trainer callbacks that turn hooks into engine updates and act on what it decides.

The decision itself lives in :class:`trainwatch.engine.Engine`; these classes only translate (logs in), act (stop,
report) and keep state across a resume. Every rank sees the same logged values (Trainer reduces them before
``on_log``), so every rank takes the same decision on the same step; what a rank measures itself (the pre-flight's
dataset count, GPU memory) is reduced over the ranks before deciding; only world process zero prints and writes.

A resumed run's history is rebuilt from the checkpoint's ``trainer_state.json`` log history, which holds exactly
the entries ``on_log`` saw: the detectors remember the past in the user's own callback instance, whether or not
``restore_callback_states_from_checkpoint`` is set (a Trainer ``ExportableState`` would be replaced by a copy).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainwatch import preflight as checklist
from trainwatch import run_inspection
from trainwatch.checkpoints import Choice, checkpoint_for
from trainwatch.engine import Engine, build_rules
from trainwatch.findings import EXPLODING, FLAT, KINDS, OVERFITTING, Finding
from trainwatch.fixes import fixes_for
from trainwatch.gradients import (
    BEFORE_EVALUATION,
    GradientProbe,
    blockage_finding,
    cut_finding,
    localized,
    refined,
    sharded,
)
from trainwatch.history import GRAD_NORM, LOSS, REINFORCEMENT, Facts, objective_from_args, predicts_tokens
from trainwatch.nan_origin import LossWatch, Origin
from trainwatch.report import format_finding, to_json, write_json_atomic

logger = logging.getLogger("trainwatch")
Hook = TypeVar("Hook", bound=Callable[..., Any])
REPORT_DIR = "trainwatch"
LOCALIZED = ("zero_gradients", "non_finite")
"""Causes whose finding the gradient probe enriches with the first tensor concerned."""


def _contained(hook: Hook) -> Hook:
    """trainwatch must never break the training it watches: an internal error is reported once, then we go quiet."""

    @functools.wraps(hook)
    def wrapper(self: DiagnosisCallback, *args: Any, **kwargs: Any) -> Any:
        if self.disabled:
            return None
        try:
            return hook(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - containment is the point
            self._switch_off(hook.__name__, error)
            return None

    return wrapper  # type: ignore[return-value]


class DiagnosisCallback(TrainerCallback):
    """Watches one or more failure classes of a Trainer run.

    Args:
        stop_on: failure kinds ("exploding", "flat", "overfitting") that stop training when decided. Stopping
            never deletes a checkpoint; the report names the checkpoint to go back to.
        report: print each finding when decided (world process zero), write ``<output_dir>/trainwatch/
            diagnosis.json`` (``diagnosis-<kind>.json`` for a single-concern detector, so that several
            trainwatch callbacks never overwrite each other's report), and add the report to TensorBoard when it is
            among ``report_to``.
        smoothing: train losses whose median makes the smoothed level the rules compare.
        preflight: run the pre-flight checklist (:mod:`trainwatch.preflight`) at the start, at step 1 and at step
            ``early_loss_step``; its items go into the report and ``diagnosis.json``. A train set in which no
            example has a target token fails the checklist before the first step and is decided "flat" (cause
            ``no_target_tokens``) there, from the data, before the logs could show it; with "flat" in ``stop_on``
            training stops (Trainer reads the stop flag after its first step only). So is a model no gradient can
            reach, with its cause (``nothing_trainable``, ``lora_alpha_zero``, ...: :mod:`trainwatch.gradients`).
        early_loss_step: the step at which the loss must be lower than at the start.
        probe_gradients: read the trainable parameters' gradients on the few steps that need it
            (:mod:`trainwatch.gradients`): the first steps, around each evaluation, after a grad norm of 0, NaN/inf
            or a spike. Trainable tensors that stop receiving gradients while others still learn are decided "flat"
            (cause ``frozen_layers``), and a ``zero_gradients`` or ``non_finite`` finding names the first tensor
            concerned. Off under DeepSpeed and FSDP, whose gradients are sharded.
        max_seq_length: the length your data pipeline cut examples to, for the pre-flight's count of responses
            truncated away (read from the arguments' ``max_length``/``max_seq_length``, as TRL's ``SFTConfig``
            has them, when not given; unknown: that item is skipped).
        **thresholds: the rules' thresholds by name: ``max_loss``, ``uniform_factor``, ``rise_factor``,
            ``uniform_margin`` (exploding); ``patience_steps``, ``min_logs``, ``tolerance``, ``noise_allowance``,
            ``confirm_steps``, ``confirm_logs``, ``zero_grad_tolerance``, ``uniform_margin``,
            ``high_learning_rate`` (flat); ``train_below``, ``val_above``, ``rising_evals``, ``min_rise``,
            ``sharp_rise``, ``train_fall`` (overfitting). See :mod:`trainwatch.rules` for their meaning and
            defaults; an unknown name is a TypeError.
    """

    kinds: tuple[str, ...] = KINDS
    report_name = "diagnosis"

    def __init__(
        self,
        stop_on: Iterable[str] = (),
        *,
        report: bool = True,
        smoothing: int = 3,
        preflight: bool = True,
        early_loss_step: int = 10,
        max_seq_length: int | None = None,
        probe_gradients: bool = True,
        **thresholds: Any,
    ) -> None:
        self.stop_on = tuple(stop_on)
        unknown = set(self.stop_on) - set(self.kinds)
        if unknown:
            raise ValueError(f"stop_on names {sorted(unknown)}, which {type(self).__name__} does not watch: {self.kinds}")
        self.report = report
        self.thresholds = thresholds
        self.smoothing = smoothing
        self.preflight = preflight
        self.early_loss_step = early_loss_step
        self.max_seq_length = max_seq_length
        self.engine = Engine(build_rules(self.kinds, **thresholds), smoothing=smoothing)
        self.checks: list[checklist.Check] = []
        """The pre-flight checklist so far (items at step 1 and ``early_loss_step`` join when known)."""
        self.context: list[str] = []
        """How this run came to be, when trainwatch started it (a repair: the failure before, the checkpoint it went
        back to, the change): written into ``diagnosis.json`` under ``"context"`` and atop the TensorBoard text."""
        self.disabled = False
        self._output_dir: str | None = None
        self._tensorboard_dir: str | None = None
        self._stopped_by: Finding | None = None
        self._run_facts: dict[str, int] = {}
        self._begin_step = 0
        self._early_loss_due = False
        self.probe = GradientProbe() if probe_gradients and {EXPLODING, FLAT} & set(self.kinds) else None
        self._probe: GradientProbe | None = None  # the probe while a run that it can read is on
        self._watch: LossWatch | None = None  # where a NaN is born, with the probe
        self._origin: Origin | None = None  # what its replay found
        self._unlocalized: list[Finding] = []

    # -- what users read --------------------------------------------------------------------------------------------
    @property
    def diagnoses(self) -> list[Finding]:
        return list(self.engine.findings)

    @property
    def verdict(self) -> str:
        return self.engine.verdict

    @property
    def stopped_by(self) -> Finding | None:
        """The finding that stopped training (``stop_on``), if one did."""
        return self._stopped_by

    # -- hooks ------------------------------------------------------------------------------------------------------
    @_contained
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any) -> None:
        self._begin_step = state.global_step
        self._early_loss_due = self.preflight and state.global_step < self.early_loss_step
        self._output_dir = args.output_dir
        self._tensorboard_dir = _tensorboard_dir(args)
        self._resume(state, _facts(args, model, state))
        self._unlocalized = []
        self._probe = self.probe if self.probe is not None and not sharded(args) else None
        if self._probe is not None:
            self._probe.reset()
            self._probe.max_grad_norm = float(args.max_grad_norm or 0.0)
        if self._watch is not None:
            self._watch.close()
        self._origin = None
        watching = self._probe is not None and model is not None and not args.torch_compile  # a hook breaks graphs
        self._watch = LossWatch(model, args.gradient_accumulation_steps) if watching else None
        if self.preflight:
            self._preflight_begin(args, state, control, model, kwargs)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """GPU memory after step 1. Not ``@_contained``: every rank joins the reduction, one whose monitoring is off
        included, or the others would wait for it forever."""
        if not (self.preflight and state.global_step == self._begin_step + 1 and run_inspection.on_cuda(args)):
            return
        try:
            check = checklist.check_memory(*run_inspection.gpu_memory(args))
            if not self.disabled:
                self._add_checks(state, [check])
        except Exception as error:  # noqa: BLE001 - as _contained
            if not self.disabled:
                self._switch_off("on_step_end", error)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Contained as ``@_contained`` does, written out: this runs on every logged step, one call less counts."""
        if self.disabled:
            return
        try:
            logs = logs or {}
            if self._probe is not None and "grad_norm" in logs:
                self._probe.logged(state.global_step, logs["grad_norm"])
            for finding in self.engine.observe(state.global_step, logs):
                if self._probe is not None and finding.cause in LOCALIZED:
                    finding = self._localize(finding, kwargs.get("model"))
                self._act(finding, state, control)
            if self._early_loss_due and state.global_step >= self.early_loss_step and LOSS in logs:
                self._check_early_loss(state)
        except Exception as error:  # noqa: BLE001 - as _contained
            self._switch_off("on_log", error)

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any) -> None:
        """The gradient probe, on the steps it is armed for, and the loss watch (contained as ``@_contained`` does,
        written out: this runs on every optimizer step, and unarmed it must cost no more than the tests below).

        The gradients read here are the ones every rank is about to apply: DDP has averaged them over the ranks
        before Trainer clips them and calls this hook, so every rank reads the same values and decides alike. The
        weights are still the ones this step's forward passes ran with: a NaN loss is replayed here, before the
        optimizer writes it into every weight.
        """
        probe = self._probe
        if probe is None or self.disabled:
            return
        try:
            if self._watch is not None and self._watch.check(state.global_step + 1):
                self._origin, self._watch = self._watch.origin, None  # one replay a run: the first NaN was born
            every = state.eval_steps if args.eval_strategy == "steps" else 0
            if every and (state.global_step + 1) % every in (0, every - 1):
                probe.arm(BEFORE_EVALUATION)  # the reference that the first steps after the evaluation are judged by
            if probe.armed:
                self._read_gradients(probe, model, state, control)
        except Exception as error:  # noqa: BLE001 - as _contained
            self._switch_off("on_pre_optimizer_step", error)

    @_contained
    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._probe is not None:
            self._probe.evaluated(state.global_step)

    @_contained
    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if not (self.report and state.is_world_process_zero):
            return
        path = self._write_report(state)
        stopped = f", training stopped at step {self._stopped_by.step}" if self._stopped_by else ""
        logger.warning("trainwatch: verdict %s%s; report in %s", self.verdict, stopped, path)
        self._write_tensorboard(state)

    def _switch_off(self, where: str, error: Exception) -> None:
        self.disabled = True
        logger.error("trainwatch: internal error in %s (%r); monitoring is off, training goes on", where, error)

    # -- acting -----------------------------------------------------------------------------------------------------
    def _act(self, finding: Finding, state: TrainerState, control: TrainerControl) -> None:
        stop = finding.kind in self.stop_on and self._stopped_by is None
        if stop:
            control.should_training_stop = True
            self._stopped_by = finding
        if self.report and state.is_world_process_zero:
            keep = self._checkpoint_to_keep(finding, state).advice()
            advice = f"\n  checkpoint to go back to: {keep}" if keep else ""
            action = "\n  stopping training (stop_on)" if stop else ""
            logger.warning("trainwatch: %s%s%s", format_finding(finding), advice, action)
            self._write_report(state)

    def _checkpoint_to_keep(self, finding: Finding, state: TrainerState) -> Choice:
        """The checkpoint worth going back to: the best one, or the newest clean one before the failure began."""
        if finding.kind == OVERFITTING and state.best_model_checkpoint:
            return Choice(Path(state.best_model_checkpoint))
        return checkpoint_for(finding, self._output_dir)

    def _write_report(self, state: TrainerState) -> Path:
        stopped = self._stopped_by.to_dict() if self._stopped_by else None
        choices = {f.kind: self._checkpoint_to_keep(f, state) for f in self.engine.findings}
        keep = {kind: str(c.path) if c.path else None for kind, c in choices.items()}
        data = to_json(self.engine.findings, source="live", step=state.global_step, stopped_by=stopped, checkpoints_to_keep=keep)
        data["facts"] = {"vocab_size": self.engine.history.facts.vocab_size}  # the model's class told whether it counts
        if self.context:
            data["context"] = self.context
        if self.preflight:
            data["preflight"] = {**self._run_facts, "checks": [c.to_dict() for c in self.checks]}
        return write_json_atomic(Path(self._output_dir or ".") / REPORT_DIR / f"{self.report_name}.json", data)

    def _write_tensorboard(self, state: TrainerState) -> None:
        if not self._tensorboard_dir:
            return
        from torch.utils.tensorboard import SummaryWriter

        text = "\n\n".join(format_finding(f).replace("\n", "  \n") for f in self.engine.findings) or "no failure found"
        if self.context:
            text = "  \n".join(self.context) + "\n\n" + text
        if self.checks:
            text += "\n\n" + checklist.format_checks(self.checks).replace("\n", "  \n")
        with SummaryWriter(log_dir=self._tensorboard_dir, filename_suffix=".trainwatch") as writer:
            writer.add_text(f"trainwatch/{self.report_name}", f"**verdict: {self.verdict}**  \n\n{text}", state.global_step)

    # -- resume -----------------------------------------------------------------------------------------------------
    def _resume(self, state: TrainerState, facts: Facts) -> None:
        """Rebuild the engine from the run's own log history: empty for a new run, the past for a resumed one.

        Findings already decided are kept without acting on them again (the user resumed knowingly); a run
        resumed from an earlier checkpoint than the one this instance last saw forgets the abandoned steps.
        """
        self.engine = Engine(build_rules(self.kinds, **self.thresholds), smoothing=self.smoothing, facts=facts)
        self._stopped_by = None
        self.checks = []
        past = [(int(e["step"]), e) for e in state.log_history if isinstance(e.get("step"), int)]
        self.engine.replay(past)
        if past and self.report and state.is_world_process_zero:
            found = "; ".join(f"{f.kind} ({f.cause}) at step {f.step}" for f in self.engine.findings) or "nothing"
            logger.warning("trainwatch: resumed at step %d; %d logged entries replayed, found so far: %s",
                           state.global_step, len(past), found)

    # -- pre-flight ---------------------------------------------------------------------------------------------------
    def _preflight_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any, hooks: dict[str, Any]) -> None:
        """The checklist items known before the first step; stops at once on a train set without a single target."""
        total, per_epoch = state.max_steps, run_inspection.steps_per_epoch(state, args, hooks.get("train_dataloader"))
        self._run_facts = {"effective_batch_size": checklist.effective_batch_size(args), "expected_total_steps": total}
        max_length = self.max_seq_length or getattr(args, "max_length", None) or getattr(args, "max_seq_length", None)
        with_targets, count, data_checks = run_inspection.inspect_data(args, model, hooks, max_length)
        params = self.engine.history.facts.hyperparameters
        trainable, blockage = run_inspection.check_trainable(model, params)
        checks = [
            *data_checks,
            trainable,
            checklist.check_precision(
                args, cuda=run_inspection.on_cuda(args), bf16_supported=run_inspection.bf16_supported(args)
            ),
            checklist.check_gradient_checkpointing(args, run_inspection.parameter_count(model)),
            checklist.check_warmup(args.get_warmup_steps(total), total),
            checklist.check_grad_clipping(args, quantized=run_inspection.quantized(model)),
            checklist.check_learning_rate(args, lora=bool(getattr(model, "peft_config", None))),
            checklist.check_evaluation(args, per_epoch),
            checklist.check_save_limit(args),
        ]
        if not run_inspection.on_cuda(args):  # known now; on a GPU it is measured after step 1
            checks.append(checklist.check_memory(None, None))
        self._add_checks(state, checks, header=f"effective batch size {self._run_facts['effective_batch_size']}, "
                                                f"expected total steps {total}")
        if with_targets == 0 and state.global_step == 0:
            self._no_targets(count, state, control)
        elif blockage is not None and state.global_step == 0 and FLAT in self.kinds:
            finding = blockage_finding(blockage, state.global_step, params, "pre-flight")  # certain before any step
            self.engine.add_findings([finding])
            self._act(finding, state, control)

    def _no_targets(self, count: checklist.TargetCount | None, state: TrainerState, control: TrainerControl) -> None:
        """No example can teach anything: decide "flat" now, with the counted evidence, instead of after steps."""
        inspected = count.inspected if count else None
        examples = f"the {inspected} inspected" if inspected else "the inspected"
        finding = Finding(
            FLAT, "no_target_tokens", state.global_step,
            f"pre-flight: none of {examples} train examples has a target token (every label is -100)",
            {"decided_by": "pre-flight", "inspected_examples": inspected,
             "dataset_size": count.dataset_size if count else None, "examples_with_targets": 0},
            fixes_for("no_target_tokens", self.engine.history.facts.hyperparameters),
        )
        if FLAT in self.kinds:
            self.engine.add_findings([finding])
            self._act(finding, state, control)

    # -- gradient probe -------------------------------------------------------------------------------------------
    def _read_gradients(self, probe: GradientProbe, model: Any, state: TrainerState, control: TrainerControl) -> None:
        """One armed read: decide ``frozen_layers`` once it is confirmed, localise findings still waiting for it.

        Like the pre-flight's, this decision comes from outside the logged series (no log holds per-tensor
        gradients), so it says so: ``evidence["decided_by"] == "gradient probe"``.
        """
        reading = probe.read(model, state.global_step + 1)
        if reading is None:
            return
        cut = probe.cut()
        if cut is not None and FLAT in self.kinds and all(f.kind != FLAT for f in self.engine.findings):
            finding = cut_finding(cut, model, self.engine.history.facts.hyperparameters, probe.max_names)
            self.engine.add_findings([finding])
            self._act(finding, state, control)
        if self._unlocalized and probe.localization() is not None:
            waiting, self._unlocalized = self._unlocalized, []
            for finding in waiting:
                self._relocalize(finding, self._localize(finding, None), state)

    def _localize(self, finding: Finding, model: Any) -> Finding:
        """``finding`` with the probe's evidence on the first tensor concerned (remembered until the probe has it), and
        for a NaN, where the replay of its step found it born."""
        probe = self._probe
        evidence = probe.localization() if probe is not None else None
        extra: dict[str, Any] = dict(evidence or {})
        if finding.cause == "non_finite" and model is not None and probe is not None:
            extra.update(probe.non_finite_weights(model))  # readable at once, armed or not
        if evidence is None:
            self._unlocalized.append(finding)
        zero = finding.cause == "zero_gradients" and model is not None
        blockage = run_inspection.blocked_gradients(model) if zero else None  # the cause the configuration shows
        origin = self._origin if finding.cause == "non_finite" and "nan_replay_step" not in finding.evidence else None
        if origin is not None and origin.step > finding.step:
            origin = None  # a NaN after this finding's: not the one it is about
        if not extra and blockage is None and origin is None:
            return finding
        enriched = refined(finding, blockage, self.engine.history.facts.hyperparameters)
        enriched = localized(origin.attached_to(enriched) if origin is not None else enriched, extra)
        for i, known in enumerate(self.engine.findings):
            if known is finding:
                self.engine.findings[i] = enriched
        if finding in self._unlocalized and evidence is None:
            self._unlocalized[self._unlocalized.index(finding)] = enriched
        return enriched

    def _relocalize(self, before: Finding, after: Finding, state: TrainerState) -> None:
        """A finding decided earlier now names its tensor: the report is written again (nothing else is redone)."""
        if after is before:
            return
        if self._stopped_by is before:
            self._stopped_by = after
        if self.report and state.is_world_process_zero:
            logger.warning("trainwatch: %s (%s) at step %d localised: %s", after.kind, after.cause, after.step, after.summary)
            self._write_report(state)

    def _check_early_loss(self, state: TrainerState) -> None:
        """The checklist's "loss lower at ``early_loss_step`` than at the start", once two losses are known."""
        loss = self.engine.history[LOSS]
        if loss.count < 2:
            return
        self._early_loss_due = False
        if self.engine.history.facts.objective == REINFORCEMENT:
            skip = checklist.Check(checklist.EARLY_LOSS, checklist.SKIP, "an RL objective's loss is no measure of progress")
            self._add_checks(state, [skip])
            return
        level = self.engine.history.loss_level if self.engine.history.loss_level is not None else loss.last
        grad_norm = self.engine.history[GRAD_NORM]  # logged beside the loss: a NaN hidden as 0.0 shows there
        beside = grad_norm.last if grad_norm.last_step == loss.last_step else None
        check = checklist.check_early_loss(
            loss.first, loss.first_step, level, state.global_step, last=loss.last, grad_norm=beside
        )
        facts = self.engine.history.facts
        first = checklist.check_first_loss(
            loss.first, loss.first_step, facts.reference_loss if facts.objective is None else None,
            accumulation=facts.hyperparameters.get("gradient_accumulation_steps") or 1,
        )
        self._add_checks(state, [check, first])

    def _add_checks(self, state: TrainerState, checks: list[checklist.Check], header: str = "") -> None:
        self.checks.extend(checks)
        if self.report and state.is_world_process_zero:
            title = "trainwatch pre-flight" + (f" ({header})" if header else "")
            logger.warning("%s", checklist.format_checks(checks, title=title))


class Diagnoser(DiagnosisCallback):
    """Watches every failure class: ``trainer.add_callback(Diagnoser(stop_on=("exploding", "flat")))``."""


class ExplodingLossDetector(DiagnosisCallback):
    """Watches for NaN/inf, loss spikes and sustained rises only (``max_loss``, ``uniform_factor``,
    ``rise_factor``, ``uniform_margin``)."""

    kinds = (EXPLODING,)
    report_name = f"diagnosis-{EXPLODING}"


class FlatLossDetector(DiagnosisCallback):
    """Watches for a run that does not learn only (``patience_steps``, ``min_logs``, ``tolerance``, ``confirm_steps``,
    ``confirm_logs``, ``zero_grad_tolerance``)."""

    kinds = (FLAT,)
    report_name = f"diagnosis-{FLAT}"


class OverfittingDetector(DiagnosisCallback):
    """Watches the train/eval pair only (``train_below``, ``val_above``, ``rising_evals``, ``min_rise``,
    ``sharp_rise``, ``train_fall``)."""

    kinds = (OVERFITTING,)
    report_name = f"diagnosis-{OVERFITTING}"


# -- reading the run's facts ----------------------------------------------------------------------------------------
def _facts(args: TrainingArguments, model: Any, state: TrainerState) -> Facts:
    """Vocab size (judges a language model's loss), planned length (judges a slow decline) and the arguments the
    fixes quote."""
    params = {k: v for k, v in args.to_dict().items() if isinstance(v, (int, float, str, bool))}
    vocab_size = None
    config = getattr(model, "config", None)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under PEFT's wrapper
    if config is not None and predicts_tokens([type(model).__name__, type(base).__name__]) is not False:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        vocab_size = getattr(text_config, "vocab_size", None)
    for peft_config in (getattr(model, "peft_config", None) or {}).values():
        for ours, theirs in (("lora_r", "r"), ("lora_alpha", "lora_alpha"), ("lora_dropout", "lora_dropout")):
            if isinstance(getattr(peft_config, theirs, None), (int, float)):
                params[ours] = getattr(peft_config, theirs)
        break
    objective = objective_from_args(args.to_dict())  # from every field: TRL's marker fields are lists and None
    return Facts(vocab_size=vocab_size, hyperparameters=params, max_steps=state.max_steps or None, objective=objective)


def _tensorboard_dir(args: TrainingArguments) -> str | None:
    """The run directory TensorBoardCallback writes to (it runs before us and has created it by now)."""
    if "tensorboard" not in (args.report_to or []):
        return None
    if os.getenv("TENSORBOARD_LOGGING_DIR"):
        return os.path.expanduser(os.environ["TENSORBOARD_LOGGING_DIR"])
    runs = Path(args.output_dir) / "runs"
    recent = [d for d in runs.glob("*") if d.is_dir() and d.stat().st_mtime >= time.time() - 3600]
    return str(max(recent, key=lambda d: d.stat().st_mtime)) if recent else None
