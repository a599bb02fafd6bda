"""Readers for what a finished (or crashed) run left on disk: TensorBoard event files and trainer_state.json.

Both turn a run into the entries Trainer's ``on_log`` saw, ``(step, {"loss": ..., "grad_norm": ..., ...})`` with
Trainer's own keys, so :meth:`trainwatch.engine.Engine.replay` judges them exactly as the live callback did.
Damaged input never raises mid-read: each problem becomes a note for the report. Only input with nothing readable
at all raises :class:`LogReadError`.
"""

from __future__ import annotations


class LogReadError(Exception):
    """The input cannot be analysed at all (missing, unreadable, not a log); the message is one line for a person."""
