"""Memory and time per step over long runs: the engine fed 1 000 000 logged optimizer steps, and ``trainwatch
analyze`` on TensorBoard logs of 10k, 100k and 1M steps.

    python benchmarks/memory.py            # 1M steps into the engine; analyze on 10k/100k/1M-step logs (minutes)
    python benchmarks/memory.py --quick    # 10k steps, analyze on a 1k/10k-step log, for the smoke test

Engine: a synthetic healthy run (a fast early drop then a slow decline, 2 % noise on the train loss, 0.2 % on eval; loss, grad_norm and learning_rate every step, an
eval every 500 steps) is generated on the fly, so the only memory that grows is the engine's. Memory is what
``tracemalloc`` counts as allocated by the engine (traced size after the step, and the peak inside each segment);
time per step is measured in a separate pass without tracemalloc, per segment, as CPU time of this process (a
shared machine's other load changes wall time, not the work done). Bounded means: the same size at 1M
steps as at 10k.

analyze: event files written by the real ``torch.utils.tensorboard.SummaryWriter`` with the tags Trainer's
TensorBoardCallback writes, read by ``trainwatch.analyze`` in a fresh subprocess (Linux: it reads /proc). Its
memory is the peak RSS during the call (the kernel's peak mark is reset once everything is imported) minus the RSS
before it, so the import of torch and numpy, the same for any log, is not counted.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EVAL_EVERY = 500


def synthetic_logs(steps: int, seed: int = 0) -> Iterator[tuple[int, dict[str, float]]]:
    """A healthy run's log entries, one per step (and an eval every ``EVAL_EVERY``), made as they are consumed."""
    rng = random.Random(seed)
    for step in range(1, steps + 1):
        progress = step / steps
        level = 1.0 + 3.0 * math.exp(-step / 200) + 0.5 * (1 - progress)
        yield step, {"loss": level * (1 + 0.02 * rng.gauss(0, 1)), "grad_norm": 0.5 + 0.1 * rng.random(),
                     "learning_rate": 3e-4 * (1 - progress)}
        if step % EVAL_EVERY == 0:
            yield step, {"eval_loss": level * 1.05 * (1 + 0.002 * rng.gauss(0, 1))}


def checkpoints(steps: int) -> list[int]:
    return [c for c in (1_000, 10_000, 100_000, 1_000_000) if c <= steps] or [steps]


def engine_memory(steps: int) -> list[tuple[int, int, int]]:
    """(step, traced bytes after it, peak traced bytes within its segment) at each checkpoint."""
    from trainwatch.engine import Engine

    marks = set(checkpoints(steps))
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    engine = Engine()
    rows = []
    for step, logs in synthetic_logs(steps):
        engine.observe(step, logs)
        if step in marks and "eval_loss" not in logs:
            current, peak = tracemalloc.get_traced_memory()
            rows.append((step, current - base, peak - base))
            tracemalloc.reset_peak()
    tracemalloc.stop()
    if engine.findings:  # a decided rule is no longer asked: later steps would be cheaper than a healthy run's
        print(f"warning: the synthetic run was judged {[(f.kind, f.cause, f.step) for f in engine.findings]}")
    return rows


def engine_time(steps: int) -> list[tuple[int, int, float]]:
    """(first step, last step, CPU µs per logged step) for each segment between checkpoints, without tracemalloc."""
    from trainwatch.engine import Engine

    engine, rows = Engine(), []
    bounds = [0, *checkpoints(steps)]
    entries = synthetic_logs(steps)
    pending = next(entries)
    for lo, hi in zip(bounds, bounds[1:]):
        batch = []  # materialise the segment first so generating logs is not timed
        while pending is not None and pending[0] <= hi:
            batch.append(pending)
            pending = next(entries, None)
        start = time.process_time()
        for step, logs in batch:
            engine.observe(step, logs)
        rows.append((lo + 1, hi, (time.process_time() - start) / (hi - lo) * 1e6))
        del batch
    return rows


def write_event_file(steps: int, folder: Path) -> Path:
    """A TensorBoard run written by the real SummaryWriter with the tags and cadence of Trainer (logging_steps=1)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(folder), max_queue=10_000, flush_secs=600) as writer:
        for step, logs in synthetic_logs(steps):
            if "eval_loss" in logs:
                writer.add_scalar("eval/loss", logs["eval_loss"], step)
                continue
            writer.add_scalar("train/loss", logs["loss"], step)
            writer.add_scalar("train/grad_norm", logs["grad_norm"], step)
            writer.add_scalar("train/learning_rate", logs["learning_rate"], step)
    return folder


_ANALYZE = """
import gc, json, sys, time
import trainwatch
analyze = trainwatch.analyze  # import everything analyze needs before measuring


def status_kib(key):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key))


gc.collect()
before = status_kib("VmRSS:")
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS: the peak from here on is analyze's
start = time.perf_counter()
verdicts = [r.verdict for r in analyze(sys.argv[1])]
print(json.dumps({"seconds": time.perf_counter() - start, "verdicts": verdicts,
                  "rss_before_kib": before, "peak_kib": status_kib("VmHWM:")}))
"""


def analyze_in_subprocess(path: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", _ANALYZE, path], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def analyze_available() -> bool:
    import trainwatch

    try:
        return callable(trainwatch.analyze)
    except AttributeError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None, help="engine steps (default 1 000 000; --quick 10 000)")
    args = parser.parse_args(argv)
    steps = args.steps or (10_000 if args.quick else 1_000_000)

    print(f"Engine, {steps:,} logged optimizer steps (loss, grad_norm, learning_rate every step; eval every {EVAL_EVERY})")
    print("| after step | engine memory (tracemalloc) | peak within segment |")
    print("|---|---|---|")
    memory = engine_memory(steps)
    for step, current, peak in memory:
        print(f"| {step:,} | {current / 1024:.1f} KiB | {peak / 1024:.1f} KiB |")
    print(f"ratio last/first checkpoint: {memory[-1][1] / memory[0][1]:.3f} (O(steps) would be {memory[-1][0] / memory[0][0]:,.0f})")
    print("\n| steps | CPU µs per step |")
    print("|---|---|")
    timing = engine_time(steps)
    for lo, hi, micros in timing:
        print(f"| {lo:,}–{hi:,} | {micros:.1f} |")
    print(f"ratio last/first segment: {timing[-1][2] / timing[0][2]:.3f}", end="")
    print(f"; last/second: {timing[-1][2] / timing[1][2]:.3f}" if len(timing) > 2 else "")

    print("\ntrainwatch.analyze on a TensorBoard run written by SummaryWriter (fresh subprocess each)")
    if not analyze_available():
        print("not available: trainwatch.analyze is not in this checkout yet")
        return 0
    sizes = (1_000, 10_000) if args.quick else (10_000, 100_000, 1_000_000)
    print("| logged steps | event file | analyze time | µs per step | RSS before | peak RSS during analyze | growth | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for size in sizes:
            folder = write_event_file(size, Path(scratch) / f"run{size}")
            file_bytes = sum(p.stat().st_size for p in folder.iterdir())
            result = analyze_in_subprocess(str(folder))
            growth = (result["peak_kib"] - result["rss_before_kib"]) / 1024
            print(f"| {size:,} | {file_bytes / 2**20:.1f} MiB | {result['seconds']:.2f} s | "
                  f"{result['seconds'] / size * 1e6:.1f} | {result['rss_before_kib'] / 1024:.1f} MiB | "
                  f"{result['peak_kib'] / 1024:.1f} MiB | {growth:.1f} MiB | {', '.join(map(str, result['verdicts']))} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
