"""trainwatch's own report of a run, ``<output_dir>/trainwatch/diagnosis.json``, as the live callback wrote it.

It holds decisions that the logs cannot show: the pre-flight decides a train set without a single target token
(from the data) or a model no gradient can reach (from its configuration) at step 0, before any log (``evidence["decided_by"] == "pre-flight"``), and a run it stopped there
logged one step or none. ``trainwatch analyze`` reads the report where a run has one, so the live and the post-hoc
verdict are the same, and says so in a note. It also says which vocabulary the live run judged the loss against:
the model's class tells whether there is one (a CTC or regression head predicts no tokens), and a model built from a
config names no class in the logs. A damaged report is a note, never an error: the logs still speak.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainwatch.findings import HIGH, KINDS, MEDIUM, Finding

REPORT_DIR = "trainwatch"
REPORT_FILE = "diagnosis.json"
"""The :class:`~trainwatch.Diagnoser`'s report; a single-concern detector writes ``diagnosis-<kind>.json``."""


@dataclass
class LiveReport:
    """The decisions of the live callback(s) of one output dir."""

    paths: list[Path]
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    vocab_size: int | None = None
    knows_vocab_size: bool = False
    """Whether the report says which vocabulary the live run judged against (None: its model predicts no tokens,
    which the logs cannot always show: a model built from a config names no class in it)."""

    @property
    def label(self) -> str:
        return " + ".join(map(str, self.paths))


def read_live_report(output_dir: Path) -> LiveReport | None:
    """The report in ``output_dir/trainwatch``: ``diagnosis.json`` (every failure class), else the single-concern
    detectors' ``diagnosis-<kind>.json`` together. None when there is none."""
    folder = output_dir / REPORT_DIR
    main = folder / REPORT_FILE
    paths = [main] if main.is_file() else [folder / f"diagnosis-{kind}.json" for kind in KINDS]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        return None
    report = LiveReport(paths)
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            found = [_finding(d) for d in data["diagnoses"]]
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError) as error:
            report.notes.append(f"trainwatch's live report {path} cannot be read ({type(error).__name__}): not used")
            continue
        facts = data.get("facts")
        if isinstance(facts, dict) and "vocab_size" in facts:
            vocab = facts["vocab_size"]
            if vocab is None or (isinstance(vocab, int) and not isinstance(vocab, bool) and vocab >= 2):
                report.vocab_size, report.knows_vocab_size = vocab, True
        report.findings.extend(f for f in found if f.kind not in {g.kind for g in report.findings})
    return report


def with_live_decisions(
    findings: Sequence[Finding], live: LiveReport, last_step: int
) -> tuple[list[Finding], list[str]]:
    """The run's findings with the live report's decisions in place of the logs' for the classes it decided (a
    pre-flight decision, the user's own thresholds), in the order they were decided, and the notes saying so.

    A decision after ``last_step``, the last step read, is left out: a checkpoint's logs are judged as of then.
    """
    live_kinds = {f.kind: f for f in live.findings if f.step <= last_step}
    later = [f for f in live.findings if f.step > last_step]
    merged = sorted([*live_kinds.values(), *(f for f in findings if f.kind not in live_kinds)], key=lambda f: f.step)
    ours = {(f.kind, f.cause, f.step) for f in findings}
    added = [f for f in live_kinds.values() if (f.kind, f.cause, f.step) not in ours]
    notes = list(live.notes)
    if added:
        said = "; ".join(_describe(f) for f in added)
        notes.append(f"verdict from trainwatch's live report {live.label}: {said}")
    elif live.findings or not live.notes:
        notes.append(f"trainwatch's live report {live.label} was read: it gives the same decisions")
    if later:
        past = ", ".join(f"{f.kind} ({f.cause}) at step {f.step}" for f in later)
        notes.append(f"the live report also decided {past}, after step {last_step}, the last one read here")
    return merged, notes


def _describe(finding: Finding) -> str:
    text = f"{finding.kind} ({finding.cause}) at step {finding.step}"
    if finding.evidence.get("decided_by") == "pre-flight":
        text += ", decided by the pre-flight (from the train set or the model) before the first step, which the logs cannot show"
    return text


def _finding(data: Any) -> Finding:
    """A finding as :meth:`Finding.to_dict` wrote it; ``ValueError``/``TypeError``/``KeyError`` when it is not one."""
    kind, cause, step = data["kind"], data["cause"], data["step"]
    if kind not in KINDS or not isinstance(cause, str) or not isinstance(step, int) or isinstance(step, bool):
        raise ValueError(f"not a diagnosis: {str(data)[:80]}")
    evidence, fixes = data.get("evidence") or {}, data.get("fixes") or []
    if not isinstance(evidence, dict) or not isinstance(fixes, list):
        raise TypeError("evidence must be an object and fixes a list")
    confidence = data.get("confidence") if data.get("confidence") in (HIGH, MEDIUM) else HIGH
    return Finding(kind, cause, step, str(data.get("summary", "")), dict(evidence), [str(f) for f in fixes], confidence)
