"""How fast, and in how much memory, trainwatch reads a long TensorBoard log, against the usual tools.

Writes (once, cached) a log of 1 000 000 scalars - 250 000 steps of train/loss, train/grad_norm,
train/learning_rate and eval/loss (eval every step, so the four tags have equal weight) - with torch's
``SummaryWriter``, the writer HF Trainer uses. Then, in interleaved rounds, reads it with:

- trainwatch's reader: both passes of ``read_run``, every record CRC-checked, the values as numpy arrays
  (``TensorBoardRun.batches``);
- trainwatch's reader as ``trainwatch analyze`` consumes it: one dict per log entry (``TensorBoardRun.entries``);
- TensorBoard's ``EventAccumulator`` configured to keep every scalar (``size_guidance={SCALARS: 0}``);
- ``tbparse.SummaryReader`` (pandas DataFrame of scalars),

each in a fresh interpreter; checks that each read every value (their count, and their sum against the others'),
and prints the best time of the rounds, scalars/s and peak memory (max RSS above the reader's baseline after imports,
from the kernel's high-water mark; Linux only) with the ratios. In each round it also times ``trainwatch analyze``
end to end (a subprocess: interpreter start, read, replay through the engine, report) with its peak RSS.

Usage: ``nice python benchmarks/read_tensorboard.py [--dir DIR] [--steps 250000] [--repeat 3] [--quick]``
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

TAGS = ("train/loss", "train/grad_norm", "train/learning_rate", "eval/loss")


def write_log(directory: Path, steps: int) -> Path:
    """The benchmark log, written by torch's SummaryWriter; reused when it is already there."""
    done = directory / "COMPLETE"
    if done.exists() and done.read_text() == f"{steps} v4":
        return directory
    from torch.utils.tensorboard import SummaryWriter

    for old in directory.glob("events.out.tfevents.*"):
        old.unlink()
    with SummaryWriter(log_dir=str(directory), max_queue=1000, flush_secs=3600) as writer:
        for step in range(1, steps + 1):
            # a healthy run: a noisy train loss and a smooth eval loss, both falling fast, then levelling off
            trend = 1.0 + 2.0 * math.exp(-step / 200)
            writer.add_scalar("train/loss", trend + 0.05 * math.sin(step), step)
            writer.add_scalar("train/grad_norm", 1.0 + 0.1 * math.cos(step), step)
            writer.add_scalar("train/learning_rate", 1e-4 * (1 - step / steps), step)
            writer.add_scalar("eval/loss", trend + 0.1, step)
    done.write_text(f"{steps} v4")
    return directory


def read_trainwatch(directory: Path) -> tuple[int, float]:
    from trainwatch.logs.tensorboard import event_files, read_run

    run = read_run(event_files(directory))  # pass 1: restarts and resumes
    count, total = 0, 0.0
    for _, _, values in run.batches():  # pass 2: every value, streamed as arrays
        count += len(values)
        total += float(values.sum())
    return count, total


def read_trainwatch_entries(directory: Path) -> tuple[int, float]:
    from trainwatch.logs.tensorboard import event_files, read_run

    run = read_run(event_files(directory))
    count, total = 0, 0.0
    for _, logs in run.entries():  # one dict per log call, as analyze replays them
        count += len(logs)
        total += sum(logs.values())
    return count, total


def read_accumulator(directory: Path) -> tuple[int, float]:
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(directory), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    values = [e.value for tag in accumulator.Tags()["scalars"] for e in accumulator.Scalars(tag)]
    return len(values), math.fsum(values)


def read_tbparse(directory: Path) -> tuple[int, float]:
    from tbparse import SummaryReader

    scalars = SummaryReader(str(directory)).scalars
    return len(scalars), float(scalars["value"].sum())


READERS: dict[str, Callable[[Path], tuple[int, float]]] = {
    "trainwatch": read_trainwatch,
    "trainwatch entries": read_trainwatch_entries,
    "EventAccumulator(all)": read_accumulator,
    "tbparse": read_tbparse,
}


