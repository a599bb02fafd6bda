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
ZERO_GRADIENTS = "zero_gradients"
NOTHING_TRAINABLE = "nothing_trainable"
FROZEN_BY_KBIT_PREPARE = "frozen_by_kbit_prepare"
LORA_ALPHA_ZERO = "lora_alpha_zero"
LORA_WEIGHTS_ZERO = "lora_weights_zero"
CHECKPOINTING_WITHOUT_INPUT_GRADS = "checkpointing_without_input_grads"
LOGGED_CAUSE = {
    NOTHING_TRAINABLE: ZERO_GRADIENTS,
    FROZEN_BY_KBIT_PREPARE: ZERO_GRADIENTS,
    LORA_ALPHA_ZERO: ZERO_GRADIENTS,
    LORA_WEIGHTS_ZERO: ZERO_GRADIENTS,
    CHECKPOINTING_WITHOUT_INPUT_GRADS: ZERO_GRADIENTS,
}
"""Causes told from the model itself (its ``requires_grad`` flags, LoRA scaling and weights, checkpointing), read
live, and the cause its logs alone give when no gradient reaches anything (a grad norm of exactly 0): a replay of
those logs gives that one."""
HIGH, MEDIUM = "high", "medium"
"""A finding's confidence: ``high`` for the lesson's absolute signs (NaN, ≥ 100, train < 0.1 with val > 1.0) and
changes far above the run's own noise (or confirmed by a second signal); ``medium`` for changes just above it."""


def confidence(over_noise: float, threshold: float) -> str:
    """``high`` when a change stood at least twice the ``threshold`` it needed above the noise, else ``medium``."""
    return HIGH if over_noise >= 2 * threshold else MEDIUM


@dataclass(frozen=True)
class Finding:
    """One diagnosis: what is wrong (``kind``), why (``cause``), when it was decided, on which numbers, and what to do.

    ``step`` is the optimizer step at which the rule decided; ``evidence`` holds the numbers it rests on (plain
    JSON values), including how far above the run's own noise a change was (``*_over_noise``) where noise was
    measured; ``fixes`` are ordered, most likely to help first, and concrete where the run's arguments are known;
    ``confidence`` is ``high`` or ``medium`` (see :data:`HIGH`).
    """

    kind: str
    cause: str
    step: int
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fixes: list[str] = field(default_factory=list)
    confidence: str = HIGH

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["evidence"] = {k: _json_number(v) for k, v in self.evidence.items()}
        return data


def _json_number(value: Any) -> Any:
    """NaN and inf are the evidence of an explosion, but strict JSON has no words for them: spell them out."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def logged_cause(cause: str) -> str:
    """The cause the logs alone give for a run whose model shows ``cause`` (``cause`` itself for most)."""
    return LOGGED_CAUSE.get(cause, cause)


def verdict(findings: list[Finding]) -> str:
    """The run's overall class: the first failure decided (the one that would have stopped it), else healthy."""
    return findings[0].kind if findings else HEALTHY
