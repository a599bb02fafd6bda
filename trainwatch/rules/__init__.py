"""One pure rule per failure class: ``observe(history) -> Finding | None``.

Rules know nothing of transformers or files; every threshold is a dataclass field with the fine-tuning lesson's
default. A new failure class is one new module here plus its fixes in :mod:`trainwatch.fixes`.
"""

from __future__ import annotations

from typing import Protocol

from trainwatch.findings import Finding
from trainwatch.history import History
from trainwatch.rules.exploding import ExplodingRule
from trainwatch.rules.flat import FlatRule
from trainwatch.rules.overfitting import OverfittingRule


class Rule(Protocol):
    kind: str

    def observe(self, history: History) -> Finding | None: ...


__all__ = ["ExplodingRule", "FlatRule", "OverfittingRule", "Rule"]
