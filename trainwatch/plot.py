"""``trainwatch analyze --plot``: the curves a diagnosis rests on, with the step where each was decided.

matplotlib is optional (``pip install trainwatch[plot]``) and imported only here, with the Agg backend, so the
command works on a headless machine and ``trainwatch analyze`` without ``--plot`` never pays for it. The curves come
decimated (:class:`trainwatch.curves.Decimator`: every value of a short run; of a long one, each bucket's
min and max, so spikes survive, in a few thousand points whatever the length); values that are not finite cannot be
drawn as points, so they are marked with a red cross at the top of the axes at their step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainwatch.logs import LogReadError

if TYPE_CHECKING:
    from trainwatch.analysis import RunReport

KIND_COLOURS = {"exploding": "tab:red", "flat": "tab:purple", "overfitting": "tab:orange"}


def check_plotting(path: str) -> None:
    """Fail before any reading when the plot cannot be made: no matplotlib, or nowhere to write it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LogReadError("--plot needs matplotlib: pip install 'trainwatch[plot]'") from None
    if not Path(path).parent.resolve().is_dir():
        raise LogReadError(f"--plot {path}: directory {Path(path).parent} does not exist")


def plot_reports(reports: Sequence[RunReport], path: str) -> list[Path]:
    """One PNG per readable run: ``path`` itself for one run, ``<stem>-<n><suffix>`` for the n-th of several."""
    readable = [r for r in reports if r.error is None]
    target = Path(path)
    written = []
    for n, report in enumerate(readable, 1):
        out = target if len(readable) == 1 else target.with_name(f"{target.stem}-{n}{target.suffix or '.png'}")
        _plot(report, out)
        written.append(out)
    return written


def _plot(report: RunReport, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (loss_ax, grad_ax) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5), height_ratios=(2, 1))
    _curve(loss_ax, report.curves.get("loss"), "train loss", "tab:blue")
    _curve(loss_ax, report.curves.get("eval_loss"), "eval loss", "tab:green", marker="o")
    _curve(grad_ax, report.curves.get("grad_norm"), "grad norm", "tab:gray")
    for finding in report.diagnoses:
        colour = KIND_COLOURS.get(finding.kind, "black")
        for ax in (loss_ax, grad_ax):
            ax.axvline(finding.step, color=colour, linestyle="--", linewidth=1.2)
        loss_ax.annotate(
            f"{finding.kind} ({finding.cause})\nstep {finding.step}",
            xy=(finding.step, 0.5),
            xycoords=("data", "axes fraction"),
            xytext=(4, 0),
            textcoords="offset points",
            color=colour,
            fontsize=9,
        )
    loss_ax.set_ylabel("loss")
    grad_ax.set_ylabel("grad norm")
    grad_ax.set_xlabel("step")
    loss_ax.set_title(f"{_short(report.source)}: {report.verdict}", fontsize=10)
    for ax in (loss_ax, grad_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=110)
    except OSError as error:
        raise LogReadError(f"--plot {out}: cannot write ({error.strerror or error})") from None
    finally:
        plt.close(fig)


def _curve(
    ax: Any, curve: tuple[np.ndarray, np.ndarray] | None, label: str, colour: str, marker: str | None = None
) -> None:
    if curve is None or not len(curve[0]):
        return
    steps, values = curve
    finite = np.isfinite(values)
    if finite.any():
        ax.plot(steps[finite], values[finite], label=label, color=colour, linewidth=1, marker=marker, markersize=3)
    if not finite.all():
        ax.scatter(
            steps[~finite],
            np.full((~finite).sum(), 0.97),
            transform=ax.get_xaxis_transform(),
            marker="x",
            color="red",
            label=f"{label}: NaN/inf",
            zorder=3,
        )


def _short(source: str, width: int = 90) -> str:
    return source if len(source) <= width else "..." + source[-width + 3 :]
