"""Many runs at once (a sweep, a week of experiments, a team's log store): which failed, why, and what to keep.

:func:`judge_runs` judges the runs :func:`~trainwatch.analysis.find_runs` found, one after another or in ``jobs``
worker processes. A run that cannot be read, whose reading raises, or whose worker dies (killed, out of memory) is
reported as unreadable; the others go on. :class:`SweepRow` and :func:`format_sweep` make what a person scans a
sweep with: one line per run, failures first, then the counts, then what went wrong in each failure.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainwatch.analysis import HEALTHY, NOT_JUDGED, RunReport, RunSource, judge_run
from trainwatch.engine import build_rules
from trainwatch.findings import KINDS
from trainwatch.report import format_report

UNREADABLE = "unreadable"
VERDICTS = (*KINDS, UNREADABLE, NOT_JUDGED, HEALTHY)
"""Every verdict a sweep's run can get, in the order its table lists them: failures first."""
MANY_RUNS = 10
"""From this many runs on, judging them shows a progress bar (on a terminal)..."""
LARGE_LOG_BYTES = 32 * 2**20
"""... or when their files add up to this many bytes (a large log: reading it takes seconds)."""
TICK_SECONDS = 1.0
"""How often the bar's clock is redrawn while one long log is read."""
WORKER_DIED = "the process reading it died (killed, or out of memory)"
_CHECKPOINT = re.compile(r"checkpoint-\d+")
_SPAWN = multiprocessing.get_context("spawn")  # no fork of a process with threads (the bar's clock) on any platform

Settings = tuple[int, dict[str, Any], int | None]
"""judge_run's arguments after the source: smoothing, thresholds, vocab_size."""


