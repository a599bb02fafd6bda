"""Overhead of watching: steps/s of the smallest tiny CPU Trainer run with and without ``Diagnoser``, and the cost of
one ``on_log`` call in isolation relative to a step.

    python benchmarks/overhead.py            # 15 interleaved pairs of 150-step runs + 20 000 isolated calls
    python benchmarks/overhead.py --quick    # for the smoke test

The steady-state step time leaves out the run's start, where the Diagnoser's pre-flight checklist runs once; that
one-time cost is timed separately, and so is the time spent in the Diagnoser's per-step hooks inside the real runs
(where caches are shared with torch, unlike in the isolated loop). Runs with and without the callback alternate
(which one goes first alternates too), so drift in a shared machine's load hits both alike; medians are reported,
of wall time (what a user sees) and of this process's CPU time (the work done, which other processes on a shared
machine change much less). A whole-run difference of a fraction of a percent is below the noise of such a machine
(the ratios move by several percent between repetitions), so the goal is judged on the hooks timed inside the real
runs, per steady-state step, against the median step; the isolated per-call cost shows how much of that is the
cold caches a real step leaves behind.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from transformers import PrinterCallback, TrainerCallback, TrainerControl  # noqa: E402

from trainwatch import Diagnoser  # noqa: E402
from trainwatch.testing import tiny_trainer  # noqa: E402

SCENARIO = "healthy"
SKIPPED_STEPS = 5
"""Steps left out of the timing: the first ones pay for lazy initialisation, not for watching."""


def smallest_arch() -> str:
    """The tiny architecture with the fewest parameters (the step where a fixed per-step cost weighs most)."""
    from trainwatch.testing import tiny_model

    return min(("llama", "gpt2"), key=lambda arch: sum(p.numel() for p in tiny_model(arch).parameters()))


class StepClock(TrainerCallback):
    """The time at the start of each optimizer step: one interval covers a whole step, its logging (and so
    ``on_log``) included, without the run's fixed setup cost."""

    def __init__(self) -> None:
        self.starts: list[tuple[float, float]] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.starts.append((time.perf_counter(), time.process_time()))


START_COSTS: list[float] = []
"""CPU seconds of each watched run's ``Diagnoser.on_train_begin`` (the pre-flight checklist): paid once per run."""
HOOK_COSTS: list[tuple[float, float]] = []
"""Per watched run: (median, mean) seconds per steady-state optimizer step spent in the Diagnoser's per-step hooks."""


def _timed_hooks(diagnoser: Diagnoser) -> Diagnoser:
    """Time the Diagnoser's own hooks where they really run: inside a Trainer step, caches shared with torch.

    ``perf_counter`` (a vDSO read, ~0.2 µs), not ``process_time`` (a system call, ~1 µs here, which would count
    in what it measures). The median step is robust to a preemption landing inside a hook; the mean includes the
    rare costlier calls (the pre-flight's step-10 loss check).
    """
    per_step: dict[int, float] = {}

    def timed(hook: Any, per_step_hook: bool) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = hook(*args, **kwargs)
            spent = time.perf_counter() - start
            if per_step_hook:
                step = args[1].global_step
                per_step[step] = per_step.get(step, 0.0) + spent
            else:
                START_COSTS.append(spent)
            return result

        return call

    def finish(*args: Any, **kwargs: Any) -> Any:
        steady = [spent for step, spent in per_step.items() if step > SKIPPED_STEPS]
        HOOK_COSTS.append((statistics.median(steady), statistics.fmean(steady)))
        return train_end(*args, **kwargs)

    train_end = diagnoser.on_train_end
    diagnoser.on_train_begin = timed(diagnoser.on_train_begin, per_step_hook=False)  # type: ignore[method-assign]
    diagnoser.on_log = timed(diagnoser.on_log, per_step_hook=True)  # type: ignore[method-assign]
    diagnoser.on_step_end = timed(diagnoser.on_step_end, per_step_hook=True)  # type: ignore[method-assign]
    diagnoser.on_train_end = finish  # type: ignore[method-assign]
    return diagnoser


