"""Post-hoc diagnosis: what a finished (or crashed) run left on disk, judged by the same engine as the live callback.

``analyze(path)`` finds the runs under ``path`` (:func:`find_runs`: TensorBoard event files and run directories,
Trainer output dirs, trainer_state.json, W&B run folders, MLflow stores, LLaMA-Factory's trainer_log.jsonl,
Lightning's metrics.csv), opens each through the one run-source interface (:class:`trainwatch.logs.source.RunLog`:
facts, the log entries Trainer's ``on_log`` saw, notes, curves) and replays it through
:class:`trainwatch.engine.Engine` (:func:`judge_run`), so a run gets the verdict, cause and step the live
:class:`trainwatch.Diagnoser` gave or would have given, whatever its format.

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
from trainwatch.engine import Engine, build_rules
from trainwatch.findings import KINDS, Finding
from trainwatch.history import SIGNALS, Facts, History, objective_from_args, planned_from_epoch
from trainwatch.logs import LogReadError
from trainwatch.logs.lightning import METRICS_FILE, read_metrics_csv
from trainwatch.logs.live_report import read_live_report, with_live_decisions
from trainwatch.logs.llamafactory import TRAINER_LOG, read_trainer_log
from trainwatch.logs.mlflow_store import (
    SQLITE_SUFFIXES,
    TRASH,
    is_file_store_run,
    is_sqlite_file,
    read_mlflow_run,
    store_runs,
)
from trainwatch.logs.source import Curves, Entry, RunLog
from trainwatch.logs.tensorboard import (
    EVAL_SIGNAL,
    SIGNAL_TAGS,
    FileStats,
    TensorBoardRun,
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
    looks_like_trainer_state,
    planned_steps,
    read_trainer_state,
    vocab_size_from_config,
)
from trainwatch.logs.wandb_log import read_wandb_run
from trainwatch.report import format_curves, format_report

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
HEALTHY, NOT_JUDGED = "healthy", "not judged"


@dataclass
class RunReport:
    """The diagnosis of one run read from disk: what the CLI prints, ``--json`` serialises and ``--plot`` draws."""

    source: str
    """The event file, run directory (several, joined by " + ", for a resumed run) or trainer_state.json read."""
    format: str
    """Which reader read it: one of :data:`FORMATS`."""
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
        raise LogReadError(
            f"{path}: no TensorBoard event files or trainer_state.json found, nor a W&B run, an MLflow store, a "
            "trainer_log.jsonl or a metrics.csv"
        )
    if all(r.error for r in reports):
        raise LogReadError("; ".join(r.error for r in reports if r.error))
    return reports


# -- finding the runs -------------------------------------------------------------------------------------------------
@dataclass
class RunSource:
    """One run found on disk, before reading it: what :func:`judge_run` needs (picklable, for parallel workers)."""

    format: str
    """One of :data:`FORMATS`: which reader opens it."""
    paths: list[Path]
    """tensorboard: the event files in order (several run directories for a resumed run); mlflow: the SQLite store
    or the file store's run folder; else the one file."""
    label: str
    facts_dir: Path | None = None
    """Where a Trainer output dir's adapter/config files are, for facts the logs themselves lack."""
    notes: list[str] = field(default_factory=list)
    key: str | None = None
    """Which run of a store that holds several (an MLflow SQLite store's run id)."""


def find_runs(path: Path) -> list[RunSource]:
    """Every run under ``path``, in a stable order; reads no more than needed to tell runs apart."""
    if path.is_file():
        return _file_sources(path)
    run_dirs: list[Path] = []
    state_dirs: list[Path] = []
    log_dirs: list[Path] = []
    others: list[RunSource] = []
    for folder, subfolders, files in os.walk(path):
        subfolders.sort()
        here = Path(folder)
        if is_file_store_run(subfolders, files):
            subfolders.clear()  # its metrics, params and artifacts belong to it
            if _mlflow_run_is_active(here):
                others.append(RunSource("mlflow", [here], str(here)))
            continue
        if TRASH in subfolders:
            subfolders.remove(TRASH)  # the MLflow file store's deleted experiments
        if any(is_event_file(f) for f in files):
            run_dirs.append(here)
        # an output dir holds trainer_state.json or checkpoints; a checkpoint counts on its own only if asked for
        is_checkpoint = _CHECKPOINT.fullmatch(here.name) and here != path
        if (STATE_FILE in files or any(_CHECKPOINT.fullmatch(s) for s in subfolders)) and not is_checkpoint:
            state_dirs.append(here)
        if TRAINER_LOG in files and not is_checkpoint:
            log_dirs.append(here)
        for name in sorted(files):
            if _is_run_file(here / name):
                others.extend(_file_sources(here / name))
    sources = _tensorboard_sources(run_dirs)
    for output_dir in sorted({*state_dirs, *log_dirs}):
        sources.extend(_output_dir_sources(output_dir, sources))
    return sources + others


