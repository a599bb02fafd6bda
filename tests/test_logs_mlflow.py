"""MLflow tracking stores, written by real Trainer runs with ``report_to="mlflow"``: the SQLite store and the file
store (``mlruns/``)."""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainwatch.analysis import analyze, find_runs, judge_run
from trainwatch.logs import LogReadError
from trainwatch.logs.mlflow_store import read_mlflow_run
from trainwatch.testing import VOCAB_SIZE, tiny_trainer

mlflow = pytest.importorskip("mlflow", reason="the MLflow tests need mlflow-skinny (pip install -e '.[test]')")


def train_into(uri: str, output_dir: Path, scenario: str, **overrides) -> Path:
    """A real run logged by Trainer's MLflowCallback to the store at ``uri``; returns its trainer_state.json."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", uri)
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store for existing users only
        trainer = tiny_trainer(scenario, str(output_dir), report_to=["mlflow"], **overrides)
        logging.disable(logging.WARNING)
        try:
            trainer.train()
        finally:
            logging.disable(logging.NOTSET)
            mlflow.end_run()
    trainer.save_state()
    return output_dir / "trainer_state.json"


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory) -> tuple[Path, list[Path]]:
    """One store, three runs of the default experiment: an exploding Trainer run, a healthy one, and one logged by
    hand with a NaN loss and an infinite grad norm."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    states = [
        train_into(uri, root / "exploding", "exploding", max_steps=20, eval_strategy="steps", eval_steps=10),
        train_into(uri, root / "healthy", "healthy", max_steps=12, eval_steps=6),
    ]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", uri)  # as for Trainer's runs: set_tracking_uri would outlive the test
        with mlflow.start_run():
            mlflow.log_metrics({"loss": 2.0, "grad_norm": 1.0}, step=1)
            mlflow.log_metrics({"loss": math.nan, "grad_norm": math.inf}, step=2)
    return root / "mlflow.db", states


def test_each_run_of_a_sqlite_store_as_trainer_state_judges_it(sqlite_store) -> None:
    store, states = sqlite_store
    reports = analyze(store)
    assert [r.format for r in reports] == ["mlflow"] * 3 and reports[0].source.startswith(f"{store} Default/")
    for report, state in zip(reports, states):
        [expected] = analyze(state, vocab_size=VOCAB_SIZE)  # the state file alone lacks the model config
        # every signal value, in order. Not how many entries they make: Trainer's MLflowCallback logs asynchronously,
        # values of log calls in one millisecond come back in the store's order, and a log of no signal (the
        # end-of-training summary) may join its neighbour's entry (seen once on a loaded machine: 22 for 23 calls)
        assert report.history.series == expected.history.series
        assert report.verdict == expected.verdict
        assert [(f.kind, f.cause, f.step) for f in report.diagnoses] == [
            (f.kind, f.cause, f.step) for f in expected.diagnoses
        ]
    assert reports[0].verdict == "exploding" and reports[1].verdict == "healthy"
    facts = reports[0].history.facts  # params are strings in MLflow: read back as the values they were
    assert facts.vocab_size == 64 and facts.max_steps == 20 and facts.hyperparameters["learning_rate"] == 1.0
    assert facts.hyperparameters["max_grad_norm"] == 0.0 and facts.hyperparameters["fp16"] is False
    assert "lower the learning rate 10×: learning_rate 1 → 0.1" in reports[0].diagnoses[0].fixes


def test_infinities_and_nan_come_back_as_logged(sqlite_store) -> None:
    """SQLite holds no inf: MLflow writes the largest double; a NaN is 0 with is_nan."""
    store, _ = sqlite_store
    source = find_runs(store)[2]
    run = read_mlflow_run(store, source.key)
    assert math.isnan(run.log_history[1][1]["loss"]) and run.log_history[1][1]["grad_norm"] == math.inf
    report = judge_run(source, 3, {})
    assert report.verdict == "exploding" and report.diagnoses[0].cause == "non_finite"


def test_sqlite_store_is_opened_read_only(sqlite_store) -> None:
    store, _ = sqlite_store
    before = store.stat().st_mtime_ns, store.read_bytes()
    analyze(store.parent)  # found in its folder too
    assert (store.stat().st_mtime_ns, store.read_bytes()) == before
    assert not list(store.parent.glob("mlflow.db-*"))  # no journal left behind


def test_a_store_whose_runs_were_deleted_is_bad_input(sqlite_store, tmp_path) -> None:
    store = tmp_path / "mlflow.db"
    shutil.copy(sqlite_store[0], store)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    for run in client.search_runs(["0"]):
        client.delete_run(run.info.run_id)
    with pytest.raises(LogReadError, match="an MLflow store with no runs"):
        analyze(store)
    result = subprocess.run(
        [sys.executable, "-m", "trainwatch", "analyze", str(store)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_file_store_run_and_experiment(tmp_path) -> None:
    state = train_into(f"file:{tmp_path / 'mlruns'}", tmp_path / "out", "healthy", max_steps=12, eval_steps=6)
    [report] = analyze(tmp_path / "mlruns")
    [expected] = analyze(state)
    assert report.format == "mlflow" and report.verdict == "healthy"
    assert report.history.series == expected.history.series  # every signal value, in order (see above)
    assert report.history.facts.vocab_size == 64
    [run_folder] = [p.parent for p in (tmp_path / "mlruns").glob("*/*/meta.yaml")]
    assert [r.source for r in analyze(run_folder)] == [str(run_folder)]  # one run, asked for by its folder


def test_a_sqlite_file_that_is_no_mlflow_store(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(LogReadError, match="not an MLflow store"):
        analyze(path)
    (tmp_path / "trainer_state.json").write_text('{"log_history": [{"step": 1, "loss": 1.0}]}')
    assert [r.format for r in analyze(tmp_path)] == ["trainer_state"]  # met while looking in a folder: not a run
