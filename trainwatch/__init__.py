"""trainwatch: tells you what is wrong with a fine-tuning run, why, and what to change.

The engine (:mod:`trainwatch.engine`, :mod:`trainwatch.rules`) is pure Python; the Trainer callbacks import
transformers only when first used, so ``trainwatch analyze`` starts fast.
"""

from __future__ import annotations

from typing import Any

from trainwatch.engine import Engine, build_rules
from trainwatch.findings import Finding
from trainwatch.history import Facts, History

__version__ = "0.1.0"

_CALLBACKS = ("Diagnoser", "DiagnosisCallback", "ExplodingLossDetector", "FlatLossDetector", "OverfittingDetector")
_REPAIR = ("train_with_repair", "RepairResult")


def __getattr__(name: str) -> Any:
    if name == "analyze":
        from trainwatch.analysis import analyze

        return analyze
    if name in _CALLBACKS:
        from trainwatch import callbacks

        return getattr(callbacks, name)
    if name in _REPAIR:
        from trainwatch import repair

        return getattr(repair, name)
    raise AttributeError(f"module 'trainwatch' has no attribute {name!r}")


__all__ = ["Engine", "Facts", "Finding", "History", "analyze", "build_rules", *_CALLBACKS, *_REPAIR]
