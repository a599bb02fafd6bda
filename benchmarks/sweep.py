"""``trainwatch analyze`` over a sweep of 1 000 small runs, at ``--jobs 1`` and ``--jobs 2``: time and peak memory,
beside tbparse and TensorBoard's ``EventAccumulator`` reading the same TensorBoard files.

Writes (once, cached) 1 000 runs into one folder, each a Trainer output dir written by Trainer's own writers: half
report to TensorBoard (transformers' ``TensorBoardCallback`` driven with real ``TrainingArguments``, a real
``TrainerState`` and a real model config, so the files hold the ``args`` and ``model_config`` texts and the
``train/*``, ``eval/*`` scalars Trainer writes), half are a ``trainer_state.json`` (``TrainerState.save_to_json``, as
Trainer saves it). Each run logs ``--steps`` steps every 5 steps and evaluates every 20, on the curve of a healthy
(70 %), exploding, flat or overfitting (10 % each) run.

Then, in interleaved rounds (a load change on a shared machine hits all alike), it times:

- ``trainwatch analyze DIR --jobs 1`` and ``--jobs 2`` end to end (a subprocess: interpreter start, finding the
  runs, reading, judging, the report), checking every run got a verdict;
- tbparse (``SummaryReader(DIR).scalars``) and ``EventAccumulator`` (every scalar kept, one per run directory)
  reading the TensorBoard half, in a fresh interpreter each; they only read, they judge nothing;
- trainwatch reading the same TensorBoard half without judging (``read_run`` and its values), likewise.

Peak memory is the largest resident set of the process tree's sum, sampled every 50 ms from /proc (Linux), and,
exactly, the largest single process (``ru_maxrss`` of the children). Each figure is the best of the rounds.

Usage: ``nice python benchmarks/sweep.py [--dir DIR] [--runs 1000] [--steps 200] [--repeat 3] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

KINDS = ("healthy",) * 7 + ("exploding", "flat", "overfitting")
LOG_EVERY, EVAL_EVERY = 5, 20


def curve(kind: str, step: int, steps: int, rng: random.Random) -> tuple[float, float]:
    """The train and eval loss of a run of ``kind`` at ``step``."""
    noise = 1 + 0.02 * rng.gauss(0, 1)
    if kind == "flat":
        return 2.5 * noise, 2.6 * (1 + 0.002 * rng.gauss(0, 1))
    train = 1.0 + 2.0 * math.exp(-step / (steps / 6))
    evaluation = train + 0.1
    if kind == "exploding" and step > steps * 0.6:
        train *= 3 ** ((step - steps * 0.6) / (steps * 0.1))
    if kind == "overfitting" and step > steps * 0.4:
        train *= 1 - 0.6 * (step - steps * 0.4) / steps
        evaluation += 0.4 * (step - steps * 0.4) / steps
    return train * noise, evaluation * (1 + 0.002 * rng.gauss(0, 1))


def logs_of(kind: str, steps: int, seed: int) -> list[tuple[int, dict[str, float]]]:
    """What Trainer's ``on_log`` gets over the run: train logs, evaluations, and the summary at the end."""
    rng = random.Random(seed)
    entries = []
    for step in range(LOG_EVERY, steps + 1, LOG_EVERY):
        train, evaluation = curve(kind, step, steps, rng)
        lr = (1e-6 if kind == "flat" else 2e-4) * (1 - step / steps)
        entries.append(
            (step, {"loss": train, "grad_norm": 0.5 + 0.1 * rng.random(), "learning_rate": lr, "epoch": step / steps})
        )
        if step % EVAL_EVERY == 0:
            entries.append(
                (
                    step,
                    {
                        "eval_loss": evaluation,
                        "eval_runtime": 0.5,
                        "eval_samples_per_second": 64.0,
                        "eval_steps_per_second": 8.0,
                        "epoch": step / steps,
                    },
                )
            )
    entries.append(
        (
            steps,
            {
                "train_runtime": 60.0,
                "train_samples_per_second": 13.3,
                "train_steps_per_second": 3.3,
                "total_flos": 1e12,
                "train_loss": 1.5,
                "epoch": 1.0,
            },
        )
    )
    return entries


