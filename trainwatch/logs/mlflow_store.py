"""MLflow runs, from a local tracking store: the SQLite store (``mlflow.db``, MLflow's default backend) and the
older file store (``mlruns/<experiment>/<run>/``).

Trainer's ``MLflowCallback`` logs each ``on_log`` with ``log_metrics(logs, step=global_step)``, Trainer's own keys
(``loss``, ``grad_norm``, ``learning_rate``, ``eval_loss``, ``epoch``; characters outside ``[0-9A-Za-z_-. :/]``
replaced by ``_``, which none of those has), and the TrainingArguments merged with the model config as params
(strings). MLflow keeps one history per metric, so the entries are rebuilt from the values in the order they were
written (by timestamp), grouped as TensorBoard's are; a run resumed into the same MLflow run logs the steps after its
checkpoint again, and the later values win.

Both stores are read directly, without the MLflow client: the SQLite store read-only with Python's ``sqlite3`` (the
client's SQL store creates its tables in a database that lacks them, a write to a file that is the user's, and takes
seconds to import), the file store as the text files it is. SQLite cannot hold an infinity, so MLflow writes ±inf as ±1.7976931348623157e308 and NaN as 0
with ``is_nan``: both are read back as what was logged.
"""

from __future__ import annotations

import math
import os
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import yaml

from trainwatch.history import Facts, objective_from_args
from trainwatch.logs import LogReadError
from trainwatch.logs.source import LoggedRun, as_step, grouped, is_number, without_replaced
from trainwatch.logs.trainer_state import hyperparameters_from_args, planned_steps, vocab_size_from_config

SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
RUN_META = "meta.yaml"
TRASH = ".trash"
"""Where the file store moves deleted experiments."""
FINISHED = {"FINISHED", 3}
"""A run's status when it ended normally (the SQLite store names it, the file store numbers it)."""
STATUS_NAMES = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
SQLITE_ERRORS = (sqlite3.Error, UnicodeDecodeError)
"""What a damaged database raises: SQLite's errors, and Python's when an error message itself is not UTF-8."""


def is_sqlite_file(path: Path) -> bool:
    """Starts as a SQLite database does; only a regular file is opened (a FIFO would block the read)."""
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def is_file_store_run(subfolders: list[str], files: list[str]) -> bool:
    """A file store run's folder: its ``meta.yaml`` beside ``metrics/`` (an experiment's has runs beside it)."""
    return RUN_META in files and "metrics" in subfolders


def store_runs(path: Path) -> list[tuple[str, str]]:
    """The active runs of a SQLite store, ``(run id, "experiment/run name")`` in start order; [] when there is
    none or the file is no MLflow store (:func:`read_mlflow_run` then says which)."""
    try:
        with closing(_connect(path)) as db:
            rows = db.execute(
                "SELECT r.run_uuid, r.name, e.name FROM runs r LEFT JOIN experiments e USING (experiment_id) "
                "WHERE r.lifecycle_stage IS NOT 'deleted' ORDER BY r.start_time, r.run_uuid"
            ).fetchall()
    except SQLITE_ERRORS:
        return []
    return [(str(run), f"{experiment}/{name or run}") for run, name, experiment in rows if run is not None]


def read_mlflow_run(path: str | os.PathLike[str], run_id: str | None = None) -> LoggedRun:
    """Read one run: a file store run's folder, or the run ``run_id`` of a SQLite store (None: the store has no run
    to read, and the :class:`LogReadError` says why)."""
    path = Path(path)
    if path.is_dir():
        return _file_store_run(path)
    if run_id is None:
        raise LogReadError(_why_no_runs(path))
    try:
        with closing(_connect(path)) as db:
            metrics = db.execute(
                "SELECT step, key, value, is_nan FROM metrics WHERE run_uuid = ? ORDER BY timestamp, step, rowid",
                (run_id,),
            ).fetchall()
            params = db.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)).fetchall()
            status = db.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
    except SQLITE_ERRORS as error:
        raise LogReadError(f"{path}: cannot read the MLflow store ({error})") from None
    values, skipped = [], 0
    for step, key, value, is_nan in metrics:
        step = as_step(step)
        if step is None or not isinstance(key, str) or not is_number(value):
            skipped += 1
            continue
        values.append((step, key, math.nan if is_nan else _infinite(value)))
    where = f"{path} run {run_id}"
    notes = [f"{where}: skipped {skipped} metric value(s) without a whole step or a number"] if skipped else []
    return _run(
        values, dict(p for p in params if all(isinstance(x, str) for x in p)), status and status[0], where, notes
    )


