"""Post-hoc diagnosis: what a finished (or crashed) run left on disk, judged by the same engine as the live callback.

``analyze(path)`` finds the runs under ``path`` (event files, run directories, a directory of runs, a Trainer
output dir with ``runs/`` and ``checkpoint-N/``, or a trainer_state.json), turns each into the log entries Trainer's
``on_log`` saw and replays them through :class:`trainwatch.engine.Engine`, so a run gets the verdict, cause and
step the live :class:`trainwatch.Diagnoser` gave or would have given.

A TensorBoard run is streamed into the engine (:func:`trainwatch.logs.tensorboard.read_run` reads it in two passes)
and its curves are decimated as they stream, so memory does not grow with the run's length.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainwatch.checkpoints import checkpoint_for
from trainwatch.curves import Decimator
from trainwatch.engine import Engine, build_rules
from trainwatch.findings import KINDS, Finding
from trainwatch.history import SIGNALS, Facts, History, objective_from_args
from trainwatch.logs import LogReadError
from trainwatch.logs.live_report import read_live_report, with_live_decisions
from trainwatch.logs.tensorboard import (
    EVAL_SIGNAL,
    SIGNAL_TAGS,
    FileStats,
    event_files,
    file_timestamp,
    is_event_file,
    read_events,
    read_run,
)
from trainwatch.logs.trainer_state import (
    STATE_FILE,
    facts_beside,
    hyperparameters_from_args,
    latest_checkpoints,
    planned_steps,
    read_trainer_state,
    vocab_size_from_config,
)
from trainwatch.report import format_curves, format_report

Curves = dict[str, tuple[np.ndarray, np.ndarray]]
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
HEALTHY, NOT_JUDGED = "healthy", "not judged"


@dataclass
class RunReport:
    """The diagnosis of one run read from disk: what the CLI prints, ``--json`` serialises and ``--plot`` draws."""

    source: str
    """The event file, run directory (several, joined by " + ", for a resumed run) or trainer_state.json read."""
    format: str
    """``tensorboard`` or ``trainer_state``."""
    diagnoses: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Data problems met while reading (damage, restarts, replaced steps, missing signals)."""
    history: History = field(default_factory=History)
    """The engine's summary of the run's signals, as the rules saw it."""
    curves: Curves = field(default_factory=dict)
    """Each signal's ``(steps, values)`` for plotting, decimated to a bounded size whatever the run's length: every
    value of a short run; of a long one, each bucket's min, max and first NaN/inf (see
    :class:`~trainwatch.curves.Decimator`), so spikes and non-finite values still show."""
    entries: int = 0
    checkpoints_to_keep: dict[str, str | None] = field(default_factory=dict)
    """For a run in a Trainer output dir, per failure kind: the checkpoint to go back to, as the live report names
    it (:func:`trainwatch.checkpoints.checkpoint_for`), None when there is none."""
    error: str | None = None
    """Why nothing of this run could be read (naming the files); its verdict is then ``None``."""

    @property
    def verdict(self) -> str | None:
        """The first failure decided, else "healthy" if a train loss was logged, else "not judged"."""
        if self.error:
            return None
        if self.diagnoses:
            return self.diagnoses[0].kind
        return HEALTHY if self.judged else NOT_JUDGED

    @property
    def judged(self) -> bool:
        """Something was decided, or a train loss was logged: without one, "healthy" would say more than is known."""
        return bool(self.diagnoses) or self.history["loss"].count > 0

    @property
    def failed(self) -> bool:
        return bool(self.diagnoses)

    def to_dict(self) -> dict[str, Any]:
        series = {name: _series_dict(self.history[name]) for name in SIGNALS}
        return {
            "source": self.source,
            "format": self.format,
            "verdict": self.verdict,
            "diagnoses": [f.to_dict() for f in self.diagnoses],
            "notes": list(self.notes),
            "checkpoints_to_keep": dict(self.checkpoints_to_keep),
            "entries": self.entries,
            "last_step": self.history.step,
            "signals": series,
            "facts": {  # what the rules judged against besides the series
                "vocab_size": self.history.facts.vocab_size,
                "max_steps": self.history.facts.max_steps,
                "objective": self.history.facts.objective,
            },
            **({"error": self.error} if self.error else {}),
        }

    def format_text(self) -> str:
        if self.error:
            return f"unreadable: {self.error}"
        if not self.judged:
            text = "\n".join([f"{self.source}: {NOT_JUDGED}", *(f"  note: {n}" for n in self.notes)])
            return text + "\n" + format_curves(self.history)
        text = format_report(self.diagnoses, title=self.source, notes=self.notes)
        return text + "\n" + format_curves(self.history)


