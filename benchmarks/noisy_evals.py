"""False alarms of the overfitting rule on noisy eval plateaus, and its recall on slow overfits: synthetic series
replayed through the real engine, no training.

    python benchmarks/noisy_evals.py                        # 200 series per setting (a few seconds)
    python benchmarks/noisy_evals.py --quick                # 20 per setting (smoke test)
    python benchmarks/noisy_evals.py --rule min_noise_evals=4 --rule rise_over_noise=4   # other thresholds

A *healthy* series: the eval loss falls to a plateau and stays there, its evaluation-to-evaluation noise i.i.d. or
AR(1) (ρ = 0.5: a slowly wandering model) at σ of its level, while the train loss converges too (a steady gap),
logged every 5 steps with 5 % noise, evaluated every 20. Flagged at any evaluation, it is a false alarm. An
*overfit* series: the eval loss falls to its best at half the run, then rises by r of its level at each evaluation,
with the same noise. σ = 0.5 % is what real eval losses on a fixed set show on a plateau; 8 % is the ±15 % swing of
a high-learning-rate run. The rule judges rises against the eval loss's own noise measured on a few evaluations, so
what is left here is the price of deciding early on short runs (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainwatch.engine import Engine, build_rules  # noqa: E402

EVAL_EVERY, LOG_EVERY = 20, 5
EVALUATIONS = (10, 20, 40)
NOISE = (0.005, 0.02, 0.08)


def flagged(evals: list[float], train: Callable[[int], float], thresholds: dict[str, float]) -> bool:
    """Whether the overfitting rule decides anything on this train/eval pair."""
    engine = Engine(build_rules(["overfitting"], **thresholds))
    for step in range(LOG_EVERY, len(evals) * EVAL_EVERY + 1, LOG_EVERY):
        engine.observe(step, {"loss": train(step), "learning_rate": 1e-4, "grad_norm": 1.0})
        if step % EVAL_EVERY == 0:
            engine.observe(step, {"eval_loss": evals[step // EVAL_EVERY - 1]})
    return bool(engine.findings)


def noise(rng: random.Random, n: int, sigma: float, rho: float) -> list[float]:
    """n values of AR(1) noise with standard deviation sigma (i.i.d. at rho 0)."""
    e, out = rng.gauss(0, sigma), []
    for _ in range(n):
        out.append(e)
        e = rho * e + math.sqrt(1 - rho * rho) * rng.gauss(0, sigma)
    return out


def plateau(rng: random.Random, n: int, sigma: float, rho: float) -> list[float]:
    """An eval loss falling from 1.5 to a plateau at 1.0 within the first third of the run."""
    tau = rng.uniform(1, n / 3)
    return [(1 + 0.5 * math.exp(-i / tau)) * (1 + e) for i, e in enumerate(noise(rng, n, sigma, rho))]


def overfit(rng: random.Random, n: int, sigma: float, rise: float) -> list[float]:
    """An eval loss falling to its best at evaluation n/2, then rising ``rise`` of that level at each evaluation."""
    best = n // 2
    clean = [1 + 0.5 * math.exp(-3 * i / best) if i <= best else (1 + 0.5 * math.exp(-3)) * (1 + rise * (i - best))
             for i in range(n)]
    return [c * (1 + e) for c, e in zip(clean, noise(rng, n, sigma, 0.0))]


def converging_train(rng: random.Random, steps: int) -> Callable[[int], float]:
    tau = rng.uniform(steps / 10, steps / 3)
    return lambda step: (0.8 + 0.8 * math.exp(-step / tau)) * (1 + rng.gauss(0, 0.05))


def falling_train(rng: random.Random) -> Callable[[int], float]:
    """Still falling when the eval loss turns: what makes a rising eval loss a widening gap."""
    return lambda step: (0.1 + 2.0 * math.exp(-step / 400)) * (1 + abs(rng.gauss(0, 0.05)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 series per setting")
    parser.add_argument("--series", type=int, default=200, help="series per setting")
    parser.add_argument("--rule", action="append", default=[], metavar="NAME=VALUE", help="an overfitting threshold")
    args = parser.parse_args()
    count = 20 if args.quick else args.series
    thresholds = {name: float(value) for name, value in (item.split("=", 1) for item in args.rule)}
    thresholds = {k: int(v) if k.endswith("evals") else v for k, v in thresholds.items()}
    rng = random.Random(0)

    print(f"False alarms on healthy plateaus ({count} series each; thresholds: {thresholds or 'defaults'})\n")
    print("| eval noise | " + " | ".join(f"{n} evaluations" for n in EVALUATIONS) + " |")
    print("|---|" + "---|" * len(EVALUATIONS))
    for rho, name in ((0.0, "i.i.d."), (0.5, "AR(1) ρ=0.5")):
        for sigma in NOISE:
            shares = []
            for n in EVALUATIONS:
                alarms = sum(
                    flagged(plateau(rng, n, sigma, rho), converging_train(rng, n * EVAL_EVERY), thresholds)
                    for _ in range(count)
                )
                shares.append(f"{alarms / count:.1%}")
            print(f"| {name} σ={sigma:.1%} | " + " | ".join(shares) + " |")

    print(f"\nRecall on slow overfits (20 evaluations, best at the 10th, train still falling; {count} series each)\n")
    print("| rise per evaluation | σ=0.5% | σ=2.0% |")
    print("|---|---|---|")
    for rise in (0.003, 0.01):
        caught = [sum(flagged(overfit(rng, 20, sigma, rise), falling_train(rng), thresholds) for _ in range(count))
                  for sigma in (0.005, 0.02)]
        print(f"| {rise:.1%} | " + " | ".join(f"{c / count:.1%}" for c in caught) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
