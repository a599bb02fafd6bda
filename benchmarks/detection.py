"""Detection vs peers: which tool stops (or flags) which failing run, how early, and which healthy run it wrongly stops.

    python benchmarks/detection.py            # full set: every scenario x 3 seeds x 2 archs (a few minutes)
    python benchmarks/detection.py --quick    # one run each of healthy, exploding, no_target_tokens (smoke test)
    python benchmarks/detection.py --scenarios dpo_healthy,dpo_diverged   # only these variants (3 seeds x 2 archs)

Every labelled run is a real tiny CPU Trainer run (``trainwatch.testing``; the DPO and GRPO ones are TRL's
``DPOTrainer`` and ``GRPOTrainer``, run when ``trl`` is installed), trained once to its end with nothing
stopping it, while trainwatch's ``Diagnoser`` (defaults, ``report=False``) and HF's ``EarlyStoppingCallback``
(patience 1 and 3, via :class:`peers.RecordingStopper`) watch it live and each batch's raw loss is recorded. The
other peers are then run on the recorded series (see :mod:`peers`). The live Diagnoser's findings are checked to
equal a replay of the run's ``log_history`` through ``Engine``: same series, same verdict (a pre-flight decision,
made from the data before the first log, is found by the replay with the same kind and cause when the logs show it).

Each run evaluates (every ``eval_steps``; 25 where the scenario sets none) so that EarlyStoppingCallback can work;
GRPO runs do not (their eval loss is the RL surrogate, no measure of progress), so HF EarlyStopping never stops them.
Onset of each failure, from which the delay is counted: exploding with cause non_finite, the first step whose raw
loss is NaN/inf; other explosions, the first step whose raw loss is above the first step's loss; flat, step 0 (these
runs never learn and have no warmup); overfitting, the step of the best eval loss of the whole run. Compute saved is ``max_steps - detection step``, summed over a class's caught runs,
as a share of the class's total steps, assuming each flag stops the run (trainwatch: ``stop_on`` the kind).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import RecordingStopper, first_non_finite_step, spike_detection_step  # noqa: E402

EXPLODING, FLAT, OVERFITTING, HEALTHY = "exploding", "flat", "overfitting", "healthy"
CLASSES = (HEALTHY, EXPLODING, FLAT, OVERFITTING)
DEFAULT_EVAL_STEPS = 25


@dataclass(frozen=True)
class Variant:
    """One labelled kind of run: a ``trainwatch.testing`` scenario, optionally with realistic changes."""

    name: str
    scenario: str
    expected: tuple[str, str | None]
    overrides: dict[str, Any] = field(default_factory=dict)


HAVE_TRL = importlib.util.find_spec("trl") is not None
"""The DPO and GRPO variants are TRL runs, so they need ``pip install trl``; without it, they are left out."""


def variants() -> list[Variant]:
    from trainwatch.testing import SCENARIOS, TRL_SCENARIOS

    found = [Variant(name, name, spec.expected) for name, spec in SCENARIOS.items()]
    # harder healthy runs a user really has: batch size 1, and half the run spent warming up
    found.append(Variant("healthy_batch1", "healthy_noisy", ("healthy", None), {"per_device_train_batch_size": 1, "learning_rate": 5e-4}))
    found.append(Variant("healthy_warmup50", "healthy", ("healthy", None), {"max_steps": 200, "warmup_steps": 0.5, "eval_steps": 50}))
    if HAVE_TRL:
        found.extend(Variant(name, name, spec.expected) for name, spec in TRL_SCENARIOS.items())
    return found


TRAINWATCH = ("trainwatch", "trainwatch_stop")
HAVE_LIGHTNING = importlib.util.find_spec("lightning") is not None
"""SpikeDetection is run for real, so it needs ``pip install lightning``; without it, its column is left out."""
DETECTORS = ("trainwatch", "trainwatch_stop", "hf_early_stop_p1", "hf_early_stop_p3", "nan_stop_batch", "nan_stop_logged",
             *(("lightning_spike",) if HAVE_LIGHTNING else ()))
DETECTOR_TITLES = {
    "trainwatch": "trainwatch Diagnoser() (flags)",
    "trainwatch_stop": "trainwatch Diagnoser(stop_on=all) (stops)",
    "hf_early_stop_p1": "HF EarlyStopping p=1",
    "hf_early_stop_p3": "HF EarlyStopping p=3",
    "nan_stop_batch": "TerminateOnNaN (batch loss)",
    "nan_stop_logged": "TerminateOnNaN (logged loss)",
    "lightning_spike": "Lightning SpikeDetection",
}


def run_one(variant: Variant, arch: str, seed: int) -> dict[str, Any]:
    """Train one labelled run to its end with every live watcher attached; return its series and their verdicts."""
    from transformers import EarlyStoppingCallback, PrinterCallback

    from trainwatch import Diagnoser
    from trainwatch.engine import Engine
    from trainwatch.findings import KINDS
    from trainwatch.testing import SCENARIOS, TRL_SCENARIOS, tiny_trainer, tiny_trl_trainer

    trl_spec = TRL_SCENARIOS.get(variant.scenario)
    build = tiny_trl_trainer if trl_spec else tiny_trainer
    settings = {**(trl_spec or SCENARIOS[variant.scenario]).args, **variant.overrides}
    evaluates = not (trl_spec and trl_spec.trainer == "grpo")
    eval_steps = settings.get("eval_steps") or DEFAULT_EVAL_STEPS
    diagnoser = Diagnoser(report=False)
    stopping = Diagnoser(stop_on=KINDS, report=False)
    stoppers = {
        f"hf_early_stop_p{p}": RecordingStopper(EarlyStoppingCallback(early_stopping_patience=p))
        for p in (1, 3)
        if evaluates
    }
    stoppers["trainwatch_stop"] = RecordingStopper(stopping)
    with tempfile.TemporaryDirectory() as output_dir:
        early_stopping = {
            "eval_strategy": "steps",
            "save_strategy": "steps",
            "save_steps": eval_steps,
            "save_total_limit": 2,
            "load_best_model_at_end": True,
            "metric_for_best_model": "eval_loss",
            "eval_steps": eval_steps,
        }
        trainer = build(
            variant.scenario,
            output_dir,
            callbacks=[diagnoser, *stoppers.values()],
            seed=seed,
            arch=arch,
            report_to="none",
            **{**variant.overrides, **(early_stopping if evaluates else {})},
        )
        trainer.remove_callback(PrinterCallback)
        batch_losses: list[float] = []
        training_step = trainer.training_step

        def recording_step(*args: Any, **kwargs: Any) -> Any:
            loss = training_step(*args, **kwargs)
            batch_losses.append(float(loss))
            return loss

        trainer.training_step = recording_step  # type: ignore[method-assign]
        trainer.train()
    history = trainer.state.log_history
    replay = Engine(facts=diagnoser.engine.history.facts).replay((e["step"], e) for e in history)
    live = [(f.kind, f.cause, f.step) for f in diagnoser.diagnoses]
    return {
        "variant": variant.name, "arch": arch, "seed": seed, "expected": variant.expected,
        "max_steps": trainer.state.global_step,
        "batch_losses": list(enumerate(batch_losses, start=1)),
        "logged_losses": [(e["step"], e["loss"]) for e in history if "loss" in e],
        "eval_losses": [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e],
        "findings": live,
        "stop_findings": [(f.kind, f.cause, f.step) for f in stopping.diagnoses],
        "replay_matches": same_verdict(diagnoser.diagnoses, replay.findings),
        "stops": {
            "hf_early_stop_p1": None,
            "hf_early_stop_p3": None,
            **{name: s.stop_step for name, s in stoppers.items()},
        },
    }


def same_verdict(live: list[Any], replayed: list[Any]) -> bool:
    """The same kinds and causes at the same steps, except that a pre-flight decision (made from the data or the
    model before any log) is found by the replay at the step the logs show it, with the same kind and the cause
    the logs can show (``zero_gradients`` for a model no gradient can reach)."""
    from trainwatch.findings import logged_cause

    if [(f.kind, logged_cause(f.cause)) for f in live] != [(f.kind, f.cause) for f in replayed]:
        return False
    return all(a.step == b.step or a.evidence.get("decided_by") == "pre-flight" for a, b in zip(live, replayed))


def detections(run: dict[str, Any]) -> dict[str, int | None]:
    """The step at which each detector stops or flags the run (None: never)."""
    first = run["findings"][0] if run["findings"] else None
    return {
        "trainwatch": first[2] if first else None,
        "trainwatch_stop": run["stops"]["trainwatch_stop"],
        **{k: v for k, v in run["stops"].items() if k != "trainwatch_stop"},
        "nan_stop_batch": first_non_finite_step(run["batch_losses"]),
        "nan_stop_logged": first_non_finite_step(run["logged_losses"]),
        **({"lightning_spike": spike_detection_step(run["batch_losses"])} if HAVE_LIGHTNING else {}),
    }


def onset(run: dict[str, Any]) -> int | None:
    kind = run["expected"][0]
    if kind == EXPLODING and run["expected"][1] == "non_finite":
        return first_non_finite_step(run["batch_losses"])
    if kind == EXPLODING:
        losses = run["batch_losses"]
        start = losses[0][1]
        return next((s for s, v in losses if not math.isfinite(v) or v > start), None)
    if kind == FLAT:
        return 0
    if kind == OVERFITTING:
        return min(run["eval_losses"], key=lambda e: e[1])[0]
    return None


def first_finding(run: dict[str, Any], detector: str = "trainwatch") -> tuple[str, str, int] | None:
    findings = run["findings"] if detector == "trainwatch" else run["stop_findings"]
    return findings[0] if findings else None


def named_correctly(run: dict[str, Any], detector: str = "trainwatch") -> bool:
    first = first_finding(run, detector)
    if first is None:
        return run["expected"][0] == HEALTHY
    from trainwatch.findings import logged_cause

    kind, cause, _ = first
    want_kind, want_cause = run["expected"]
    return kind == want_kind and (want_cause is None or want_cause in (cause, logged_cause(cause)))


def run_id(run: dict[str, Any]) -> str:
    return f"{run['variant']}/{run['arch']}/s{run['seed']}"


def summarise(runs: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The per-class table, and every run where trainwatch missed, misnamed, misfired or lost to a peer."""
    rows = ["| class | detector | caught | named correctly | false alarms | onset→detection median / max | compute saved |",
            "|---|---|---|---|---|---|---|"]
    lines: list[str] = []
    for cls in CLASSES:
        members = [r for r in runs if r["expected"][0] == cls]
        if not members:
            continue
        total_steps = sum(r["max_steps"] for r in members)
        for det in DETECTORS:
            steps = [(r, r["detections"][det]) for r in members]
            caught = [(r, s) for r, s in steps if s is not None]
            named = sum(named_correctly(r, det) for r in members) if det in TRAINWATCH else None
            named_cell = f"{named}/{len(members)}" if named is not None and cls != HEALTHY else "—"
            if cls == HEALTHY:
                alarms = ", ".join(run_id(r) for r, _ in caught)
                rows.append(f"| {cls} | {DETECTOR_TITLES[det]} | — | {named_cell} | {len(caught)}/{len(members)}"
                            f"{' (' + alarms + ')' if alarms and det in TRAINWATCH else ''} | — | — |")
                continue
            delays = [s - r["onset"] for r, s in caught]
            delay_cell = f"{statistics.median(delays):g} / {max(delays)}" if delays else "—"
            saved = sum(r["max_steps"] - s for r, s in caught)
            rows.append(f"| {cls} | {DETECTOR_TITLES[det]} | {len(caught)}/{len(members)} | {named_cell} | — | "
                        f"{delay_cell} | {saved / total_steps:.0%} |")
    for r in runs:
        if not r["replay_matches"]:
            lines.append(f"{run_id(r)}: live findings differ from the replay of its log_history")
        for det in TRAINWATCH:
            lines.extend(f"{run_id(r)}: {DETECTOR_TITLES[det]} {problem}" for problem in _shortfalls(r, det))
    return "\n".join(rows), lines


