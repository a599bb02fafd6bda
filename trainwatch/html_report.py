"""``trainwatch analyze --html``: one self-contained page for a run or a sweep, to read offline or send on.

The page needs nothing at view time: no script, no network, the style inline and the curves inline SVG drawn here.
Its Content-Security-Policy forbids anything else, so even a string that got past the escaping could not run or load.
Every string that comes from a log (run names, notes, errors, tags) is escaped: logs are untrusted input.

Each curve is thinned to the lowest and highest value in each pixel column it covers (:data:`PLOT_WIDTH` columns),
so a page stays small and fast whatever the runs' lengths, and a one-step spike still shows. A failing run shows its
curves with the decision and the onset marked, and its fixes; a healthy run's curves are folded away.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from trainwatch import __version__
from trainwatch.analysis import RunReport
from trainwatch.findings import EXPLODING, FLAT, OVERFITTING, Finding
from trainwatch.logs import LogReadError
from trainwatch.report import format_evidence, headline
from trainwatch.sweep import COLUMNS, SweepRow, by_verdict, count_verdicts

PLOT_WIDTH = 720
"""Pixels of a plot's drawing area: each curve keeps at most two points (min, max) per pixel column."""
LOG_SCALE_RATIO = 100.0
"""A panel's values spanning more than this factor (all positive) are drawn on a log scale: an explosion's 1e4 and
the healthy 0.5 before it both stay readable."""
EVAL_DOTS = 200
"""An eval loss with at most this many values also gets a dot per evaluation."""
COLOURS = {
    "loss": "#1f77b4",
    "eval_loss": "#2ca02c",
    "grad_norm": "#7f7f7f",
    "learning_rate": "#9467bd",
    EXPLODING: "#d62728",
    FLAT: "#8c564b",
    OVERFITTING: "#ff7f0e",
}
PANELS = (  # (title, signals, height in pixels)
    ("loss", ("loss", "eval_loss"), 180),
    ("grad norm", ("grad_norm",), 90),
    ("learning rate", ("learning_rate",), 90),
)
LABELS = {"loss": "train loss", "eval_loss": "eval loss", "grad_norm": "grad norm", "learning_rate": "learning rate"}
_LEFT, _RIGHT, _TOP, _GAP, _BOTTOM = 64, 12, 18, 22, 30  # margins around and between the panels

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:960px;padding:0 1em;color:#222}
h1{font-size:1.4em;word-break:break-all}h2{font-size:1.15em;margin:0 0 .3em;word-break:break-all}
h3{font-size:1em;margin:.8em 0 .2em}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #ddd}
td.run{word-break:break-all}td.num{text-align:right}
.verdict{display:inline-block;padding:0 .5em;border-radius:3px;color:#fff;background:#2ca02c;font-weight:600}
.exploding{background:#d62728}.flat{background:#8c564b}.overfitting{background:#ff7f0e}
.unreadable{background:#555}.not-judged{background:#999}
.run{border:1px solid #ddd;border-radius:4px;padding:.8em 1em;margin:1em 0}
details.run>summary{cursor:pointer;font-weight:600;word-break:break-all}
.muted,.evidence{color:#666;font-size:12px}.error{color:#a00}
svg{display:block;margin:.6em 0;max-width:100%;height:auto}
"""


def check_html_target(path: str) -> None:
    """Fail before any reading when the page cannot be written there."""
    if not Path(path).parent.resolve().is_dir():
        raise LogReadError(f"--html {path}: directory {Path(path).parent} does not exist")


def write_html(rows: Sequence[SweepRow], path: str, title: str) -> Path:
    """Write the page of ``rows`` (a run or a sweep) to ``path``."""
    target = Path(path)
    try:
        target.write_text(render_html(rows, title), encoding="utf-8")
    except OSError as error:
        raise LogReadError(f"--html {path}: cannot write ({error.strerror or error})") from None
    return target


def render_html(rows: Sequence[SweepRow], title: str) -> str:
    """The page: the counts, a table of every run (failures first), then each run, failures unfolded."""
    ordered = by_verdict(rows)
    head = "".join(f"<th>{_text(c.lower())}</th>" for c in COLUMNS)
    table_rows = "\n".join(_table_row(n, row) for n, row in enumerate(ordered, 1))
    runs = "\n".join(_run_section(n, row) for n, row in enumerate(ordered, 1))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>trainwatch: {_text(title)}</title>
<style>{STYLE}</style></head>
<body>
<h1>trainwatch analyze {_text(title)}</h1>
<p>{_text(count_verdicts(rows))}</p>
<table id="runs"><thead><tr>{head}</tr></thead><tbody>
{table_rows}
</tbody></table>
{runs}
<p class="muted">trainwatch {_text(__version__)}</p>
</body></html>
"""


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _class(verdict: str) -> str:
    return verdict.replace(" ", "-")


def _table_row(n: int, row: SweepRow) -> str:
    best = f"{row.best_eval[0]:.4g} @ {row.best_eval[1]}" if row.best_eval else "-"
    cells = [
        f'<td class="run"><a href="#run-{n}">{_text(row.name)}</a></td>',
        f"<td>{_text(row.report.format)}</td>",
        f'<td><span class="verdict {_class(row.verdict)}">{_text(row.verdict)}</span></td>',
        f"<td>{_text(row.cause or '-')}</td>",
        f'<td class="num">{_text(row.step if row.step is not None else "-")}</td>',
        f'<td class="num">{_text(best)}</td>',
        f"<td>{_text(Path(row.checkpoint).name if row.checkpoint else '-')}</td>",
    ]
    return f'<tr class="run-row" data-verdict="{_text(row.verdict)}">{"".join(cells)}</tr>'


def _run_section(n: int, row: SweepRow) -> str:
    report = row.report
    badge = f'<span class="verdict {_class(row.verdict)}">{_text(row.verdict)}</span>'
    notes = "".join(f"<li>{_text(note)}</li>" for note in report.notes)
    notes = f'<ul class="notes muted">{notes}</ul>' if notes else ""
    source = f'<p class="muted">{_text(report.source)} · {_text(report.format)}</p>'
    if report.error:
        body = f'<p class="error">{_text(report.error)}</p>'
        return f'<section class="run" id="run-{n}"><h2>{badge} {_text(row.name)}</h2>{source}{body}{notes}</section>'
    chart = _chart(report)
    if not report.diagnoses:
        return (
            f'<details class="run" id="run-{n}"><summary>{badge} {_text(row.name)}</summary>'
            f"{source}{chart}{notes}</details>"
        )
    findings = "".join(_finding(f) for f in report.diagnoses)
    keep = f"<p>checkpoint to go back to: {_text(row.checkpoint)}</p>" if row.checkpoint else ""
    return (
        f'<section class="run failed" id="run-{n}"><h2>{badge} {_text(row.name)}</h2>'
        f"{source}{findings}{keep}{chart}{notes}</section>"
    )


def _finding(finding: Finding) -> str:
    fixes = "".join(f"<li>{_text(fix)}</li>" for fix in finding.fixes)
    return (
        f'<div class="finding"><h3>{_text(headline(finding))}</h3><p>{_text(finding.summary)}</p>'
        f'<p class="evidence">{_text(format_evidence(finding))}</p>'
        + (f'<ol class="fixes">{fixes}</ol>' if fixes else "")
        + "</div>"
    )


# -- the curves -------------------------------------------------------------------------------------------------------
def _chart(report: RunReport) -> str:
    """One SVG: train and eval loss, grad norm, learning rate, over one step axis, each failure's decision (solid)
    and onset (dashed) marked across the panels."""
    curves = {name: report.curves.get(name, (np.empty(0), np.empty(0))) for name in LABELS}
    steps = [c[0] for c in curves.values() if len(c[0])]
    if not steps:
        return '<p class="muted">no curves logged</p>'
    marks = _marks(report.diagnoses)
    all_steps = np.concatenate([*steps, np.asarray([step for step, *_ in marks], dtype=np.int64)])
    x0, x1 = float(all_steps.min()), float(all_steps.max())
    width = _LEFT + PLOT_WIDTH + _RIGHT
    height = _TOP + sum(h for *_, h in PANELS) + _GAP * (len(PANELS) - 1) + _BOTTOM
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            'font-size="11" font-family="system-ui,sans-serif" role="img" aria-label="curves">'
        )
    ]
    top = _TOP
    for title, names, panel_height in PANELS:
        parts.append(_panel(title, {n: curves[n] for n in names}, (x0, x1), top, panel_height))
        top += panel_height + _GAP
    bottom = top - _GAP
    for n, (step, colour, dashed, label) in enumerate(marks):
        x = float(_x(step, x0, x1))
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        parts.append(
            f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{bottom}" stroke="{colour}" stroke-width="1.3"{dash}>'
            f"<title>{_text(label)}</title></line>"
        )
        # one label a line, on the side of the mark with room for it
        anchor = ("end", x - 3) if x > _LEFT + PLOT_WIDTH * 0.6 else ("start", x + 3)
        parts.append(
            f'<text x="{anchor[1]:.1f}" y="{_TOP + 12 * (n + 1)}" text-anchor="{anchor[0]}" fill="{colour}">'
            f"{_text(label)}</text>"
        )
    parts.append(f'<text x="{_LEFT}" y="{bottom + 16}">{_number(x0)}</text>')
    parts.append(f'<text x="{_LEFT + PLOT_WIDTH}" y="{bottom + 16}" text-anchor="end">{_number(x1)}</text>')
    parts.append(f'<text x="{_LEFT + PLOT_WIDTH / 2}" y="{bottom + 16}" text-anchor="middle">step</text>')
    parts.append("</svg>")
    return "".join(parts)


def _marks(findings: Sequence[Finding]) -> list[tuple[int, str, bool, str]]:
    """``(step, colour, dashed, label)``: each finding's decision, and its onset where the evidence names an earlier one."""
    marks = []
    for finding in findings:
        colour = COLOURS.get(finding.kind, "#000")
        onset = finding.evidence.get("onset_step")
        if isinstance(onset, int) and not isinstance(onset, bool) and onset != finding.step:
            marks.append((onset, colour, True, f"{finding.kind} onset (step {onset})"))
        marks.append((finding.step, colour, False, f"{finding.kind} decided (step {finding.step})"))
    return marks


def _x(steps: np.ndarray | float, x0: float, x1: float) -> np.ndarray:
    """Pixel x of steps (an array, or one step)."""
    steps = np.asarray(steps, dtype=np.float64)
    return _LEFT + (steps - x0) / (x1 - x0) * PLOT_WIDTH if x1 > x0 else np.full(steps.shape, _LEFT + PLOT_WIDTH / 2)


def _panel(
    title: str, curves: dict[str, tuple[np.ndarray, np.ndarray]], x_range: tuple[float, float], top: int, height: int
) -> str:
    """A panel's frame, its value range at the left, its curves, and a red cross at the top for each NaN/inf."""
    finite = [v[np.isfinite(v)] for _, v in curves.values()]
    finite = [v for v in finite if len(v)]
    parts = [
        f'<rect x="{_LEFT}" y="{top}" width="{PLOT_WIDTH}" height="{height}" fill="none" stroke="#ccc"/>',
    ]
    legend = " · ".join(
        f'<tspan fill="{COLOURS[name]}">{_text(LABELS[name])}</tspan>' for name, c in curves.items() if len(c[0])
    )
    parts.append(f'<text x="{_LEFT + 4}" y="{top - 4}">{legend or _text(title + ": not logged")}</text>')
    if finite:
        values = np.concatenate(finite)
        low, high = float(values.min()), float(values.max())
        log = low > 0 and high / low > LOG_SCALE_RATIO
        y = _y_scale(low, high, top, height, log)
        parts.append(f'<text x="{_LEFT - 4}" y="{top + 10}" text-anchor="end">{_number(high)}</text>')
        parts.append(f'<text x="{_LEFT - 4}" y="{top + height}" text-anchor="end">{_number(low)}</text>')
        if log:
            parts.append(f'<text x="{_LEFT - 4}" y="{top + height / 2}" text-anchor="end">log</text>')
        for name, (steps, values) in curves.items():
            parts.append(_curve(name, steps, values, x_range, y))
    for name, (steps, values) in curves.items():
        bad = np.unique(np.round(_x(steps[~np.isfinite(values)], *x_range)))
        parts.extend(
            f'<text x="{x:.0f}" y="{top + 10}" fill="#d62728" text-anchor="middle">×'
            f"<title>{_text(LABELS[name])}: NaN/inf</title></text>"
            for x in bad
        )
    return "".join(parts)


Scale = Callable[[np.ndarray], np.ndarray]


def _y_scale(low: float, high: float, top: int, height: int, log: bool) -> Scale:
    """Pixel y of values, the panel's ``low`` at its bottom and ``high`` at its top."""
    if log:
        low, high = math.log10(low), math.log10(high)
    span = high - low or 1.0

    def y(values: np.ndarray) -> np.ndarray:
        v = np.log10(values) if log else values
        return top + height - (v - low) / span * height if high > low else np.full(len(values), top + height / 2)

    return y


def _curve(name: str, steps: np.ndarray, values: np.ndarray, x_range: tuple[float, float], y: Scale) -> str:
    """The finite points as one path, broken where NaN/inf fell between two of them, thinned to the pixel columns."""
    finite = np.isfinite(values)
    if not finite.any():
        return ""
    index = np.flatnonzero(finite)
    xs = _x(steps[index], *x_range)
    keep = _thin(np.clip(np.floor(xs - _LEFT), 0, PLOT_WIDTH - 1).astype(np.int64), values[index])
    index, xs = index[keep], xs[keep]
    ys = y(values[index])
    gaps_before = np.cumsum(~finite)[index]  # NaN/inf seen up to each kept point: a change means a gap
    breaks = np.r_[True, gaps_before[1:] != gaps_before[:-1]]
    path = "".join(("M" if b else " ") + f"{x:.1f},{v:.1f}" for b, x, v in zip(breaks, xs, ys))
    colour = COLOURS[name]
    parts = [f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="1.2"/>']
    if name == "eval_loss" and len(index) <= EVAL_DOTS:
        parts.extend(f'<circle cx="{x:.1f}" cy="{v:.1f}" r="2" fill="{colour}"/>' for x, v in zip(xs, ys))
    return "".join(parts)


def _thin(columns: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Positions of the lowest and highest value in each pixel column, in their original order."""
    order = np.lexsort((values, columns))
    ordered = columns[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    last = np.r_[ordered[1:] != ordered[:-1], True]
    return np.sort(order[first | last])


def _number(value: float) -> str:
    return _text(f"{value:.4g}")