def _is_run_file(path: Path) -> bool:
    """A run of its own among a folder's files (event files and trainer_state.json are found with their folders)."""
    if not path.is_file():  # a FIFO or a device under a log's name would block the read
        return False
    if path.name == METRICS_FILE or path.suffix == ".wandb":
        return True
    if path.suffix == ".json":
        return path.name != STATE_FILE and looks_like_trainer_state(path)
    return path.name.endswith(SQLITE_SUFFIXES) and is_sqlite_file(path) and bool(store_runs(path))


def _file_sources(path: Path) -> list[RunSource]:
    """The run(s) of one file, told apart by name and first bytes."""
    if path.suffix == ".wandb":
        run_folder = path.parent if path.parent.name.startswith(("run-", "offline-run-")) else path
        return [RunSource("wandb", [path], str(run_folder))]
    if path.suffix == ".jsonl":
        return [RunSource("llamafactory", [path], str(path))]
    if path.suffix == ".csv":
        return [RunSource("lightning", [path], str(path))]
    if is_sqlite_file(path):
        runs = store_runs(path)
        if not runs:  # opening it says why: no MLflow store, or one without runs
            return [RunSource("mlflow", [path], str(path))]
        return [RunSource("mlflow", [path], f"{path} {label}", key=run) for run, label in runs]
    if path.suffix == ".json" or (not is_event_file(path) and _looks_like_json(path)):
        return [RunSource("trainer_state", [path], str(path))]
    return [RunSource("tensorboard", [path], str(path), facts_dir=_output_dir_of(path.parent))]


def _output_dir_sources(output_dir: Path, tensorboard: list[RunSource]) -> list[RunSource]:
    """The run of a Trainer output dir, unless a TensorBoard run inside it already is (that one is then told of the
    others). Its own trainer_state.json is complete (saved at the end, with every grad norm); a LLaMA-Factory
    trainer_log.jsonl, appended as the run goes, is read instead of a checkpoint's, which stops at the checkpoint."""
    state = _latest_state(output_dir)
    trainer_log = output_dir / TRAINER_LOG if (output_dir / TRAINER_LOG).is_file() else None
    found = [p for p in (state, trainer_log) if p is not None]
    covered = [s for s in tensorboard if s.format == "tensorboard" and _is_inside(s.paths[0], output_dir)]
    if covered:
        for source in covered:
            source.facts_dir = source.facts_dir or output_dir
            source.notes.extend(f"{p} exists too; analyse it alone with: trainwatch analyze {p}" for p in found)
        return []
    if state is not None and (trainer_log is None or state.parent == output_dir):
        source = RunSource("trainer_state", [state], str(state))
        other = trainer_log
    elif trainer_log is not None:
        source = RunSource("llamafactory", [trainer_log], str(trainer_log))
        other = state
    else:
        return []
    if other is not None:
        source.notes.append(f"{other} exists too; analyse it alone with: trainwatch analyze {other}")
    return [source]


def _mlflow_run_is_active(folder: Path) -> bool:
    """A file store run not deleted (MLflow keeps a deleted run's folder until its garbage collection)."""
    meta = folder / "meta.yaml"
    try:
        return not meta.is_file() or "lifecycle_stage: deleted" not in meta.read_text(
            encoding="utf-8", errors="replace"
        )
    except OSError:
        return True


def _tensorboard_sources(run_dirs: list[Path]) -> list[RunSource]:
    """One source per run directory, except that HF Trainer's sibling ``runs/<date>_<host>`` directories that
    continue each other (a resume writes to a new one) are one run."""
    sources: list[RunSource] = []
    by_parent: dict[Path, list[Path]] = {}
    for folder in run_dirs:
        by_parent.setdefault(folder.parent, []).append(folder)
    for parent, folders in by_parent.items():
        if parent.name != "runs" or len(folders) == 1:
            sources.extend(
                RunSource("tensorboard", event_files(f), str(f), facts_dir=_output_dir_of(f)) for f in folders
            )
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
            f"{len(folders)} run directories continue each other (resumed training): {starts}; analysed as one run"
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
    return path.parts[: len(folder.parts)] == folder.parts  # `folder in path.parents` is 20x slower: n^2 in a sweep


