"""The one diagnosis engine: log entries in, findings out. Both feeders (live, on disk) drive this same object."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from trainwatch.findings import EXPLODING, FLAT, KINDS, OVERFITTING, Finding, verdict
from trainwatch.fixes import fixes_for
from trainwatch.history import Facts, History
from trainwatch.rules import ExplodingRule, FlatRule, OverfittingRule, Rule

RULES: dict[str, type] = {EXPLODING: ExplodingRule, FLAT: FlatRule, OVERFITTING: OverfittingRule}


def build_rules(kinds: Iterable[str] = KINDS, **thresholds: Any) -> list[Rule]:
    """The rules for ``kinds``, each given the thresholds that name one of its fields; an unknown name is an error."""
    kinds = list(kinds)
    rules, used = [], set()
    for kind in kinds:
        cls = RULES[kind]
        names = {f.name for f in dataclasses.fields(cls)}
        rules.append(cls(**{k: v for k, v in thresholds.items() if k in names}))
        used |= names & thresholds.keys()
    unknown = sorted(thresholds.keys() - used)
    if unknown:
        valid = sorted({f.name for kind in kinds for f in dataclasses.fields(RULES[kind])})
        raise TypeError(f"unknown threshold(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return rules


class Engine:
    """Feeds log entries into a :class:`History` and asks each rule, after each entry, whether it has decided.

    Each failure class is decided at most once, at the first entry where its rule fires, so the findings of a run
    depend only on its series: replaying the logs of a finished run gives what the live callback decided.
    """

    def __init__(self, rules: Sequence[Rule] | None = None, *, smoothing: int = 3, facts: Facts | None = None) -> None:
        self.rules = list(rules) if rules is not None else build_rules()
        eval_window = max([16] + [getattr(r, name, 0) + 1 for r in self.rules for name in ("rising_evals", "noise_evals")])
        self.history = History(smoothing=smoothing, eval_window=eval_window, facts=facts)
        self.findings: list[Finding] = []
        self._undecided = list(self.rules)

    @property
    def verdict(self) -> str:
        return verdict(self.findings)

    def observe(self, step: int, logs: Mapping[str, Any]) -> list[Finding]:
        """Record one log entry (Trainer's keys: loss, grad_norm, learning_rate, eval_loss); return new findings."""
        if not self.history.record(step, logs):
            return []
        new = []
        for rule in self._undecided:
            finding = rule.observe(self.history)
            if finding is not None:
                facts = self.history.facts
                new.append(dataclasses.replace(finding, fixes=fixes_for(finding.cause, facts.hyperparameters, facts.objective)))
        if new:
            self.add_findings(new)
        return new

    def add_findings(self, findings: Iterable[Finding]) -> None:
        """Record decisions (the rules', or one known before the series shows it); each kind is decided once."""
        for finding in findings:
            self.findings.append(finding)
            self._undecided = [rule for rule in self._undecided if rule.kind != finding.kind]

    def replay(self, entries: Iterable[tuple[int, Mapping[str, Any]]]) -> Engine:
        """Observe a whole recorded series, in order."""
        for step, logs in entries:
            self.observe(step, logs)
        return self