def analyze(
    path: str | os.PathLike[str], *, smoothing: int = 3, vocab_size: int | None = None, **thresholds: Any
) -> list[RunReport]:
    """Diagnose every run found at ``path``, each on its own. ``thresholds`` are the rules' (as for Diagnoser).

    ``vocab_size`` sets the vocabulary size of every run analysed, over what its files say: the rules compare a
    language model's loss with a uniform guess, ln(vocab_size), which logs without the model's config cannot give.
    Raises :class:`LogReadError` (one line) when ``path`` is missing or nothing under it can be read.
    """
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2):
        raise ValueError(f"vocab_size must be an integer of at least 2, not {vocab_size!r}")
    build_rules(KINDS, **thresholds)  # an unknown threshold is the caller's error, raised before any reading
    path = Path(path)
    if not path.exists():
        raise LogReadError(f"{path}: no such file or directory")
    reports = [judge_run(source, smoothing, thresholds, vocab_size) for source in find_runs(path)]
    if not reports:
        raise LogReadError(f"{path}: no TensorBoard event files or trainer_state.json found")
    if all(r.error for r in reports):
        raise LogReadError("; ".join(r.error for r in reports if r.error))
    return reports


# -- finding the runs -------------------------------------------------------------------------------------------------
@dataclass
class RunSource:
    """One run found on disk, before reading it: what :func:`judge_run` needs (picklable, for parallel workers)."""

    format: str
    paths: list[Path]
    """tensorboard: the event files in order (several run directories for a resumed run); else one json."""
    label: str
    facts_dir: Path | None = None
    """Where a Trainer output dir's adapter/config files are, for facts the logs themselves lack."""
    notes: list[str] = field(default_factory=list)


def find_runs(path: Path) -> list[RunSource]:
    """Every run under ``path``, in a stable order; reads no more than needed to tell runs apart."""
    if path.is_file():
        if path.suffix == ".json":
            return [RunSource("trainer_state", [path], str(path))]
        if not is_event_file(path) and _looks_like_json(path):
            return [RunSource("trainer_state", [path], str(path))]
        return [RunSource("tensorboard", [path], str(path), facts_dir=_output_dir_of(path.parent))]
    run_dirs: list[Path] = []
    state_dirs: list[Path] = []
    for folder, subfolders, files in os.walk(path):
        subfolders.sort()
        if any(is_event_file(f) for f in files):
            run_dirs.append(Path(folder))
        # an output dir holds trainer_state.json or checkpoints; a checkpoint counts on its own only if asked for
        is_checkpoint = _CHECKPOINT.fullmatch(Path(folder).name) and Path(folder) != path
        if (STATE_FILE in files or any(_CHECKPOINT.fullmatch(s) for s in subfolders)) and not is_checkpoint:
            state_dirs.append(Path(folder))
    sources = _tensorboard_sources(run_dirs)
    for output_dir in state_dirs:
        state = _latest_state(output_dir)
        if state is None:
            continue
        covered = [s for s in sources if s.format == "tensorboard" and _is_inside(s.paths[0], output_dir)]
        if covered:
            for source in covered:
                source.facts_dir = source.facts_dir or output_dir
                source.notes.append(f"{state} exists too; analyse it alone with: trainwatch analyze {state}")
        else:
            sources.append(RunSource("trainer_state", [state], str(state)))
    return sources