def _connect(path: Path) -> sqlite3.Connection:
    """Read-only: trainwatch never writes to a user's store, not even a lock or a journal. Text that is not UTF-8
    (a damaged file) is read with replacement characters: sqlite3 would raise UnicodeDecodeError mid-query."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    db.text_factory = lambda data: data.decode("utf-8", errors="replace")
    return db


def _why_no_runs(path: Path) -> str:
    try:
        with closing(_connect(path)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except SQLITE_ERRORS as error:
        return f"{path}: cannot read the MLflow store ({error})"
    if not {"runs", "metrics", "params"} <= tables:
        return f"{path}: not an MLflow store (a SQLite database without MLflow's runs and metrics tables)"
    return f"{path}: an MLflow store with no runs"


def _infinite(value: float) -> float:
    """MLflow's SQLite stand-in for ±inf, back to ±inf."""
    return math.copysign(math.inf, value) if abs(value) == sys.float_info.max else float(value)


def _file_store_run(folder: Path) -> LoggedRun:
    meta = _yaml(folder / RUN_META)
    if not meta or not (folder / "metrics").is_dir():
        raise LogReadError(f"{folder}: not an MLflow run (no meta.yaml and metrics/)")
    values: list[tuple[int, int, bool, str, float]] = []  # timestamp, step, epoch last, key, value
    damaged = 0
    for file in sorted(p for p in (folder / "metrics").rglob("*") if p.is_file()):
        key = file.relative_to(folder / "metrics").as_posix()
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            damaged += 1
            continue
        for line in lines:
            parts = line.split(" ")
            if len(parts) not in (2, 3, 5):  # "timestamp value [step [dataset digest]]", no step before MLflow 1.0
                damaged += 1
                continue
            timestamp, step = as_step(parts[0]), as_step(parts[2] if len(parts) > 2 else 0)
            try:
                value = float(parts[1]) if timestamp is not None and step is not None else None
            except ValueError:
                value = None
            if value is None:
                damaged += 1
                continue
            values.append((timestamp, step, key == "epoch", key, value))  # type: ignore[arg-type]
    values.sort()  # write order; within one log call (one timestamp and step), epoch last, as Trainer logs it
    params: dict[str, str] = {}
    for file in sorted((folder / "params").glob("*")) if (folder / "params").is_dir() else []:
        if not file.is_file():
            continue
        try:
            params[file.name] = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
    notes = (
        [f"{folder}: skipped {damaged} metric line(s) or file(s) that are not 'timestamp value step'"]
        if damaged
        else []
    )
    steps = [(step, key, value) for _, step, _, key, value in values]
    return _run(steps, params, meta.get("status"), str(folder), notes)


def _run(
    values: list[tuple[int, str, float]], params: dict[str, str], status: Any, where: str, notes: list[str]
) -> LoggedRun:
    log_history, resumes = without_replaced(grouped(values), where)
    notes.extend(resumes)
    if status not in FINISHED:
        said = STATUS_NAMES.get(status, status) if isinstance(status, int) else status
        notes.append(f"{where}: the run's status is {said}: it crashed, was stopped or is still running")
    if not log_history:
        notes.append(f"{where}: no metric logged")
    return LoggedRun(log_history, _facts(params), notes)


def _facts(params: dict[str, str]) -> Facts:
    """The params ``MLflowCallback`` logged (TrainingArguments and the model config), as the values they were."""
    config = {key: _param_value(value) for key, value in params.items()}
    hyperparameters = hyperparameters_from_args({k: v for k, v in config.items() if v is not None})
    return Facts(
        vocab_size=vocab_size_from_config(config),
        hyperparameters=hyperparameters,
        max_steps=planned_steps(hyperparameters),
        objective=objective_from_args(config),
    )


def _param_value(text: str) -> Any:
    """A param as Python wrote it with ``str()``: a bool, a number, None, or the text itself."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}