def _shortfalls(run: dict[str, Any], det: str) -> list[str]:
    """Where ``det`` missed, misnamed, misfired or was later than a peer on this run."""
    d, ours, first = run["detections"], run["detections"][det], first_finding(run, det)
    if run["expected"][0] == HEALTHY:
        return [f"flagged a healthy run {first[:2]} at step {ours}"] if ours is not None else []
    if ours is None:
        return [f"missed it; peers: {_peer_steps(d)}"]
    problems = [] if named_correctly(run, det) else [f"named it {first[:2] if first else None}, expected {run['expected']}"]
    earlier = {p: s for p, s in d.items() if p not in TRAINWATCH and s is not None and s < ours}
    if earlier:
        problems.append(f"at step {ours} (onset {run['onset']}), later than {_peer_steps(earlier)}")
    return problems


def _peer_steps(steps: dict[str, int | None]) -> str:
    return ", ".join(f"{p} at {s}" for p, s in steps.items() if p not in TRAINWATCH and s is not None) or "none"


def _worker(job: tuple[Variant, str, int]) -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    return run_one(*job)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one llama run each of healthy, exploding, no_target_tokens")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", action="store_true", help="also print every run's detection steps")
    parser.add_argument(
        "--scenarios",
        type=lambda text: [n for n in text.split(",") if n],
        help="comma-separated variant names: only these (every seed and arch)",
    )
    args = parser.parse_args(argv)
    known = [v.name for v in variants()]
    unknown = sorted(set(args.scenarios or ()) - set(known))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if args.quick:
        chosen = [v for v in variants() if v.name in ("healthy", "exploding", "no_target_tokens")]
        jobs = [(v, "llama", 0) for v in chosen]
    else:
        chosen = [v for v in variants() if args.scenarios is None or v.name in args.scenarios]
        jobs = [(v, arch, seed) for v in chosen for arch in ("llama", "gpt2") for seed in (0, 1, 2)]
    log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    if not HAVE_LIGHTNING:
        print("note: lightning is not installed, so Lightning SpikeDetection is not run (pip install lightning)\n")
    if not HAVE_TRL:
        print("note: trl is not installed, so the DPO and GRPO variants are not run (pip install trl)\n")
    log(f"training {len(jobs)} labelled runs on {args.workers} worker(s)...")
    import trainwatch.testing  # noqa: F401 - imported once here, so forked workers start with it loaded
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        runs = list(pool.map(_worker, jobs))
    for run in runs:
        run["onset"] = onset(run)
        run["detections"] = detections(run)
    if args.runs or args.quick:
        print("| run | expected | onset | max steps | " + " | ".join(DETECTORS) + " | trainwatch finding |")
        print("|---|---|---|---|" + "---|" * len(DETECTORS) + "---|")
        for r in runs:
            cells = " | ".join(str(r["detections"][d] if r["detections"][d] is not None else "—") for d in DETECTORS)
            first = f"{r['findings'][0][0]}/{r['findings'][0][1]}" if r["findings"] else "—"
            print(f"| {run_id(r)} | {r['expected'][0]}/{r['expected'][1] or '*'} | {r['onset'] if r['onset'] is not None else '—'} "
                  f"| {r['max_steps']} | {cells} | {first} |")
        print()
    table, lines = summarise(runs)
    print(table)
    matches = sum(r["replay_matches"] for r in runs)
    print(f"\nlive Diagnoser findings == Engine replay of log_history: {matches}/{len(runs)} runs")
    print("\nwhere trainwatch missed, misnamed, misfired or was later than a peer:")
    print("\n".join(f"- {line}" for line in lines) if lines else "- nowhere")
    failing = [r for r in runs if r["expected"][0] != HEALTHY]
    print("\ngoal: every failing run caught no later than any peer, no healthy run flagged")
    for det in TRAINWATCH:
        on_time = sum(not any("later than" in p or "missed" in p for p in _shortfalls(r, det)) for r in failing)
        flagged = sum(r["detections"][det] is not None for r in runs if r["expected"][0] == HEALTHY)
        print(f"- {DETECTOR_TITLES[det]}: {on_time}/{len(failing)} failing runs caught no later than every peer; "
              f"{flagged} healthy run(s) flagged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
