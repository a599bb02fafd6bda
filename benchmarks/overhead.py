"""Overhead of watching: how much longer an optimizer step of the smallest tiny CPU Trainer run is with ``Diagnoser``
than without, and the cost of one ``on_log`` call in isolation.

    python benchmarks/overhead.py            # 3 runs of 12 000 steps, interleaved in pairs of steps, + 20 000 isolated calls
    python benchmarks/overhead.py --decompose  # two more arms: History.record alone, Engine.observe alone
    python benchmarks/overhead.py --quick    # for the smoke test

Steps, not runs, are interleaved. On a shared machine the time of a step drifts by tens of percent from one minute
to the next, so two whole runs, one with and one without, differ by several percent either way whatever they run.
Here every run is cut into blocks, and each block gives two steps in a row, in random order, to each arm: *watched*
(the Trainer's callback list includes the Diagnoser: all its hooks are dispatched, as for a user), *plain* (the
same list without it) and *control* (plain again, through a second, identical list). The list is swapped at the
start of each step, so the arms see the same load within milliseconds of each other. Only the second step of each
pair is timed: it follows a step of its own arm, as every step of a real run does, so the whole cost of watching is
in it: the Diagnoser's hooks, their dispatch, and what its previous ``on_log`` did to the caches this step's torch
passes need. The control arm must come out equal to plain: its ratio and interval show what the method itself can
resolve. The Diagnoser sees the logs of its own steps only (a third of the run's, a fifth with ``--decompose``);
what one log costs it does not depend on the steps in between.

The Diagnoser's own hooks are also timed inside the steps of a separate run watched throughout (``perf_counter``
around each call: no timing code runs in the arms' runs), and one ``on_log`` call is timed in a tight loop, where
its caches stay warm.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from transformers import PrinterCallback, TrainerCallback, TrainerControl  # noqa: E402

from trainwatch import Diagnoser  # noqa: E402
from trainwatch.testing import tiny_trainer  # noqa: E402

SCENARIO = "healthy"
PLAIN, CONTROL, WATCHED = "plain", "control", "watched"
RECORD, OBSERVE = "record", "observe"
LABELS = {
    PLAIN: "plain (no Diagnoser)",
    CONTROL: "control (no Diagnoser, second list)",
    RECORD: "History.record only (--decompose)",
    OBSERVE: "Engine.observe only (--decompose)",
    WATCHED: "watched (Diagnoser)",
}
UNTIMED_STEPS = 10
"""Steps of the hooks' run left out of its timing: the first ones pay for lazy initialisation."""
BOOTSTRAP_SAMPLES = 1000
GOAL = 0.005
"""The issue's goal: watching costs less than 0.5 % of the step time."""


def smallest_arch() -> str:
    """The tiny architecture with the fewest parameters (the step where a fixed per-step cost weighs most)."""
    from trainwatch.testing import tiny_model

    return min(("llama", "gpt2"), key=lambda arch: sum(p.numel() for p in tiny_model(arch).parameters()))


class StepClock(TrainerCallback):
    """The time at the start of each optimizer step. First in every callback list, so one interval is one whole step:
    forward, backward, optimizer, and every hook dispatched for it, ``on_log`` included."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.starts.append(time.perf_counter())


class ArmSwitch(TrainerCallback):
    """Gives each step the callback list of its arm. Trainer iterates over the list it started the event with, so
    the swap takes effect from this step's next event on."""

    def __init__(self, plan: list[str], handler: Any) -> None:
        self.plan, self.handler = plan, handler
        self.lists: dict[str, list[TrainerCallback]] = {}
        """Each arm's callback list (filled by the caller: the lists hold this switch too)."""

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.handler.callbacks = self.lists[self.plan[state.global_step]]