# -- judging many runs ------------------------------------------------------------------------------------------------
def judge_runs(
    sources: Sequence[RunSource],
    smoothing: int = 3,
    thresholds: dict[str, Any] | None = None,
    vocab_size: int | None = None,
    *,
    jobs: int = 1,
    progress: bool = False,
) -> list[RunReport]:
    """Each run judged by :func:`~trainwatch.analysis.judge_run`, in ``jobs`` worker processes when more than one.

    The reports come in the order of ``sources`` whatever order they finish in, so ``jobs`` never changes a result.
    A run whose reading raises, or kills its worker, gets ``error`` set (unreadable) and never stops the others.
    ``progress``: show a bar on stderr while judging, if stderr is a terminal and there are :data:`MANY_RUNS` runs
    or :data:`LARGE_LOG_BYTES` to read.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    settings: Settings = (smoothing, dict(thresholds or {}), vocab_size)
    build_rules(KINDS, **settings[1])  # an unknown threshold is the caller's error, not every run's
    with _progress_bar(sources, progress) as advance:
        if jobs == 1 or len(sources) < 2:
            reports = []
            for source in sources:
                reports.append(_judge_safely(source, settings))
                advance()
            return reports
        return _judge_in_workers(sources, settings, min(jobs, len(sources)), advance)


def unreadable(source: RunSource, why: str) -> RunReport:
    """The report of a run nothing could be read of, saying why (after the run's own name)."""
    return RunReport(
        source=source.label, format=source.format, notes=list(source.notes), error=f"{source.label}: {why}"
    )


def _judge_safely(source: RunSource, settings: Settings) -> RunReport:
    try:
        return judge_run(source, *settings)
    except Exception as error:  # noqa: BLE001 - a reader's bug, or a run too large for memory: that run, not the sweep
        return unreadable(source, _unexpected(error))


def _unexpected(error: BaseException) -> str:
    return f"reading it failed unexpectedly ({type(error).__name__}: {str(error)[:200]})"


def _judge_in_workers(
    sources: Sequence[RunSource], settings: Settings, jobs: int, advance: Callable[[], object]
) -> list[RunReport]:
    """Judge in ``jobs`` worker processes, each holding one run at a time, so that a worker's death names the run it
    was reading. That run is tried once more in a fresh worker (the death may have been another's doing: memory the
    others held); when it dies again, it is unreadable.

    Not :class:`~concurrent.futures.ProcessPoolExecutor`: when a worker dies while another is being started (seen on
    Python 3.11), the new one is never terminated and its shutdown waits for it forever."""
    reports: dict[int, RunReport] = {}
    waiting = deque(range(len(sources)))
    deaths: Counter[int] = Counter()
    idle: list[_Worker] = []
    busy: dict[_Worker, int] = {}
    try:
        while waiting or busy:
            while waiting and len(idle) + len(busy) < jobs:
                idle.append(_Worker(settings))
            while waiting and idle:
                worker, index = idle.pop(), waiting.popleft()
                busy[worker] = index
                worker.send(sources[index])
            ready = multiprocessing.connection.wait([w.channel for w in busy] + [w.process.sentinel for w in busy])
            for worker, index in list(busy.items()):
                if worker.channel not in ready and worker.process.sentinel not in ready:
                    continue
                del busy[worker]
                report = worker.receive()
                if report is not None:
                    reports[index] = report
                    idle.append(worker)
                    advance()
                    continue
                worker.stop()
                deaths[index] += 1
                if deaths[index] < 2:
                    waiting.appendleft(index)
                else:
                    reports[index] = unreadable(sources[index], WORKER_DIED)
                    advance()
    finally:
        for worker in [*idle, *busy]:
            worker.stop()
    return [reports[index] for index in range(len(sources))]


class _Worker:
    """A process judging the runs sent to it one at a time, over a pipe of its own."""

    def __init__(self, settings: Settings) -> None:
        self.channel, theirs = _SPAWN.Pipe()
        self.process = _SPAWN.Process(target=_work, args=(theirs, settings), daemon=True)
        try:
            with _ctrl_c_deferred():
                self.process.start()
        except BaseException:  # Ctrl-C while it started: a worker nobody will stop
            self.process.kill()
            self.process.join()
            self.channel.close()
            raise
        finally:
            theirs.close()  # ours closed too when the process dies: a read then fails instead of waiting

    def send(self, source: RunSource) -> None:
        try:
            self.channel.send(source)
        except OSError:  # it died before taking the run: ``receive`` finds it dead
            pass

    def receive(self) -> RunReport | None:
        """The report of the run it was sent, or None when it died before sending one."""
        try:
            return self.channel.recv()
        except (EOFError, OSError):
            return None

    def stop(self) -> None:
        """Ask it to finish; kill it if it does not within a second (a dead one costs nothing)."""
        try:
            self.channel.send(None)
        except OSError:
            pass
        self.process.join(1.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.channel.close()


@contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Ctrl-C held back while a worker starts, then raised: a terminal sends it to every process, and it must give one
    line from the parent, not a traceback from a worker still importing, nor one from a worker whose start it cut
    short (it then reads half its instructions). A worker is born with SIGINT blocked (the mask survives exec), so
    stopping it is the parent's; the parent meanwhile only notes a Ctrl-C (its other threads, numpy's, can take the
    signal while this one blocks it) and raises KeyboardInterrupt once the worker is started."""
    caught: list[int] = []
    handler = signal.getsignal(signal.SIGINT)
    defer = threading.current_thread() is threading.main_thread() and handler is not None
    if defer:
        signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    blocking = hasattr(signal, "pthread_sigmask")  # not on Windows
    if blocking:
        from multiprocessing import resource_tracker

        # Started by the first worker otherwise, and its start *unblocks* SIGINT in this thread when done: the
        # worker would be born with Ctrl-C open.
        resource_tracker.ensure_running()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if defer:
            signal.signal(signal.SIGINT, handler)
        if blocking:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # one held back is delivered now, to the handler
        if caught:
            raise KeyboardInterrupt


def _work(channel: multiprocessing.connection.Connection, settings: Settings) -> None:
    try:
        while (source := channel.recv()) is not None:
            channel.send(_judge_safely(source, settings))
    except (EOFError, OSError):  # the parent is gone
        return


@contextmanager
def _progress_bar(sources: Sequence[RunSource], wanted: bool) -> Iterator[Callable[[], object]]:
    """``advance()`` for each run judged, moving a bar on stderr when one is worth showing; its clock is redrawn
    every :data:`TICK_SECONDS` so that a long read of one large log still shows it is going."""
    stderr = sys.stderr
    on_terminal = wanted and stderr is not None and stderr.isatty()
    if not (on_terminal and (len(sources) >= MANY_RUNS or _size(sources) >= LARGE_LOG_BYTES)):
        yield lambda: None
        return
    from tqdm import tqdm  # a dependency of transformers, imported only when a bar is shown

    bar = tqdm(total=len(sources), unit="run", desc="trainwatch analyze", file=stderr, leave=False, dynamic_ncols=True)
    finished = threading.Event()

    def tick() -> None:
        while not finished.wait(TICK_SECONDS):
            bar.refresh()

    clock = threading.Thread(target=tick, daemon=True)
    clock.start()
    try:
        yield bar.update
    finally:
        finished.set()
        clock.join()
        bar.close()


def _size(sources: Sequence[RunSource]) -> int:
    total = 0
    for source in sources:
        for path in source.paths:
            try:
                total += path.stat().st_size
            except OSError:
                continue
    return total


# -- what a sweep shows -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepRow:
    """One run of a sweep as its table shows it: where it is, what was concluded, which checkpoint to keep."""

    name: str
    """The run's source, relative to the path analysed."""
    report: RunReport
    best_eval: tuple[float, int] | None = None
    """The lowest finite eval loss and its step."""
    best_eval_checkpoint: str | None = None
    """The checkpoint saved at the best eval loss's step, where the run's output dir holds one."""

    @property
    def verdict(self) -> str:
        return self.report.verdict or UNREADABLE

    @property
    def cause(self) -> str | None:
        return self.report.diagnoses[0].cause if self.report.diagnoses else None

    @property
    def step(self) -> int | None:
        """The step at which the run's failure was decided."""
        return self.report.diagnoses[0].step if self.report.diagnoses else None

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint to keep: after a failure, the one to go back to (as the live report names it, checked
        for damaged weights); otherwise the one saved at the best eval loss."""
        if self.report.diagnoses:
            return self.report.checkpoints_to_keep.get(self.report.diagnoses[0].kind)
        return self.best_eval_checkpoint

    def to_dict(self) -> dict[str, Any]:
        """The report's JSON object, with the best eval loss and its checkpoint."""
        best = None
        if self.best_eval:
            best = {"loss": self.best_eval[0], "step": self.best_eval[1], "checkpoint": self.best_eval_checkpoint}
        return {**self.report.to_dict(), "best_eval": best}


def sweep_rows(
    sources: Sequence[RunSource], reports: Sequence[RunReport], root: str | os.PathLike[str]
) -> list[SweepRow]:
    """A row per run (``reports[i]`` judged ``sources[i]``), named relative to ``root``, in the order given."""
    rows = []
    for source, report in zip(sources, reports, strict=True):
        eval_loss = report.history["eval_loss"]
        best = (eval_loss.min, eval_loss.min_step) if eval_loss.min is not None and not report.error else None
        checkpoint = _checkpoint_at(source, best[1]) if best else None
        rows.append(SweepRow(_relative(report.source, Path(root)), report, best, checkpoint))
    return rows


def _relative(label: str, root: Path) -> str:
    """A run's label with the analysed path taken off each of its parts (a resumed run has several)."""
    parts = []
    for part in label.split(" + "):
        path = Path(part)
        parts.append(str(path.relative_to(root)) if root in path.parents else part)
    return " + ".join(parts)


def _checkpoint_at(source: RunSource, step: int) -> str | None:
    """``checkpoint-<step>`` in the Trainer output dir the run was found in (its trainer_state.json's folder, or
    the folder above its ``runs/``), if there is one."""
    folder = source.facts_dir or (source.paths[0].parent if source.paths else None)
    if folder is None:
        return None
    if _CHECKPOINT.fullmatch(folder.name):
        folder = folder.parent
    checkpoint = folder / f"checkpoint-{step}"
    return str(checkpoint) if checkpoint.is_dir() else None


def by_verdict(rows: Sequence[SweepRow]) -> list[SweepRow]:
    """Failures first (in :data:`VERDICTS` order), each group in the order the runs were found."""
    return sorted(rows, key=lambda row: VERDICTS.index(row.verdict))


def count_verdicts(rows: Sequence[SweepRow]) -> str:
    """``5 runs: 1 healthy, 2 exploding, ...``: every verdict, none left out when it is 0."""
    counts = Counter(row.verdict for row in rows)
    order = (HEALTHY, *KINDS, NOT_JUDGED, UNREADABLE)
    return f"{len(rows)} run{'s' if len(rows) != 1 else ''}: " + ", ".join(f"{counts[v]} {v}" for v in order)


COLUMNS = ("RUN", "FORMAT", "VERDICT", "CAUSE", "STEP", "BEST EVAL LOSS", "CHECKPOINT")
RUN_WIDTH = 60
"""A longer run name is cut from the left in the table (``--json`` has it whole)."""


def format_sweep(rows: Sequence[SweepRow], *, details: bool = False) -> str:
    """The table (failures first), the counts, then each failure's diagnosis and fixes, each unreadable run's error
    and why each run not judged was not; with ``details``, every run's whole report (evidence, notes, curves)."""
    ordered = by_verdict(rows)
    cells = [COLUMNS, *(_cells(row) for row in ordered)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    table = [
        "  ".join(
            cell.rjust(width) if i == 4 else cell.ljust(width) for i, (cell, width) in enumerate(zip(line, widths))
        ).rstrip()
        for line in cells
    ]
    blocks = ["\n".join(table), count_verdicts(rows)]
    for row in ordered:
        if details:
            blocks.append(row.report.format_text())
        elif row.report.error:
            blocks.append(f"unreadable: {row.report.error}")
        elif row.report.diagnoses:
            text = format_report(row.report.diagnoses, title=row.name)
            if row.checkpoint:
                text += f"\n  checkpoint to go back to: {row.checkpoint}"
            blocks.append(text)
        elif not row.report.judged:  # why not: what its logs lack
            blocks.append("\n".join([f"{row.name}: {NOT_JUDGED}", *(f"  note: {n}" for n in row.report.notes)]))
    return "\n\n".join(blocks)


def _cells(row: SweepRow) -> tuple[str, ...]:
    name = row.name if len(row.name) <= RUN_WIDTH else "…" + row.name[-RUN_WIDTH + 1 :]
    best = f"{row.best_eval[0]:.4g} @ {row.best_eval[1]}" if row.best_eval else "-"
    step = str(row.step) if row.step is not None else "-"
    checkpoint = Path(row.checkpoint).name if row.checkpoint else "-"
    return (name, row.report.format, row.verdict, row.cause or "-", step, best, checkpoint)