def _tensorboard_sources(run_dirs: list[Path]) -> list[RunSource]:
    """One source per run directory, except that HF Trainer's sibling ``runs/<date>_<host>`` directories that
    continue each other (a resume writes to a new one) are one run."""
    sources: list[RunSource] = []
    by_parent: dict[Path, list[Path]] = {}
    for folder in run_dirs:
        by_parent.setdefault(folder.parent, []).append(folder)
    for parent, folders in by_parent.items():
        if parent.name != "runs" or len(folders) == 1:
            sources.extend(RunSource("tensorboard", event_files(f), str(f), facts_dir=_output_dir_of(f)) for f in folders)
            continue
        segments = sorted(folders, key=lambda f: min(file_timestamp(p) for p in event_files(f)))
        chain: list[tuple[Path, int | None]] = []
        for folder in segments:
            first = _first_train_step(event_files(folder))
            if chain and first is not None and chain[-1][1] is not None and first > chain[-1][1]:
                chain.append((folder, first))
                continue
            if chain:
                sources.append(_chained(chain))
            chain = [(folder, first)]
        sources.append(_chained(chain))
    return sources


def _chained(chain: list[tuple[Path, int | None]]) -> RunSource:
    folders = [folder for folder, _ in chain]
    source = RunSource(
        "tensorboard",
        [p for f in folders for p in event_files(f)],
        " + ".join(map(str, folders)),
        facts_dir=_output_dir_of(folders[0]),
    )
    if len(folders) > 1:
        starts = ", ".join(f"{f.name} from step {step}" for f, step in chain)
        source.notes.append(
            f"{len(folders)} run directories continue each other (resumed training): {starts}; " "analysed as one run"
        )
    return source


def _first_train_step(files: Iterable[Path]) -> int | None:
    """The step of a run's first train signal: a run that starts past its first logging step was resumed."""
    for path in files:
        try:
            for step, tag, _ in read_events(path, FileStats(str(path)), {}, {}):
                signal = SIGNAL_TAGS.get(tag)  # type: ignore[arg-type]
                if signal is not None and signal != EVAL_SIGNAL:
                    return step
        except OSError:
            continue
    return None


def _latest_state(output_dir: Path) -> Path | None:
    """The output dir's own trainer_state.json, else its latest checkpoint's (whose log_history holds the others')."""
    if (output_dir / STATE_FILE).is_file():
        return output_dir / STATE_FILE
    return next((c / STATE_FILE for c in latest_checkpoints(output_dir) if (c / STATE_FILE).is_file()), None)


def _output_dir_of(run_dir: Path) -> Path | None:
    """Trainer writes TensorBoard runs to ``<output_dir>/runs/<name>``."""
    return run_dir.parent.parent if run_dir.parent.name == "runs" else None


def _is_inside(path: Path, folder: Path) -> bool:
    return folder == path or folder in path.parents


