"""The ``trainwatch`` command. Exit codes as a linter's: 0 healthy, 1 a failure was diagnosed, 2 bad input.

Each subcommand is a ``_<name>(args) -> int`` registered in :func:`build_parser`; errors a person can fix are one
line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from trainwatch.logs import LogReadError

HEALTHY, FAILURE, BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainwatch", description="What is wrong with a fine-tuning run, why, and what to change.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    analyze = commands.add_parser(
        "analyze", help="diagnose a finished or crashed run from its logs",
        description="Diagnose runs from TensorBoard event files or trainer_state.json, with the live callback's rules. "
        "Exit 0: healthy, 1: a failure was diagnosed, 2: bad input.",
    )
    analyze.add_argument("path", help="event file, run directory, directory of runs, Trainer output dir, or trainer_state.json")
    analyze.add_argument("--json", action="store_true", help="print a JSON list with one object per run")
    analyze.add_argument("--plot", metavar="FILE.png", help="draw loss, eval loss and grad norm with the diagnoses marked (several runs: FILE-1.png, FILE-2.png, ...)")
    analyze.add_argument("--smoothing", type=int, default=3, help="train losses whose median is the smoothed level (default 3)")
    analyze.set_defaults(handler=_analyze)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except LogReadError as error:
        print(f"trainwatch: error: {error}", file=sys.stderr)
        return BAD_INPUT
    except BrokenPipeError:  # `trainwatch analyze ... | head`: the reader left, which is not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the interpreter's final flush does not fail
        return HEALTHY


def _analyze(args: argparse.Namespace) -> int:
    from trainwatch.analysis import analyze

    if args.plot:
        from trainwatch.plot import check_plotting

        check_plotting(args.plot)
    reports = analyze(args.path, smoothing=args.smoothing)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2, default=str))
    else:
        print("\n\n".join(r.format_text() for r in reports))
    if args.plot:
        from trainwatch.plot import plot_reports

        written = plot_reports(reports, args.plot)
        print(f"plot: {', '.join(map(str, written))}", file=sys.stderr)
    return FAILURE if any(r.failed for r in reports) else HEALTHY


if __name__ == "__main__":
    sys.exit(main())