def measure(reader: str, directory: Path) -> dict[str, float]:
    """Run one reader in a fresh interpreter: values read and their sum, seconds, and peak memory above its
    baseline.

    A fresh process per reader keeps one's memory from inflating the next. tracemalloc would slow pure-Python
    readers many times over, so the kernel's own high-water mark is used: after the reader's imports the peak is
    reset (``/proc/self/clear_refs``), and the peak resident set after reading, less the resident set before, is
    what reading cost.
    """
    code = (
        "import json, sys, time; sys.path.insert(0, sys.argv[1]); import read_tensorboard as bench; "
        "from pathlib import Path; bench.warm_imports(sys.argv[2]); base = bench.reset_peak(); "
        "start = time.perf_counter(); count, total = bench.READERS[sys.argv[2]](Path(sys.argv[3])); "
        "seconds = time.perf_counter() - start; peak = bench.status_kib('VmHWM') - base; "
        "print(json.dumps({'count': count, 'sum': total, 'seconds': seconds, 'peak_bytes': peak * 1024}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), reader, str(directory)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Reset the peak resident set to the current one; return the current one (KiB)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmRSS")


def warm_imports(reader: str) -> None:
    """Import what a reader needs before its baseline is taken: we compare reading, not import cost."""
    if reader.startswith("trainwatch"):
        import trainwatch.logs.tensorboard  # noqa: F401
    elif reader == "tbparse":
        import tbparse  # noqa: F401
    else:
        from tensorboard.backend.event_processing import event_accumulator  # noqa: F401


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where the log is cached (default /tmp/trainwatch-bench-STEPS)")
    parser.add_argument("--steps", type=int, default=250_000)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best is reported")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 500 steps, one round")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeat = 2_500, 1
    args.dir = args.dir or Path(f"/tmp/trainwatch-bench-{args.steps}")
    args.dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_log(args.dir, args.steps)
    expected = args.steps * len(TAGS)
    size = sum(p.stat().st_size for p in args.dir.glob("events.out.tfevents.*"))
    print(f"log: {expected} scalars, {size / 1e6:.1f} MB, ready in {time.perf_counter() - start:.1f} s")

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in [*READERS, ANALYZE]}
    for round_ in range(1, args.repeat + 1):  # interleaved rounds: a load change on a shared machine hits all alike
        for name, measured in runs.items():
            result = measure_analyze(args.dir) if name == ANALYZE else measure(name, args.dir)
            measured.append(result)
            print(f"round {round_} {name:22s} {result['seconds']:7.2f} s", flush=True)
    results = {}
    reference = runs["tbparse"][0]["sum"]
    for name, measured in runs.items():
        seconds = min(r["seconds"] for r in measured)
        peak = min(r["peak_bytes"] for r in measured)
        results[name] = (seconds, peak)
        if name == ANALYZE:
            continue
        count = min(r["count"] for r in measured)
        same = all(math.isclose(r["sum"], reference, rel_tol=1e-9) for r in measured)
        status = "all values" if count == expected else f"ONLY {count} of {expected} values"
        status += ", same sum as tbparse" if same else ", NOT THE SAME SUM as tbparse"
        print(
            f"{name:22s} {seconds:7.2f} s  {count / seconds:12,.0f} scalars/s  peak +{peak / 1e6:7.1f} MB RSS  {status}"
            f"  (best of {len(measured)})"
        )
    ours_s, ours_mem = results["trainwatch"]
    for name in ("EventAccumulator(all)", "tbparse"):
        seconds, peak = results[name]
        print(f"trainwatch vs {name}: {seconds / ours_s:.1f}x faster, {peak / ours_mem:.1f}x less peak memory")
    seconds, peak = results[ANALYZE]
    print(
        f"{ANALYZE} end to end (interpreter start, read, replay of every log entry through the engine, report): "
        f"{seconds:.2f} s, peak RSS {peak / 1e6:.1f} MB (the whole process), {runs[ANALYZE][-1]['verdict']}"
    )
    return 0


ANALYZE = "trainwatch analyze"


def measure_analyze(directory: Path) -> dict[str, float]:
    """``trainwatch analyze DIR`` in a fresh interpreter, timed from outside: seconds, the process's peak RSS (from a
    wrapper process, whose only child it is), and its first line of output."""
    code = (
        "import json, resource, subprocess, sys, time; start = time.perf_counter(); "
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "seconds = time.perf_counter() - start; lines = (done.stdout or done.stderr).strip().splitlines(); "
        "print(json.dumps({'seconds': seconds, 'peak_bytes': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss "
        "* 1024, 'verdict': f'exit {done.returncode}: ' + (lines[0] if lines else '')}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, sys.executable, "-m", "trainwatch", "analyze", str(directory)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