def _looks_like_json(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(64).lstrip()[:1] == b"{"
    except OSError:
        return False


# -- judging one run --------------------------------------------------------------------------------------------------
def judge_run(source: RunSource, smoothing: int, thresholds: dict[str, Any], vocab_size: int | None = None) -> RunReport:
    """Read one run and replay it through a fresh engine; a run that cannot be read gets ``error``, never raises."""
    engine = Engine(build_rules(KINDS, **thresholds), smoothing=smoothing)
    report = RunReport(source=source.label, format=source.format, notes=list(source.notes))
    other_tags: dict[str, int] = {}
    if source.format == "trainer_state":
        try:
            state = read_trainer_state(source.paths[0])
        except LogReadError as error:
            report.error = str(error)
            return report
        engine.history.facts = _with_vocab_size(state.facts, vocab_size)
        report.notes.extend(state.notes)
        _replay(engine, state.entries(), report)
        report.curves = _curves_of(state.log_history)
    else:
        run = read_run(source.paths)  # pass 1: texts, counts and damage; the values stream from run.entries()
        if run.records == 0:
            report.notes.extend(run.notes)
            report.error = "; ".join(run.notes) or f"{source.label}: no readable records"
            return report
        engine.history.facts = _with_vocab_size(_tensorboard_facts(run.texts, source.facts_dir), vocab_size)
        _replay(engine, run.entries(), report)
        report.notes.extend(run.notes)  # complete once streamed: what restarts and resumes dropped is counted then
        report.curves = run.curves()
        other_tags = run.other_tags
    report.diagnoses = list(engine.findings)
    report.history = engine.history
    output_dir = _output_dir(source)
    live = read_live_report(output_dir) if output_dir else None
    if live is not None:  # the live callback's decisions, a pre-flight one included, which the logs cannot show
        report.diagnoses, notes = with_live_decisions(report.diagnoses, live, engine.history.step)
        report.notes.extend(notes)
    if output_dir:
        _name_checkpoints(report, output_dir)
    report.notes.extend(_missing_signals(engine.history, other_tags))
    return report


def _with_vocab_size(facts: Facts, vocab_size: int | None) -> Facts:
    """The run's facts, with the vocabulary size given by the caller (``--vocab-size``) where there is one."""
    return facts if vocab_size is None else dataclasses.replace(facts, vocab_size=vocab_size)


def _output_dir(source: RunSource) -> Path | None:
    """The Trainer output dir the run belongs to (its checkpoints, trainwatch's own report), where known."""
    if source.format == "trainer_state":
        folder = source.paths[0].parent
        return folder.parent if _CHECKPOINT.fullmatch(folder.name) else folder
    return source.facts_dir


def _name_checkpoints(report: RunReport, output_dir: Path) -> None:
    """As the live report: after each failure, the checkpoint to go back to, its weights checked where cheap."""
    for finding in report.diagnoses:
        choice = checkpoint_for(finding, output_dir)
        report.checkpoints_to_keep[finding.kind] = str(choice.path) if choice.path else None
        if choice.advice():
            report.notes.append(f"checkpoint to go back to after {finding.kind}: {choice.advice()}")


def _replay(engine: Engine, entries: Iterator[tuple[int, dict[str, Any]]], report: RunReport) -> None:
    for step, logs in entries:
        engine.observe(step, logs)
        report.entries += 1


def _missing_signals(history: History, other_tags: dict[str, int]) -> list[str]:
    """Say what could not be judged, so that "healthy" is never read as more than the logs allow."""
    if not any(history[name].count for name in SIGNALS):
        found = f"; scalar tags found: {', '.join(sorted(other_tags)[:8])}" if other_tags else ""
        return [
            f"none of Trainer's signals (loss, grad_norm, learning_rate, eval_loss) were logged: nothing to "
            f"judge{found}"
        ]
    notes = []
    if not history["loss"].count:
        notes.append("no train loss logged: exploding and flat cannot be judged")
    if not history["eval_loss"].count:
        notes.append("no evaluation logged (eval_loss): overfitting cannot be judged")
    return notes


def _tensorboard_facts(texts: dict[str, str], facts_dir: Path | None) -> Facts:
    """Facts from the ``args``/``model_config`` text summaries, completed by the output dir's files."""
    facts = facts_beside(facts_dir) if facts_dir else Facts()
    params = dict(facts.hyperparameters)
    args = _json_text(texts.get("args"))
    params.update(hyperparameters_from_args(args))
    vocab_size = vocab_size_from_config(_json_text(texts.get("model_config"))) or facts.vocab_size
    return Facts(
        vocab_size=vocab_size,
        hyperparameters=params,
        max_steps=planned_steps(params) or facts.max_steps,
        objective=objective_from_args(args) or facts.objective,
    )


def _json_text(text: str | None) -> dict[str, Any]:
    """A text summary's JSON object; TensorBoard's text plugin may have it wrapped as markdown code."""
    if not text:
        return {}
    try:
        data = json.loads(text.strip().strip("`"))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _curves_of(log_history: list[dict[str, Any]]) -> Curves:
    """The curves of a trainer_state.json, decimated as TensorBoard's are, so both sources plot alike."""
    curves: Curves = {}
    for name in SIGNALS:
        points = [(e["step"], float(e[name])) for e in log_history if isinstance(e.get(name), (int, float))]
        steps, values = zip(*points) if points else ((), ())
        decimator = Decimator()
        decimator.extend(np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64))
        curves[name] = decimator.curve()
    return curves


def _series_dict(series: Any) -> dict[str, Any]:
    data = {
        k: getattr(series, k) for k in ("count", "first", "last", "min", "min_step", "max", "max_step", "nonfinite")
    }
    return {k: (str(v) if isinstance(v, float) and not np.isfinite(v) else v) for k, v in data.items()}