def _looks_like_json(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(64).lstrip()[:1] == b"{"
    except OSError:
        return False


# -- judging one run --------------------------------------------------------------------------------------------------
def judge_run(
    source: RunSource, smoothing: int, thresholds: dict[str, Any], vocab_size: int | None = None
) -> RunReport:
    """Read one run and replay it through a fresh engine; a run that cannot be read gets ``error``, never raises."""
    engine = Engine(build_rules(KINDS, **thresholds), smoothing=smoothing)
    report = RunReport(source=source.label, format=source.format, notes=list(source.notes))
    try:
        run = open_run(source)
    except LogReadError as error:
        report.error = str(error)
        return report
    output_dir = _output_dir(source)
    live = read_live_report(output_dir) if output_dir else None
    facts = _with_plan(run.facts, run.epoch_mark)
    if live is not None and live.knows_vocab_size:  # the live run knew the model's class, the logs may not
        facts = dataclasses.replace(facts, vocab_size=live.vocab_size)
    engine.history.facts = _with_vocab_size(facts, vocab_size)
    _replay(engine, run.entries(), report)
    report.notes.extend(run.notes)  # complete once streamed: what restarts and resumes dropped is counted then
    report.curves = run.curves()
    report.diagnoses = list(engine.findings)
    report.history = engine.history
    if live is not None:  # the live callback's decisions, a pre-flight one included, which the logs cannot show
        report.diagnoses, notes = with_live_decisions(report.diagnoses, live, engine.history.step)
        report.notes.extend(notes)
    if output_dir:
        _name_checkpoints(report, output_dir)
    report.notes.extend(_missing_signals(engine.history, run.other_keys))
    return report


def open_run(source: RunSource) -> RunLog:
    """The run behind ``source``, through its format's reader; :class:`LogReadError` when nothing of it is readable."""
    path = source.paths[0]
    if source.format == "tensorboard":
        return _open_tensorboard(source)
    if source.format == "trainer_state":
        return read_trainer_state(path)
    if source.format == "wandb":
        return read_wandb_run(path)
    if source.format == "mlflow":
        return read_mlflow_run(path, source.key)
    if source.format == "llamafactory":
        return read_trainer_log(path)
    if source.format == "lightning":
        return read_metrics_csv(path)
    raise ValueError(f"unknown run format {source.format!r}: one of {', '.join(FORMATS)}")


FORMATS = ("tensorboard", "trainer_state", "wandb", "mlflow", "llamafactory", "lightning")


@dataclass
class _TensorBoardLog:
    """A TensorBoard run with its facts (the ``args``/``model_config`` text summaries and the output dir's files)."""

    run: TensorBoardRun
    facts: Facts

    @property
    def notes(self) -> list[str]:
        return self.run.notes

    @property
    def other_keys(self) -> dict[str, int]:
        return self.run.other_tags

    @property
    def epoch_mark(self) -> tuple[int, float] | None:
        return self.run.epoch_mark

    def entries(self) -> Iterator[Entry]:
        return self.run.entries()

    def curves(self) -> Curves:
        return self.run.curves()


def _open_tensorboard(source: RunSource) -> _TensorBoardLog:
    run = read_run(source.paths)  # pass 1: texts, counts and damage; the values stream from run.entries()
    if run.records == 0:
        raise LogReadError("; ".join(run.notes) or f"{source.label}: no readable records")
    return _TensorBoardLog(run, _tensorboard_facts(run.texts, source.facts_dir))


def _with_plan(facts: Facts, epoch_mark: tuple[int, float] | None) -> Facts:
    """An epoch-based run's planned length, which the live callback has from Trainer and the logs' arguments hold
    only as ``max_steps`` -1: ``num_train_epochs`` × the steps per epoch its first telling epoch shows."""
    if facts.max_steps is not None or epoch_mark is None:
        return facts
    planned = planned_from_epoch(facts.hyperparameters.get("num_train_epochs"), *epoch_mark)
    return facts if planned is None else dataclasses.replace(facts, max_steps=planned)


def _with_vocab_size(facts: Facts, vocab_size: int | None) -> Facts:
    """The run's facts, with the vocabulary size given by the caller (``--vocab-size``) where there is one."""
    return facts if vocab_size is None else dataclasses.replace(facts, vocab_size=vocab_size)


def _output_dir(source: RunSource) -> Path | None:
    """The Trainer output dir the run belongs to (its checkpoints, trainwatch's own report), where known."""
    if source.format in ("trainer_state", "llamafactory"):
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


def _missing_signals(history: History, other_keys: dict[str, int]) -> list[str]:
    """Say what could not be judged, so that "healthy" is never read as more than the logs allow."""
    if not any(history[name].count for name in SIGNALS):
        found = f"; keys logged: {', '.join(sorted(other_keys)[:8])}" if other_keys else ""
        return [
            f"none of Trainer's signals (loss, grad_norm, learning_rate, eval_loss) were logged: nothing to judge{found}"
        ]
    notes = []
    if not history["loss"].count:
        notes.append("no train loss logged: exploding and flat cannot be judged")
    elif not history["grad_norm"].count:
        notes.append(
            "no grad norm logged: the zero-gradient and non-finite-gradient checks were skipped (nor can a NaN that "
            "Trainer's filter logged as a 0.0 loss be told from a real 0.0)"
        )
    if history["loss"].count and not history["learning_rate"].count:
        notes.append("no learning rate logged: a warmup cannot be seen, so flatness is judged from the first loss on")
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


def _series_dict(series: Any) -> dict[str, Any]:
    data = {
        k: getattr(series, k) for k in ("count", "first", "last", "min", "min_step", "max", "max_step", "nonfinite")
    }
    return {k: (str(v) if isinstance(v, float) and not np.isfinite(v) else v) for k, v in data.items()}
