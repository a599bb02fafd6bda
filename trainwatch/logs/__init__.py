"""Readers for what a finished (or crashed) run left on disk: TensorBoard event files, trainer_state.json, W&B
transaction logs, MLflow stores, LLaMA-Factory's trainer_log.jsonl and Lightning's metrics.csv.

Each turns a run into the entries Trainer's ``on_log`` saw, ``(step, {"loss": ..., "grad_norm": ..., ...})`` with
Trainer's own keys, and the facts it knows, behind one interface (:class:`trainwatch.logs.source.RunLog`), so
:meth:`trainwatch.engine.Engine.replay` judges them exactly as the live callback did, whatever the format.
Damaged input never raises mid-read: each problem becomes a note for the report. Only input with nothing readable
at all raises :class:`LogReadError`.
"""

from __future__ import annotations


class LogReadError(Exception):
    """The input cannot be analysed at all (missing, unreadable, not a log); the message is one line for a person."""