class EngineOnly(TrainerCallback):
    """Part of the Diagnoser's work, to see where its cost is: its engine fed from ``on_log``, nothing else (with
    ``record_only``, only the engine's History records the entry; no rule is asked)."""

    def __init__(self, record_only: bool) -> None:
        self.diagnoser, self.record_only = Diagnoser(report=False), record_only

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.diagnoser.on_train_begin(args, state, control, **kwargs)  # the engine, with the run's facts

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        engine = self.diagnoser.engine
        if self.record_only:
            engine.history.record(state.global_step, logs or {})
        else:
            engine.observe(state.global_step, logs or {})


def block_plan(steps: int, arms: tuple[str, ...], rng: random.Random) -> list[str]:
    """The arm of each step: blocks of two steps of each arm in a row, the arms in random order."""
    plan: list[str] = []
    while len(plan) < steps + 2 * len(arms):
        plan += [arm for arm in rng.sample(arms, len(arms)) for _ in range(2)]
    return plan


def hooks_run(arch: str, steps: int) -> tuple[list[float], float, list[dict]]:
    """A run watched at every step, the Diagnoser's hooks timed where they really run, between torch's passes.

    Returns the seconds its per-step hooks took at each step (the first ``UNTIMED_STEPS`` left out), the seconds of
    its ``on_train_begin`` (the pre-flight checklist, once a run), and the run's log. It also warms imports and
    caches before the arms are measured.
    """
    diagnoser = Diagnoser(report=False)
    per_step: dict[int, float] = {}
    start_costs: list[float] = []

    def timed(hook: Callable[..., Any], sink: Callable[[Any, float], None]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = hook(*args, **kwargs)
            sink(args[1], time.perf_counter() - start)
            return result

        return call

    def per_step_sink(state: Any, spent: float) -> None:
        per_step[state.global_step] = per_step.get(state.global_step, 0.0) + spent

    diagnoser.on_train_begin = timed(diagnoser.on_train_begin, lambda state, spent: start_costs.append(spent))  # type: ignore[method-assign]
    diagnoser.on_log = timed(diagnoser.on_log, per_step_sink)  # type: ignore[method-assign]
    diagnoser.on_step_end = timed(diagnoser.on_step_end, per_step_sink)  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = tiny_trainer(SCENARIO, output_dir, callbacks=[diagnoser], arch=arch, report_to="none",
                               max_steps=steps, eval_strategy="no")
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    steady = [spent for step, spent in per_step.items() if step > UNTIMED_STEPS]
    return steady, start_costs[0], trainer.state.log_history


def times(blocks: list[dict[str, float]], arm: str) -> list[float]:
    """The timed step of ``arm`` in each block."""
    return [block[arm] for block in blocks]


def interleaved_run(arch: str, steps: int, arms: tuple[str, ...], seed: int) -> list[dict[str, float]]:
    """One run with its steps dealt to the arms: per block, each arm's timed step. The first block is left out: its
    steps pay for lazy initialisation."""
    block = 2 * len(arms)
    plan = block_plan(steps, arms, random.Random(seed))
    clock, diagnoser = StepClock(), Diagnoser(report=False)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = tiny_trainer(SCENARIO, output_dir, arch=arch, report_to="none", max_steps=steps, eval_strategy="no")
        trainer.remove_callback(PrinterCallback)
        handler = trainer.callback_handler
        switch = ArmSwitch(plan, handler)
        plain = [clock, switch, *handler.callbacks]
        partial = {RECORD: EngineOnly(record_only=True), OBSERVE: EngineOnly(record_only=False)}
        switch.lists.update({PLAIN: plain, CONTROL: list(plain), WATCHED: [*plain, diagnoser]})
        switch.lists.update({arm: [*plain, partial[arm]] for arm in arms if arm in partial})
        handler.callbacks = [*plain, diagnoser, *(partial[arm] for arm in arms if arm in partial)]  # all begin
        trainer.train()
    durations = [b - a for a, b in zip(clock.starts, clock.starts[1:])]  # durations[i]: step i + 1, arm plan[i]
    timed = [range(first + 1, first + block, 2) for first in range(block, len(durations) - block + 1, block)]
    return [{plan[i]: durations[i] for i in steps} for steps in timed]


def ratio_interval(blocks: list[dict[str, float]], arm: str, rng: random.Random) -> tuple[float, float]:
    """95 % bootstrap interval of median(arm) / median(plain), resampling whole blocks (they are the pairs)."""
    ratios = []
    for _ in range(BOOTSTRAP_SAMPLES):
        sample = rng.choices(blocks, k=len(blocks))
        ratios.append(statistics.median(b[arm] for b in sample) / statistics.median(b[PLAIN] for b in sample))
    ratios.sort()
    return ratios[int(0.025 * BOOTSTRAP_SAMPLES)], ratios[int(0.975 * BOOTSTRAP_SAMPLES) - 1]


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
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12_000, help="optimizer steps per run (shared by the arms)")
    parser.add_argument("--decompose", action="store_true",
                        help="two more arms: the Diagnoser's History.record alone, and its Engine.observe alone")
    args = parser.parse_args(argv)
    arms = (PLAIN, CONTROL, *((RECORD, OBSERVE) if args.decompose else ()), WATCHED)
    runs, steps, calls = (1, 60, 1_000) if args.quick else (args.runs, args.steps, 20_000)
    torch.set_num_threads(1)
    arch = smallest_arch()
    hooks, start, history = hooks_run(arch, min(steps, 3000))
    per_run = [interleaved_run(arch, steps, arms, seed) for seed in range(runs)]
    blocks = [block for run in per_run for block in run]
    per_call = on_log_cost(history, calls)

    plain = statistics.median(times(blocks, PLAIN))
    print(f"model: tiny {arch} ({SCENARIO}), logging every step, no evaluation; {runs} run(s) of {steps} steps, "
          f"each block of {2 * len(arms)} steps dealt to the {len(arms)} arms in pairs, in random order, the second step "
          f"of each pair timed; {len(blocks)} blocks")
    print("| arm | steps timed | median step (ms) | steps/s | step time vs plain: ratio of medians [95 % CI] | "
          "median paired difference (µs) |")
    print("|---|---|---|---|---|---|")
    rng = random.Random(0)
    intervals = {arm: ratio_interval(blocks, arm, rng) for arm in arms if arm != PLAIN}
    for arm in arms:
        median = statistics.median(times(blocks, arm))
        if arm == PLAIN:
            versus, difference = "1", "—"
        else:
            low, high = intervals[arm]
            versus = f"{median / plain:.4f} [{low:.4f}, {high:.4f}]"
            paired = statistics.median(b[arm] - b[PLAIN] for b in blocks)
            difference = f"{paired * 1e6:+.1f} ({paired / plain:+.2%})"
        print(f"| {LABELS[arm]} | {len(blocks)} | {median * 1e3:.3f} | {1 / median:.1f} | {versus} | {difference} |")
    ratios = [statistics.median(times(run, WATCHED)) / statistics.median(times(run, PLAIN)) for run in per_run]
    print(f"watched/plain per run: {', '.join(f'{r:.4f}' for r in ratios)}")
    low, high = intervals[WATCHED]
    outcome = "met" if high < 1 + GOAL else "not met" if low > 1 + GOAL else "not resolved by this run"
    print(f"goal: watching costs < {GOAL:.1%} of step time — {outcome} (95 % interval of watched/plain: "
          f"{low:.4f}–{high:.4f})")
    print(f"\nDiagnoser's per-step hooks (on_log, on_step_end) timed inside the steps of a run watched throughout "
          f"({len(hooks)} steps): median "
          f"{statistics.median(hooks) * 1e6:.1f} µs = {statistics.median(hooks) / plain:.3%}, mean "
          f"{statistics.fmean(hooks) * 1e6:.1f} µs = {statistics.fmean(hooks) / plain:.3%} of a median plain step")
    print(f"one Diagnoser.on_log call in a tight loop (warm caches): {per_call * 1e6:.1f} µs CPU = "
          f"{per_call / plain:.3%} of a median plain step")
    print(f"once per run, Diagnoser.on_train_begin (pre-flight checklist): {start * 1e3:.1f} ms = "
          f"{start / plain:.1f} steps of this model")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