def write_sweep(directory: Path, runs: int, steps: int) -> None:
    """The sweep, written by Trainer's writers; reused when it is already there."""
    done = directory / "COMPLETE"
    if done.exists() and done.read_text() == f"{runs} {steps} v1":
        return
    from transformers import LlamaConfig, TrainerControl, TrainerState, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    config = LlamaConfig(
        vocab_size=32_000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
    )
    model = SimpleNamespace(config=config)  # all TensorBoardCallback reads of the model: its config
    for number in range(runs):
        kind = KINDS[number // 2 % len(KINDS)]  # each kind in both formats
        output_dir = directory / f"run-{number:04d}-{kind}"
        args = TrainingArguments(
            output_dir=str(output_dir),
            learning_rate=2e-4,
            max_steps=steps,
            logging_steps=LOG_EVERY,
            eval_strategy="steps",
            eval_steps=EVAL_EVERY,
            warmup_steps=10,
            report_to=[],
        )
        state = TrainerState(max_steps=steps, logging_steps=LOG_EVERY, eval_steps=EVAL_EVERY)
        entries = logs_of(kind, steps, seed=number)
        if number % 2 == 0:  # TensorBoard, as Trainer's callback writes it
            callback, control = TensorBoardCallback(), TrainerControl()
            callback.on_train_begin(args, state, control, model=model)
            for step, logs in entries:
                state.global_step = step
                callback.on_log(args, state, control, logs=dict(logs))
            callback.on_train_end(args, state, control)
        else:  # trainer_state.json, as Trainer saves it
            output_dir.mkdir(parents=True, exist_ok=True)
            state.global_step = steps
            state.log_history = [{**logs, "step": step} for step, logs in entries]
            state.save_to_json(str(output_dir / "trainer_state.json"))
    done.write_text(f"{runs} {steps} v1")


class TreeMemory:
    """The largest summed resident set of a process and its descendants, sampled from /proc (Linux)."""

    def __init__(self, root: int, every: float = 0.05) -> None:
        self.root, self.every, self.peak_kib = root, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            parents: dict[int, int] = {}
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        stat = Path(f"/proc/{entry}/stat").read_text()
                    except OSError:
                        continue
                    parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            tree, grew = {self.root}, True
            while grew:
                grown = tree | {pid for pid, parent in parents.items() if parent in tree}
                grew, tree = grown != tree, grown
            total = 0
            for pid in tree:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
            self.peak_kib = max(self.peak_kib, total)
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


def timed(command: list[str]) -> dict[str, float]:
    """Run ``command`` in a fresh wrapper process: wall seconds, peak tree memory (sampled) and largest process."""
    wrapper = (
        "import json, resource, subprocess, sys, time; sys.path.insert(0, sys.argv[1]); import sweep; "
        "start = time.perf_counter(); child = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, "
        "stderr=subprocess.PIPE, text=True); memory = sweep.TreeMemory(child.pid); out, err = child.communicate(); "
        "seconds = time.perf_counter() - start; tree = memory.stop(); "
        "print(json.dumps({'seconds': seconds, 'tree_kib': tree, 'rc': child.returncode, 'out': out, "
        "'err': err[-2000:], 'largest_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, str(Path(__file__).parent), *command],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


READ_ONLY = {
    "tbparse": "from tbparse import SummaryReader; print(len(SummaryReader(sys.argv[1]).scalars))",
    "EventAccumulator(all)": (
        "from tensorboard.backend.event_processing import event_accumulator as ea; n = 0\n"
        "for folder, _, files in sorted(os.walk(sys.argv[1])):\n"
        "    if any('tfevents' in f for f in files):\n"
        "        acc = ea.EventAccumulator(folder, size_guidance={ea.SCALARS: 0}); acc.Reload()\n"
        "        n += sum(len(acc.Scalars(t)) for t in acc.Tags()['scalars'])\n"
        "print(n)"
    ),
    "trainwatch read only": (
        "from trainwatch.logs.tensorboard import event_files, read_run; n = 0\n"
        "for folder, _, files in sorted(os.walk(sys.argv[1])):\n"
        "    if any('tfevents' in f for f in files):\n"
        "        run = read_run(event_files(folder))\n"
        "        n += sum(len(b[0]) for b in run.batches()) + sum(run.other_tags.values())\n"
        "print(n)"
    ),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where the sweep is cached (default /tmp/trainwatch-sweep-RUNS)")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best is reported")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 runs, one round")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.repeat = 20, 1
    args.dir = args.dir or Path(f"/tmp/trainwatch-sweep-{args.runs}")
    args.dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_sweep(args.dir, args.runs, args.steps)
    size = sum(p.stat().st_size for p in args.dir.rglob("*") if p.is_file())
    tensorboard = (args.runs + 1) // 2
    print(
        f"sweep: {args.runs} runs ({tensorboard} TensorBoard, {args.runs - tensorboard} trainer_state.json), "
        f"{args.steps} steps each, {size / 1e6:.1f} MB, ready in {time.perf_counter() - start:.1f} s"
    )

    python = sys.executable
    commands = {
        f"analyze --jobs {jobs}": [python, "-m", "trainwatch", "analyze", str(args.dir), "--jobs", str(jobs)]
        for jobs in (1, 2)
    }
    commands.update(
        {name: [python, "-c", "import os, sys\n" + code, str(args.dir)] for name, code in READ_ONLY.items()}
    )
    best: dict[str, dict[str, float]] = {}
    for round_ in range(1, args.repeat + 1):
        for name, command in commands.items():
            result = timed(command)
            if name.startswith("analyze"):
                counts = [line for line in result["out"].splitlines() if line.startswith(f"{args.runs} runs: ")]
                if result["rc"] not in (0, 1) or not counts:
                    raise SystemExit(f"{name} failed (exit {result['rc']}): {result['err'][-500:]}")
                result["summary"] = counts[0]
            else:
                result["summary"] = f"{int(result['out'].split()[-1]):,} scalars"
            print(
                f"round {round_} {name:22s} {result['seconds']:7.2f} s  peak {result['tree_kib'] / 1024:6.0f} MiB "
                f"(largest process {result['largest_kib'] / 1024:4.0f} MiB)  {result['summary']}",
                flush=True,
            )
            previous = best.get(name)
            best[name] = {
                "seconds": min(result["seconds"], previous["seconds"]) if previous else result["seconds"],
                "tree_kib": min(result["tree_kib"], previous["tree_kib"]) if previous else result["tree_kib"],
                "largest_kib": min(result["largest_kib"], previous["largest_kib"])
                if previous
                else result["largest_kib"],
            }
    print(f"\nbest of {args.repeat} round(s):")
    for name, result in best.items():
        print(
            f"{name:22s} {result['seconds']:7.2f} s  {args.runs / result['seconds'] if name.startswith('analyze') else tensorboard / result['seconds']:7.1f} runs/s"
            f"  peak {result['tree_kib'] / 1024:6.0f} MiB  largest process {result['largest_kib'] / 1024:5.0f} MiB"
        )
    one, two = best["analyze --jobs 1"]["seconds"], best["analyze --jobs 2"]["seconds"]
    print(f"--jobs 2 vs --jobs 1: {one / two:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