def timed_run(arch: str, steps: int, watched: bool) -> tuple[tuple[float, float], list[dict]]:
    """(wall, CPU) seconds per optimizer step of one run (logging every step, no eval) in its steady state, and its
    log."""
    clock = StepClock()
    callbacks = [clock, _timed_hooks(Diagnoser(report=False))] if watched else [clock]
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = tiny_trainer(SCENARIO, output_dir, callbacks=callbacks, arch=arch, report_to="none",
                               max_steps=steps, eval_strategy="no")
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    (wall0, cpu0), (wall1, cpu1) = clock.starts[SKIPPED_STEPS], clock.starts[-1]
    intervals = len(clock.starts) - 1 - SKIPPED_STEPS
    return ((wall1 - wall0) / intervals, (cpu1 - cpu0) / intervals), trainer.state.log_history


def on_log_cost(history: list[dict], calls: int) -> float:
    """CPU seconds per ``Diagnoser.on_log`` call in a tight loop, fed a real run's log entries.

    Each pass over the run starts a fresh Diagnoser (not timed), as each real run does: cycling one Diagnoser through
    the same entries would make the loss jump back up at each cycle, decide "exploding", and leave the later calls
    cheaper than a healthy run's.
    """
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = tiny_trainer(SCENARIO, output_dir, report_to="none", max_steps=1)
        args, state, control = trainer.args, trainer.state, TrainerControl()
    entries = [{k: v for k, v in e.items() if k != "step"} for e in history if "loss" in e]
    passes = max(1, calls // len(entries))
    best = float("inf")
    for _ in range(3):
        spent = 0.0
        for _ in range(passes):
            diagnoser = Diagnoser(report=False)
            diagnoser.on_train_begin(args, state, control, model=trainer.model)
            start = time.process_time()
            for step, logs in enumerate(entries, start=1):
                state.global_step = step
                diagnoser.on_log(args, state, control, logs=logs)
            spent += time.process_time() - start
        best = min(best, spent / (passes * len(entries)))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    pairs, steps, calls = (1, 12, 1_000) if args.quick else (15, 150, 20_000)
    torch.set_num_threads(1)
    arch = smallest_arch()
    timed_run(arch, steps, watched=True)  # warm imports and caches before measuring
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    history: list[dict] = []
    for i in range(pairs):
        for flag in (False, True) if i % 2 == 0 else (True, False):
            per_step, log = timed_run(arch, steps, flag)
            times[flag].append(per_step)
            history = log if flag else history
    per_call = on_log_cost(history, calls)
    print(f"model: tiny {arch} ({SCENARIO}), {steps} steps per run (first {SKIPPED_STEPS} untimed), logging every "
          f"step, {pairs} interleaved pairs")
    print("| clock | without Diagnoser (steps/s) | with Diagnoser (steps/s) | time ratio with/without (median) | "
          "median of per-pair ratios |")
    print("|---|---|---|---|---|")
    for index, clock in enumerate(("wall", "CPU")):
        plain = [t[index] for t in times[False]]
        watched = [t[index] for t in times[True]]
        pair_ratios = [w / p for w, p in zip(watched, plain)]
        print(f"| {clock} | {1 / statistics.median(plain):.1f} | {1 / statistics.median(watched):.1f} | "
              f"{statistics.median(watched) / statistics.median(plain):.4f} | {statistics.median(pair_ratios):.4f} |")
    step_cpu = statistics.median(t[1] for t in times[False])
    print(f"\none Diagnoser.on_log call in a tight loop (hot caches): {per_call * 1e6:.1f} µs CPU = {per_call / step_cpu:.3%} of a "
          f"median step ({step_cpu * 1e3:.2f} ms CPU); goal < 0.5 %")
    median_step = statistics.median(cost[0] for cost in HOOK_COSTS)
    mean_step = statistics.median(cost[1] for cost in HOOK_COSTS)
    print(f"Diagnoser's per-step hooks (on_log, on_step_end) timed inside the real runs: median step {median_step * 1e6:.1f} µs "
          f"= {median_step / step_cpu:.3%}, mean {mean_step * 1e6:.1f} µs = {mean_step / step_cpu:.3%} of a median step "
          f"(medians over {len(HOOK_COSTS)} runs); goal < 0.5 %")
    start = statistics.median(START_COSTS)
    print(f"once per run, Diagnoser.on_train_begin (pre-flight checklist): {start * 1e3:.1f} ms CPU (median of "
          f"{len(START_COSTS)} runs) = {start / step_cpu:.1f} steps of this model")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
