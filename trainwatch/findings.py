"""What the engine concludes about a run: one :class:`Finding` per failure class, in the order they were decided."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

EXPLODING = "exploding"
FLAT = "flat"
OVERFITTING = "overfitting"
HEALTHY = "healthy"
KINDS = (EXPLODING, FLAT, OVERFITTING)


@dataclass(frozen=True)
class Finding:
    """One diagnosis: what is wrong (``kind``), why (``cause``), when it was decided, on which numbers, and what to do.

    ``step`` is the optimizer step at which the rule decided; ``evidence`` holds the numbers it rests on (plain
    JSON values); ``fixes`` are ordered, most likely to help first, and concrete where the run's arguments are known.
    """

    kind: str
    cause: str
    step: int
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fixes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["evidence"] = {k: _json_number(v) for k, v in self.evidence.items()}
        return data


def _json_number(value: Any) -> Any:
    """NaN and inf are the evidence of an explosion, but strict JSON has no words for them: spell them out."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def verdict(findings: list[Finding]) -> str:
    """The run's overall class: the first failure decided (the one that would have stopped it), else healthy."""
    return findings[0].kind if findings else HEALTHY
