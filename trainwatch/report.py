"""Rendering findings for people (text) and programs (JSON), whatever produced them."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainwatch.findings import Finding, verdict


def _value(v: Any) -> str:
    if isinstance(v, float) and math.isfinite(v):
        return f"{v:.4g}"
    return str(v)


def format_finding(finding: Finding) -> str:
    """A finding as a short block: headline, why, the numbers, then the numbered fixes."""
    lines = [f"{headline(finding)}: {finding.summary}", f"  {format_evidence(finding)}"]
    lines.extend(f"  fix {i}. {fix}" for i, fix in enumerate(finding.fixes, 1))
    return "\n".join(lines)


def headline(finding: Finding) -> str:
    """``KIND (cause) at step N``: what a finding is, in a few words."""
    return f"{finding.kind.upper()} ({finding.cause}) at step {finding.step}"


def format_evidence(finding: Finding) -> str:
    """How strong the finding is and the numbers it rests on, on one line."""
    evidence = ", ".join(f"{k}={_value(v)}" for k, v in finding.evidence.items() if v is not None)
    return f"confidence {finding.confidence}" + (f"; evidence: {evidence}" if evidence else "")


def format_report(findings: Sequence[Finding], *, title: str = "trainwatch", notes: Sequence[str] = ()) -> str:
    """The whole verdict of one run."""
    lines = [f"{title}: {verdict(list(findings))}"]
    lines.extend(format_finding(f) for f in findings)
    lines.extend(f"  note: {n}" for n in notes)
    return "\n".join(lines)


def to_json(findings: Sequence[Finding], **extra: Any) -> dict[str, Any]:
    return {"verdict": verdict(list(findings)), "diagnoses": [f.to_dict() for f in findings], **extra}


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write to a temporary file beside ``path``, then rename: a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def format_curves(history: Any) -> str:
    """A few lines on each signal a :class:`~trainwatch.history.History` saw: how many, from where to where, extremes."""
    lines = ["  curves:"]
    for name, series in history.series.items():
        if not series.count:
            lines.append(f"    {name:<13} not logged")
            continue
        line = f"    {name:<13} {series.count} values, steps {series.first_step}-{series.last_step}: "
        line += f"{_value(series.first)} → {_value(series.last)}"
        if series.min is not None:
            line += f", min {_value(series.min)} (step {series.min_step}), max {_value(series.max)} (step {series.max_step})"
        if series.nonfinite:
            line += f", {series.nonfinite} NaN/inf from step {series.first_nonfinite_step}"
        lines.append(line)
    return "\n".join(lines)
