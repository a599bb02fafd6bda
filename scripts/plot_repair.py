"""Plot repaired runs: each attempt's train and eval loss on the original run's step axis.

    python scripts/plot_repair.py OUT.png OUTPUT_DIR [OUTPUT_DIR ...]

Each OUTPUT_DIR is a run made with ``--repair`` (``python -m trainwatch.train --repair`` or
``trainwatch.train_with_repair``): its ``trainwatch/repair.json`` lists the attempts and where each began, and each
attempt's curves are read back from its TensorBoard log with ``trainwatch.analyze``. NaN/inf losses are drawn as
crosses at the top of the panel. Needs matplotlib.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import trainwatch


def attempt_curves(output_dir: str, start_step: int) -> dict[str, tuple[list[int], list[float]]]:
    (report,) = trainwatch.analyze(output_dir)
    return {
        name: ([start_step + int(s) for s in steps], [float(v) for v in values])
        for name, (steps, values) in report.curves.items()
    }


def plot(out: str, output_dirs: list[str]) -> None:
    figure, axes = plt.subplots(1, len(output_dirs), figsize=(6.5 * len(output_dirs), 4.5), squeeze=False)
    for axis, output_dir in zip(axes[0], output_dirs):
        repair = json.loads((Path(output_dir) / "trainwatch" / "repair.json").read_text())
        attempts = repair["attempts"]
        rates = [a["changes"].get("learning_rate", [None, None]) for a in attempts[1:]]
        rate = rates[0][0] if rates else None  # the original's, as the first repair changed it
        for attempt in attempts:
            curves = attempt_curves(attempt["output_dir"], attempt["start_step"])
            label = "original" if attempt["number"] == 0 else f"attempt {attempt['number']}"
            rate = attempt["changes"].get("learning_rate", [None, rate])[1]
            label += f" (lr {rate:g})" if rate is not None else ""
            label += f": {attempt['verdict']}"
            for name, style in (("loss", ".-"), ("eval_loss", "o--")):
                steps, values = curves.get(name, ([], []))
                finite = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
                xs, ys = zip(*finite) if finite else ((), ())
                (line,) = axis.plot(xs, ys, style, label=f"{label}, {name.replace('_', ' ')}", markersize=3)
                for step in (s for s, v in zip(steps, values) if not math.isfinite(v)):
                    axis.plot(step, 0.97, "x", color=line.get_color(), transform=axis.get_xaxis_transform())
                    axis.annotate(
                        "NaN",
                        (step, 0.93),
                        xycoords=axis.get_xaxis_transform(),
                        ha="center",
                        va="top",
                        fontsize=7,
                        color=line.get_color(),
                    )
            if attempt["start_step"]:
                axis.axvline(attempt["start_step"], color="grey", linewidth=0.8, linestyle=":")
        axis.set_yscale("log")
        axis.set_xlabel("step (of the original run)")
        axis.set_ylabel("loss")
        axis.set_title(f"{Path(output_dir).name}: {repair['status']}")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    plot(sys.argv[1], sys.argv[2:])
