"""The long fuzz run of the log readers: >= 10 000 generated and damaged files per reader, seeded, reproducible.

Uses the generators and the contract of ``tests/fuzz_inputs.py`` (the CI test runs the same ones under hypothesis,
briefly). Prints the outcomes and every distinct failure (exception type and where it was raised) with the seed of
its first case, so a failure is replayed with ``--kind K --seed S --cases 1``. Exits 1 if any case failed.

    python benchmarks/fuzz_readers.py --cases 10000
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzz_inputs import GENERATORS, exercise  # noqa: E402


def fuzz(kind: str, cases: int, seed: int) -> tuple[collections.Counter[str], dict[str, tuple[int, str]], float]:
    outcomes: collections.Counter[str] = collections.Counter()
    failures: dict[str, tuple[int, str]] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        for case in range(seed, seed + cases):
            data = GENERATORS[kind](random.Random(case))
            try:
                outcomes[exercise(kind, data, directory)] += 1
            except Exception as error:  # noqa: BLE001 - every escape is what we are looking for
                where = traceback.extract_tb(error.__traceback__)[-1]
                signature = f"{type(error).__name__} at {Path(where.filename).name}:{where.lineno} ({where.name})"
                outcomes["failed"] += 1
                failures.setdefault(signature, (case, str(error)[:200]))
    return outcomes, failures, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000, help="cases per reader (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="first seed; case i uses seed + i")
    parser.add_argument("--kind", choices=sorted(GENERATORS), action="append", help="reader(s) to fuzz (default all)")
    args = parser.parse_args()
    failed = 0
    for kind in args.kind or sorted(GENERATORS):
        outcomes, failures, seconds = fuzz(kind, args.cases, args.seed)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        print(f"{kind}: {args.cases} cases (seeds {args.seed}..{args.seed + args.cases - 1}) in {seconds:.1f} s: {counts}")
        for signature, (case, message) in failures.items():
            print(f"  FAILURE {signature}: first at seed {case}: {message}")
        failed += outcomes["failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
