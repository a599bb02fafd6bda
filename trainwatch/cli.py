"""The ``trainwatch`` command. Exit codes as a linter's: 0 healthy, 1 a failure was diagnosed, 2 bad input, and for
``analyze`` 3 not judged (no train loss logged and nothing decided: "healthy" would say more than is known).

Each subcommand is a ``_<name>(args) -> int`` registered in :func:`build_parser`; errors a person can fix are one
line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trainwatch.logs import LogReadError

if TYPE_CHECKING:
    from trainwatch.analysis import RunSource

HEALTHY, FAILURE, BAD_INPUT, NOT_JUDGED = 0, 1, 2, 3
INTERRUPTED = 130
"""Ctrl-C: the shell's own code for a command ended by SIGINT."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainwatch", description="What is wrong with a fine-tuning run, why, and what to change."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    analyze = commands.add_parser(
        "analyze",
        help="diagnose finished or crashed runs from their logs: one run, or a whole sweep",
        description="Diagnose runs from TensorBoard event files, trainer_state.json, W&B run folders (wandb/run-*, "
        "the .wandb log; needs trainwatch-hf[wandb]), MLflow stores (mlflow.db, mlruns/), LLaMA-Factory's "
        "trainer_log.jsonl or Lightning's metrics.csv, with the live callback's rules, and the live callback's own report (<output_dir>/trainwatch/diagnosis.json) where the run has one. "
        "One run: its whole report. Several: a line per run (failures first), the counts, then each failure. "
        "Exit 0: healthy, 1: a failure was diagnosed, 2: bad input (nothing could be read), 3: not judged (no train "
        "loss logged).",
    )
    analyze.add_argument(
        "path",
        help="a run's file or folder (event file, trainer_state.json, .wandb, mlflow.db, trainer_log.jsonl, "
        "metrics.csv), a Trainer output dir, or any folder of runs",
    )
    analyze.add_argument(
        "--json",
        action="store_true",
        help="print JSON Lines: one object per run, in the order the runs were found",
    )
    analyze.add_argument(
        "--details",
        action="store_true",
        help="several runs: every run's whole report (evidence, notes, curves) below the table",
    )
    analyze.add_argument(
        "--jobs", type=_positive_int, default=1, metavar="N", help="analyse N runs at a time, in parallel (default 1)"
    )
    analyze.add_argument(
        "--html",
        metavar="FILE.html",
        help="also write a self-contained HTML page: the runs' verdicts, each failure's curves and fixes",
    )
    analyze.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw loss, eval loss and grad norm with the diagnoses marked (several runs: FILE-1.png, FILE-2.png, ...)",
    )
    analyze.add_argument(
        "--smoothing", type=_positive_int, default=3, help="train losses whose median is the smoothed level (default 3)"
    )
    analyze.add_argument(
        "--vocab-size",
        type=_vocab_size,
        metavar="N",
        help="the model's vocabulary size, for every run analysed (over what its files say): the loss is compared "
        "with a uniform guess ln N. Give it when the logs lack the model's config",
    )
    analyze.set_defaults(handler=_analyze)
    check = commands.add_parser(
        "check",
        help="run the pre-flight data checklist on a JSONL training set",
        description="Tokenize a training set as the reference script does (python -m trainwatch.train) and check that "
        "examples have target tokens and that the max sequence length leaves room for the responses. "
        "Exit 0: no item failed, 1: an item failed, 2: bad input.",
    )
    check.add_argument("data", help="training JSONL: instruction/response or messages records")
    check.add_argument(
        "--model", required=True, help="the model whose tokenizer is used (local directory or cached hub id)"
    )
    check.add_argument(
        "--max-seq-length", type=int, default=128, help="tokens per example (default 128, as the script)"
    )
    check.set_defaults(handler=_check)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _vocab_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of tokens, not {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except LogReadError as error:
        print(f"trainwatch: error: {error}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print("trainwatch: interrupted", file=sys.stderr)
        return INTERRUPTED


def _analyze(args: argparse.Namespace) -> int:
    from trainwatch.sweep import format_sweep, judge_runs, sweep_rows

    if args.plot:
        from trainwatch.plot import check_plotting

        check_plotting(args.plot)
    if args.html:
        from trainwatch.html_report import check_html_target

        check_html_target(args.html)
    sources = _find_runs(args.path)
    reports = judge_runs(sources, args.smoothing, vocab_size=args.vocab_size, jobs=args.jobs, progress=True)
    if all(r.error for r in reports):
        raise LogReadError("; ".join(r.error for r in reports if r.error))
    rows = sweep_rows(sources, reports, args.path)
    if args.plot:
        from trainwatch.plot import plot_reports

        written = plot_reports(reports, args.plot)
        print(f"plot: {', '.join(map(str, written))}", file=sys.stderr)
    if args.html:
        from trainwatch.html_report import write_html

        print(f"html: {write_html(rows, args.html, title=args.path)}", file=sys.stderr)
    if args.json:
        text = "\n".join(json.dumps(row.to_dict(), default=str) for row in rows)
    elif len(rows) == 1:
        text = reports[0].format_text()
    else:
        text = format_sweep(rows, details=args.details)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `trainwatch analyze ... | head`: the reader left, no reason to change the verdict
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the interpreter's final flush does not fail
    if any(r.failed for r in reports):
        return FAILURE
    return NOT_JUDGED if any(not r.judged for r in reports if not r.error) else HEALTHY


def _find_runs(path: str) -> list[RunSource]:
    """The runs under ``path``; where there are none, :func:`trainwatch.analyze` raises the one-line reason."""
    from trainwatch.analysis import analyze, find_runs

    sources = find_runs(Path(path)) if Path(path).exists() else []
    if not sources:
        analyze(path)  # nothing to read: raises LogReadError saying why, in the words of the library's own API
        raise LogReadError(f"{path}: no runs found")
    return sources


def _check(args: argparse.Namespace) -> int:
    from trainwatch.data import DataError
    from trainwatch.preflight import FAIL, check_instruction_data, format_checks

    if os.sep in args.model and not os.path.isdir(args.model):
        print(f"trainwatch: error: --model {args.model}: no such directory", file=sys.stderr)
        return BAD_INPUT
    try:
        checks = check_instruction_data(args.data, args.model, args.max_seq_length)
    except DataError as error:
        print(f"trainwatch: error: {error}", file=sys.stderr)
        return BAD_INPUT
    except (OSError, ValueError) as error:
        print(f"trainwatch: error: --model {args.model}: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return BAD_INPUT
    print(format_checks(checks, title=f"trainwatch check {args.data}"))
    return FAILURE if any(c.status == FAIL for c in checks) else HEALTHY


if __name__ == "__main__":
    sys.exit(main())
