"""The live feeder: Trainer callbacks that turn hooks into engine updates and act on what it decides.

The decision itself lives in :class:`trainwatch.engine.Engine`; these classes only translate (logs in), act (stop,
report) and keep state across a resume. Every rank sees the same logged values (Trainer reduces them before
``on_log``), so every rank takes the same decision on the same step; only world process zero prints and writes.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from trainwatch.engine import Engine, build_rules
from trainwatch.findings import EXPLODING, FLAT, KINDS, OVERFITTING, Finding
from trainwatch.history import Facts
from trainwatch.report import format_finding, to_json, write_json_atomic

logger = logging.getLogger("trainwatch")
Hook = TypeVar("Hook", bound=Callable[..., Any])
REPORT_FILE = Path("trainwatch") / "diagnosis.json"


def _contained(hook: Hook) -> Hook:
    """trainwatch must never break the training it watches: an internal error is reported once, then we go quiet."""

    @functools.wraps(hook)
    def wrapper(self: DiagnosisCallback, *args: Any, **kwargs: Any) -> Any:
        if self.disabled:
            return None
        try:
            return hook(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - containment is the point
            self.disabled = True
            logger.error("trainwatch: internal error in %s (%r); monitoring is off, training goes on", hook.__name__, error)
            return None

    return wrapper  # type: ignore[return-value]


class DiagnosisCallback(TrainerCallback, ExportableState):
    """Watches one or more failure classes of a Trainer run.

    Args:
        stop_on: failure kinds ("exploding", "flat", "overfitting") that stop training when decided. Stopping
            never deletes a checkpoint; the report names the checkpoint to go back to.
        report: print each finding when decided (world process zero), write ``<output_dir>/trainwatch/
            diagnosis.json``, and add the report to TensorBoard when it is among ``report_to``.
        smoothing: train losses whose median makes the smoothed level the rules compare.
        **thresholds: the rules' thresholds by name: ``max_loss``, ``rise_factor`` (exploding);
            ``patience_steps``, ``tolerance``, ``confirm_steps`` (flat); ``train_below``, ``val_above``,
            ``rising_evals``, ``min_rise`` (overfitting). See :mod:`trainwatch.rules` for their meaning.
    """

    kinds: tuple[str, ...] = KINDS

    def __init__(self, stop_on: Iterable[str] = (), *, report: bool = True, smoothing: int = 3, **thresholds: Any) -> None:
        self.stop_on = tuple(stop_on)
        unknown = set(self.stop_on) - set(self.kinds)
        if unknown:
            raise ValueError(f"stop_on names {sorted(unknown)}, which {type(self).__name__} does not watch: {self.kinds}")
        self.report = report
        self.thresholds = thresholds
        self.smoothing = smoothing
        self.engine = Engine(build_rules(self.kinds, **thresholds), smoothing=smoothing)
        self.disabled = False
        self._output_dir: str | None = None
        self._tensorboard_dir: str | None = None
        self._stopped_by: Finding | None = None

    # -- what users read --------------------------------------------------------------------------------------------
    @property
    def diagnoses(self) -> list[Finding]:
        return list(self.engine.findings)

    @property
    def verdict(self) -> str:
        return self.engine.verdict

    # -- hooks ------------------------------------------------------------------------------------------------------
    @_contained
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any) -> None:
        self.engine.history.facts = _facts(args, model)
        self._output_dir = args.output_dir
        self._tensorboard_dir = _tensorboard_dir(args)

    @_contained
    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for finding in self.engine.observe(state.global_step, logs or {}):
            self._act(finding, state, control)

    @_contained
    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if not (self.report and state.is_world_process_zero):
            return
        path = self._write_report(state)
        stopped = f", training stopped at step {self._stopped_by.step}" if self._stopped_by else ""
        logger.warning("trainwatch: verdict %s%s; report in %s", self.verdict, stopped, path)
        self._write_tensorboard(state)

    # -- acting -----------------------------------------------------------------------------------------------------
    def _act(self, finding: Finding, state: TrainerState, control: TrainerControl) -> None:
        stop = finding.kind in self.stop_on and self._stopped_by is None
        if stop:
            control.should_training_stop = True
            self._stopped_by = finding
        if self.report and state.is_world_process_zero:
            keep = self._checkpoint_to_keep(finding, state)
            advice = f"\n  checkpoint to go back to: {keep}" if keep else ""
            action = "\n  stopping training (stop_on)" if stop else ""
            logger.warning("trainwatch: %s%s%s", format_finding(finding), advice, action)
            self._write_report(state)

    def _checkpoint_to_keep(self, finding: Finding, state: TrainerState) -> str | None:
        """The checkpoint worth going back to: the best one, or for an explosion the last one before its onset."""
        if finding.kind == OVERFITTING and state.best_model_checkpoint:
            return state.best_model_checkpoint
        onset = finding.evidence.get("onset_step") if finding.kind in (EXPLODING, OVERFITTING) else None
        limit = onset if isinstance(onset, int) else finding.step
        steps = [s for s in _checkpoint_steps(self._output_dir) if s <= limit]
        return str(Path(self._output_dir or ".") / f"checkpoint-{max(steps)}") if steps else None

    def _write_report(self, state: TrainerState) -> Path:
        stopped = self._stopped_by.to_dict() if self._stopped_by else None
        keep = {f.kind: self._checkpoint_to_keep(f, state) for f in self.engine.findings}
        data = to_json(self.engine.findings, source="live", step=state.global_step, stopped_by=stopped, checkpoints_to_keep=keep)
        return write_json_atomic(Path(self._output_dir or ".") / REPORT_FILE, data)

    def _write_tensorboard(self, state: TrainerState) -> None:
        if not self._tensorboard_dir:
            return
        from torch.utils.tensorboard import SummaryWriter

        text = "\n\n".join(format_finding(f).replace("\n", "  \n") for f in self.engine.findings) or "no failure found"
        with SummaryWriter(log_dir=self._tensorboard_dir, filename_suffix=".trainwatch") as writer:
            writer.add_text("trainwatch/diagnosis", f"**verdict: {self.verdict}**  \n\n{text}", state.global_step)

    # -- resume (transformers ExportableState) ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        args = {"stop_on": list(self.stop_on), "report": self.report, "smoothing": self.smoothing, **self.thresholds}
        return {"args": args, "attributes": {"engine_state": self.engine.state_dict()}}

    @property
    def engine_state(self) -> dict[str, Any]:
        return self.engine.state_dict()

    @engine_state.setter
    def engine_state(self, state: dict[str, Any]) -> None:
        self.engine.load_state_dict(state)


class Diagnoser(DiagnosisCallback):
    """Watches every failure class: ``trainer.add_callback(Diagnoser(stop_on=("exploding", "flat")))``."""


class ExplodingLossDetector(DiagnosisCallback):
    """Watches for NaN/inf, loss spikes and sharp rises only (thresholds ``max_loss``, ``rise_factor``)."""

    kinds = (EXPLODING,)


class FlatLossDetector(DiagnosisCallback):
    """Watches for a run that does not learn only (``patience_steps``, ``tolerance``, ``confirm_steps``)."""

    kinds = (FLAT,)


class OverfittingDetector(DiagnosisCallback):
    """Watches the train/eval pair only (``train_below``, ``val_above``, ``rising_evals``, ``min_rise``)."""

    kinds = (OVERFITTING,)


# -- reading the run's facts ----------------------------------------------------------------------------------------
def _facts(args: TrainingArguments, model: Any) -> Facts:
    """Vocab size (judges a language model's loss) and the arguments the fixes quote."""
    params = {k: v for k, v in args.to_dict().items() if isinstance(v, (int, float, str, bool))}
    vocab_size = None
    config = getattr(model, "config", None)
    if config is not None:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        vocab_size = getattr(text_config, "vocab_size", None)
    for peft_config in (getattr(model, "peft_config", None) or {}).values():
        for ours, theirs in (("lora_r", "r"), ("lora_alpha", "lora_alpha"), ("lora_dropout", "lora_dropout")):
            if isinstance(getattr(peft_config, theirs, None), (int, float)):
                params[ours] = getattr(peft_config, theirs)
        break
    return Facts(vocab_size=vocab_size, hyperparameters=params)


def _tensorboard_dir(args: TrainingArguments) -> str | None:
    """The run directory TensorBoardCallback writes to (it runs before us and has created it by now)."""
    if "tensorboard" not in (args.report_to or []):
        return None
    if os.getenv("TENSORBOARD_LOGGING_DIR"):
        return os.path.expanduser(os.environ["TENSORBOARD_LOGGING_DIR"])
    runs = Path(args.output_dir) / "runs"
    recent = [d for d in runs.glob("*") if d.is_dir() and d.stat().st_mtime >= time.time() - 3600]
    return str(max(recent, key=lambda d: d.stat().st_mtime)) if recent else None


def _checkpoint_steps(output_dir: str | None) -> list[int]:
    if not output_dir or not os.path.isdir(output_dir):
        return []
    return [int(m.group(1)) for name in os.listdir(output_dir) if (m := re.fullmatch(r"checkpoint-(\d+)", name))]
