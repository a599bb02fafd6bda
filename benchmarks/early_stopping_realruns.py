"""Overfitting calls on real runs: how often each eval-loss watcher stops a run whose eval loss later improved.

    python benchmarks/early_stopping_realruns.py [PATH]    # PATH: ../shared/realruns (default) or any folder

The labelled tiny runs of ``detection.py`` have smooth eval curves, where stopping at the first evaluation that
does not improve (HF ``EarlyStoppingCallback(patience=1)``) is always right. Real runs are noisier. This script
takes every ``trainer_state.json`` under PATH with at least three evaluations and asks, for each watcher, at which
step it would stop (or flag) the run, and whether that call was **premature**: a later evaluation of the same run
reached an eval loss below the best one seen up to the call — the run was still getting better on held-out data.

* ``EarlyStoppingCallback(patience=p)``, ported from transformers (``early_stopping_threshold`` 0, the default):
  an evaluation improves when its eval loss is below the best so far; the run stops at the ``p``-th evaluation in
  a row that does not.
* trainwatch: ``trainwatch.analyze(path)``, the same engine as the live Diagnoser, first ``overfitting`` finding.

No run here is labelled, so a call that is not premature is not necessarily right; a premature one is wrong by the
watchers' own measure (a better checkpoint came later).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import trainwatch
from trainwatch.logs import LogReadError
from trainwatch.logs.trainer_state import read_trainer_state

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "realruns"
PATIENCES = (1, 3)


def early_stopping_step(evals: list[tuple[int, float]], patience: int) -> int | None:
    """The step at which HF EarlyStoppingCallback (threshold 0) stops: ``patience`` evaluations without a new best."""
    best, without = math.inf, 0
    for step, value in evals:
        if value < best:
            best, without = value, 0
            continue
        without += 1
        if without >= patience:
            return step
    return None


def premature(evals: list[tuple[int, float]], step: int) -> bool:
    """A later evaluation beat the best eval loss seen up to ``step``."""
    best_then = min(v for s, v in evals if s <= step)
    return any(v < best_then for s, v in evals if s > step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT))
    args = parser.parse_args(argv)
    files = sorted(p for p in Path(args.path).rglob("*.json") if p.is_file())
    if not files:
        print(f"{args.path}: no trainer_state.json files", file=sys.stderr)
        return 2
    watchers = [f"EarlyStopping p={p}" for p in PATIENCES] + ["trainwatch"]
    calls: dict[str, list[bool]] = {w: [] for w in watchers}
    rows = []
    for path in files:
        try:
            state = read_trainer_state(path)
        except LogReadError:
            continue
        evals = [(s, float(e["eval_loss"])) for s, e in state.entries()
                 if isinstance(e.get("eval_loss"), (int, float)) and math.isfinite(e["eval_loss"])]
        if len(evals) < 3:
            continue
        (report,) = trainwatch.analyze(path)
        ours = next((f.step for f in report.diagnoses if f.kind == "overfitting"), None)
        steps = [early_stopping_step(evals, p) for p in PATIENCES] + [ours]
        cells = []
        for watcher, step in zip(watchers, steps):
            if step is None:
                cells.append("—")
                continue
            early = premature(evals, step)
            calls[watcher].append(early)
            cells.append(f"{step}{' (premature)' if early else ''}")
        rows.append(f"| {path.relative_to(args.path)} | {len(evals)} | " + " | ".join(cells) + " |")
    print(f"{len(rows)} real runs with at least 3 evaluations under {args.path}\n")
    print("| watcher | runs stopped / flagged | premature (a later eval beat the best at the call) |")
    print("|---|---|---|")
    for watcher in watchers:
        made = calls[watcher]
        print(f"| {watcher} | {len(made)}/{len(rows)} | {sum(made)}/{len(made)} |")
    print("\n| run | evaluations | " + " | ".join(watchers) + " |")
    print("|---|---|" + "---|" * len(watchers))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
