"""The peers trainwatch is measured against, each run for real where it is installable, else ported from its source.

Every peer here answers one question about one finished run: at which optimizer step would it have stopped (or
flagged) the run, or ``None`` if never. They see the same recorded series trainwatch saw, in the form the peer
itself is fed in its own framework:

* HF ``EarlyStoppingCallback`` runs for real inside the Trainer run (:class:`RecordingStopper`, which also runs
  trainwatch's ``Diagnoser`` with ``stop_on`` every kind, to see where it would stop), on ``eval_loss``
  with ``metric_for_best_model="eval_loss"`` and ``load_best_model_at_end=True`` as its documentation requires.
* Lightning ``SpikeDetection`` (``lightning.fabric.utilities.spike``) runs for real, with its defaults, on each
  batch's raw loss, through a real single-device CPU ``Fabric`` (:func:`spike_detection_step`).
* The NaN/inf terminators (Keras ``TerminateOnNaN``, fastai ``TerminateOnNaNCallback``) are one line each in their
  sources: stop at the first batch whose loss is NaN or inf (:func:`first_non_finite_step`). Lightning's
  ``EarlyStopping(check_finite=True)`` applies the same test to a logged metric, only when it checks (validation or
  epoch end), so it is never earlier than the per-batch terminators measured here.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class RecordingStopper(TrainerCallback):
    """Runs a real callback that may stop training, records the first step at which it asks to, and lets training go on.

    The wrapped callback's own code decides, in every hook it acts in; only its effect is undone, so that one run
    can measure every detector on the same series. ``should_training_stop`` is set back to what it was before the
    call (the Trainer itself sets it at ``max_steps``, before the last evaluation).
    """

    def __init__(self, inner: TrainerCallback) -> None:
        self.inner = inner
        self.stop_step: int | None = None

    def _forward(self, hook: str, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        before = control.should_training_stop
        control.should_training_stop = False
        getattr(self.inner, hook)(args, state, control, **kwargs)
        if control.should_training_stop and self.stop_step is None:
            self.stop_step = state.global_step
        control.should_training_stop = before

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._forward("on_train_begin", args, state, control, **kwargs)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._forward("on_step_end", args, state, control, **kwargs)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._forward("on_log", args, state, control, **kwargs)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._forward("on_evaluate", args, state, control, **kwargs)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._forward("on_train_end", args, state, control, **kwargs)


def first_non_finite_step(losses: Sequence[tuple[int, float]]) -> int | None:
    """Keras ``TerminateOnNaN`` / fastai ``TerminateOnNaNCallback``: the first step whose loss is NaN or inf."""
    return next((step for step, loss in losses if not math.isfinite(loss)), None)


def spike_detection_step(losses: Sequence[tuple[int, float]], **kwargs: Any) -> int | None:
    """Lightning ``SpikeDetection`` (defaults: window 10, warmup 1, rtol 2.0, finite_only) on per-batch losses.

    Lightning's ``batch_idx`` is the batch's index in its epoch; the step's global 0-based index is passed instead,
    which only helps the detector (its warmup skips ``batch_idx`` 0, i.e. every batch of a one-batch epoch).
    """
    import torch
    from lightning.fabric import Fabric
    from lightning.fabric.utilities.spike import SpikeDetection, TrainingSpikeException

    fabric = Fabric(accelerator="cpu", devices=1)
    with tempfile.TemporaryDirectory() as skip_dir:
        detector = SpikeDetection(exclude_batches_path=skip_dir, **kwargs)
        for batch_idx, (step, loss) in enumerate(losses):
            try:
                detector.on_train_batch_end(fabric, torch.tensor(loss), None, batch_idx)
            except TrainingSpikeException:
                return step
    return None
