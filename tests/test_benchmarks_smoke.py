"""The benchmark scripts run end to end (``--quick``) and print their tables; their numbers are not judged here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


REALRUNS = Path(__file__).resolve().parents[2] / "shared" / "realruns"


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("detection.py", ["--quick"], ["| exploding | trainwatch Diagnoser() (flags) |", "live Diagnoser findings == Engine replay"]),
        ("overhead.py", ["--quick", "--decompose"], ["| plain (no Diagnoser) |", "| History.record only (--decompose) |",
                                                  "| watched (Diagnoser) |", "one Diagnoser.on_log call in a tight loop"]),
        ("memory.py", ["--quick"], ["| 10,000 |", "ratio last/first segment", "trainwatch.analyze"]),
        ("gradient_probe.py", ["--quick"], ["| tiny llama (full fine-tune) | 21 |"]),
        ("noisy_evals.py", ["--quick"], ["| i.i.d. σ=8.0% |", "| rise per evaluation | σ=0.5% | σ=2.0% |"]),
        pytest.param(
            "early_stopping_realruns.py", [str(REALRUNS)], ["| EarlyStopping p=1 |", "| trainwatch |"],
            marks=pytest.mark.skipif(not REALRUNS.is_dir(), reason=f"{REALRUNS} not present"),
        ),
    ],
)
def test_benchmark_runs(script: str, args: list[str], expected: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for text in expected:
        assert text in done.stdout, done.stdout
