"""What the gradient probe and the NaN replay cost: one armed read, the hook on a step it is not armed for, the loss
watch on every step, and the one replay of a run that goes NaN, beside the step time.

    python benchmarks/gradient_probe.py           # the tiny model and the shipped 4-bit model (a minute or two)
    python benchmarks/gradient_probe.py --quick   # the tiny model only, fewer repetitions, for the smoke test

For each model a short real Trainer run (no evaluation, no saving) gives the median optimizer step time. Then one
forward/backward on a train batch leaves real gradients, and the probe reads them ``--repeat`` times (median): that
is the armed cost, paid on the first step, on two steps before and one after each evaluation, and on the step after
a suspicious log. The unarmed cost is the Diagnoser's ``on_pre_optimizer_step`` on a step far from any evaluation:
the test that finds nothing to do. The loss watch (trainwatch/nan_origin.py) runs on every step: its forward hook
keeps the micro-batch and its loss, and ``check`` reads the loss to the host once; the replay of the batch, module by
module, runs once in a run, on its first non-finite loss. Times are wall clock on this machine; on a shared machine
the step time moves more than the probe does, so the medians matter, not the last digit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import TrainerCallback, TrainerControl, TrainerState  # noqa: E402

from trainwatch import Diagnoser  # noqa: E402
from trainwatch.gradients import BASELINE, GradientProbe  # noqa: E402
from trainwatch.nan_origin import LossWatch, replay  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


def median_seconds(call: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, trainer: Any, repeat: int) -> dict[str, Any]:
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    model = trainer.model
    model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    inputs = trainer._prepare_inputs(batch)  # noqa: SLF001 - the batch as Trainer feeds it
    outputs = model(**inputs)
    outputs.loss.backward()

    probe = GradientProbe()

    def armed_read() -> None:
        probe.arm(BASELINE)
        probe.read(model, 1)

    armed_read()  # warm-up: the list of trainable tensors is built once per run
    armed = median_seconds(armed_read, repeat)
    diagnoser = Diagnoser(report=False, preflight=False)
    diagnoser._probe = GradientProbe()  # noqa: SLF001 - as on_train_begin sets it
    diagnoser._probe.reset()  # noqa: SLF001
    diagnoser._probe._due = None  # noqa: SLF001 - not armed: past the baseline
    state = TrainerState()
    state.global_step, state.eval_steps = 1000, 500
    args, control = trainer.args, TrainerControl()
    unarmed = median_seconds(lambda: diagnoser.on_pre_optimizer_step(args, state, control, model=model), repeat * 100)
    watch = LossWatch(model)
    watch.close()  # timed by hand below: the hook as the forward pass calls it, then the step's check

    def watched_step() -> None:
        watch._record(model, (), inputs, outputs)  # noqa: SLF001
        watch.check(1)

    watched = median_seconds(watched_step, repeat * 100)
    replayed = median_seconds(lambda: replay(model, (), inputs, 1), max(3, repeat // 10))
    step = statistics.median(timer.times[1:] or timer.times)
    return {
        "model": name,
        "trainable_tensors": len(probe.latest.names) if probe.latest else 0,
        "step_s": step,
        "armed_us": armed * 1e6,
        "armed_pct_of_step": 100 * armed / step,
        "unarmed_ns": unarmed * 1e9,
        "watch_us": watched * 1e6,
        "watch_pct_of_step": 100 * watched / step,
        "replay_ms": replayed * 1e3,
    }


def tiny(output_dir: str, steps: int) -> Any:
    from trainwatch.testing import tiny_trainer

    return tiny_trainer("healthy", output_dir, report_to=[], max_steps=steps, eval_strategy="no")


def shipped_4bit(output_dir: str, steps: int) -> Any:
    from trainwatch import train

    script, args = train.parse([
        "--use_cpu", "true", "--output_dir", output_dir, "--max_examples", "96", "--max_steps", str(steps),
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
        "--report_to", "none", "--disable_tqdm", "true", "--stop_on", "none", "--logging_steps", "1000",
    ])
    trainer, _ = train.build_trainer(script, args, train.load_tokenizer(script))
    trainer.remove_callback(Diagnoser)
    return trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the tiny model only, fewer repetitions")
    parser.add_argument("--repeat", type=int, default=200, help="armed reads timed per model (default 200)")
    options = parser.parse_args(argv)
    repeat = 20 if options.quick else options.repeat
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(measure("tiny llama (full fine-tune)", tiny(tmp + "/tiny", 10 if options.quick else 30), repeat))
        if not options.quick:
            rows.append(measure("shipped 4-bit + LoRA (CPU)", shipped_4bit(tmp + "/4bit", 8), repeat))
    print("| model | trainable tensors | median step | armed read (median) | armed read / step | unarmed hook (median) "
          "| loss watch per step | loss watch / step | NaN replay (once) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['trainable_tensors']} | {r['step_s'] * 1e3:.1f} ms | {r['armed_us']:.0f} µs | "
              f"{r['armed_pct_of_step']:.3f} % | {r['unarmed_ns']:.0f} ns | {r['watch_us']:.1f} µs | "
              f"{r['watch_pct_of_step']:.3f} % | {r['replay_ms']:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
