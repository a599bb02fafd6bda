"""``trainwatch analyze`` over a sweep: a line per run, failures first, the counts; JSON Lines; ``--jobs``; a bar.

The sweep is real tiny Trainer runs on disk, one of each verdict, and a damaged event file (tests/sweep_runs.py);
every command is the real CLI in a subprocess. Worker processes are killed from outside, as the OOM killer does.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from sweep_runs import BROKEN, VERDICTS, sweep_of_real_runs

from trainwatch.analysis import find_runs
from trainwatch.sweep import MANY_RUNS, WORKER_DIED

FAILURES_FIRST = ["exploding", "flat", "overfitting", "unreadable", "not judged", "healthy"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return sweep_of_real_runs(tmp_path_factory)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainwatch", "analyze", *args], check=False, capture_output=True, text=True, timeout=180
    )


def folder_of(source: str, root: Path) -> str:
    return Path(source).relative_to(root).parts[0]


def test_a_line_per_run_failures_first_then_the_counts_then_each_failure(sweep):
    result = cli(str(sweep))
    assert result.returncode == 1, result.stderr  # a failure was diagnosed
    assert result.stderr == ""  # no bar: stderr is not a terminal
    table, summary, *details = result.stdout.split("\n\n")
    header, *lines = table.splitlines()
    assert header.split() == ["RUN", "FORMAT", "VERDICT", "CAUSE", "STEP", "BEST", "EVAL", "LOSS", "CHECKPOINT"]
    rows = {line.split()[0].split("/")[0]: line for line in lines}
    assert set(rows) == set(VERDICTS)
    assert [VERDICTS[line.split()[0].split("/")[0]] for line in lines] == FAILURES_FIRST
    assert summary == "6 runs: 1 healthy, 1 exploding, 1 flat, 1 overfitting, 1 not judged, 1 unreadable"
    assert rows["exploding"].split()[2:5] == ["exploding", "lr_too_high", "2"]
    assert rows["flat"].split()[2:5] == ["flat", "zero_gradients", "5"]
    overfitting = rows["overfitting"].split()
    assert overfitting[2:5] == ["overfitting", "memorization", "50"]
    assert overfitting[-1] == "checkpoint-30"  # the checkpoint to go back to: at the best evaluation
    healthy = rows["healthy"].split()
    assert healthy[1:3] == ["tensorboard", "healthy"]
    assert healthy[-3:] == [
        "@",
        "30",
        "checkpoint-30",
    ]  # its best eval loss, at step 30, and the checkpoint saved there
    # below: each failure's diagnosis and fixes, the unreadable's error, why the not judged was not; no healthy run's
    # notes, no curves
    firsts = [block.splitlines()[0] for block in details]
    assert len(firsts) == 5 and [firsts[i].rsplit(": ", 1)[-1] for i in (0, 1, 2, 4)] == FAILURES_FIRST[:3] + [
        "not judged"
    ]
    assert "EXPLODING (lr_too_high) at step 2: " in details[0] and "  fix 1. lower the learning rate 10×" in details[0]
    assert f"checkpoint to go back to: {sweep / 'overfitting' / 'checkpoint-30'}" in details[2]
    assert details[3].startswith(f"unreadable: {sweep / BROKEN}/events.out.tfevents")
    assert "  note: no train loss logged" in details[4]
    assert "curves:" not in result.stdout and "healthy/trainer_state.json exists too" not in result.stdout


def test_details_show_every_run_s_whole_report(sweep):
    result = cli("--details", str(sweep))
    assert result.returncode == 1
    assert result.stdout.count("  curves:") == 5  # every readable run, the healthy and the not judged included
    assert "healthy/trainer_state.json exists too" in result.stdout


def test_one_run_keeps_its_whole_report(sweep):
    result = cli(str(sweep / "overfitting"))
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].endswith(": overfitting") and "curves:" in result.stdout
    assert "RUN" not in result.stdout and " runs: " not in result.stdout


def test_json_lines_one_object_per_run_in_the_order_found(sweep):
    result = cli("--json", str(sweep))
    assert result.returncode == 1
    reports = [json.loads(line) for line in result.stdout.splitlines()]  # each line a JSON object on its own
    assert [r["source"] for r in reports] == [s.label for s in find_runs(sweep)]  # as found, not the table's order
    folders = [folder_of(r["source"], sweep) for r in reports]
    assert sorted(folders) == sorted(VERDICTS)
    for report in reports:
        expected = VERDICTS[folder_of(report["source"], sweep)]
        assert report["verdict"] == (None if expected == "unreadable" else expected)
    by_folder = dict(zip(folders, reports))
    assert "no valid record" in by_folder[BROKEN]["error"]
    best = by_folder["healthy"]["best_eval"]
    assert best["step"] == 30 and best["checkpoint"] == str(sweep / "healthy" / "checkpoint-30")
    assert best["loss"] == by_folder["healthy"]["signals"]["eval_loss"]["min"]
    assert by_folder["exploding"]["best_eval"] is None  # never evaluated


def test_jobs_give_the_same_result_as_one_process(sweep):
    one = cli("--json", str(sweep))
    two = cli("--json", "--jobs", "2", str(sweep))
    assert (two.returncode, two.stdout, two.stderr) == (one.returncode, one.stdout, "")
    assert cli("--jobs", "3", str(sweep)).stdout == cli(str(sweep)).stdout


def spawned_workers(parent: int) -> list[int]:
    """The worker processes ``parent`` spawned (multiprocessing's spawn_main; not its resource tracker)."""
    workers = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in command:
            workers.append(int(entry.name))
    return workers


def killing_workers(args: list[str], *, every: bool) -> tuple[subprocess.CompletedProcess, int]:
    """Run the CLI and SIGKILL its workers as they appear: the first one only, or ``every`` one."""
    process = subprocess.Popen(
        [sys.executable, "-m", "trainwatch", "analyze", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed: set[int] = set()
    deadline = time.monotonic() + 180
    while process.poll() is None and time.monotonic() < deadline:
        for pid in spawned_workers(process.pid):
            if pid not in killed and (every or not killed):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.005)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), len(killed)


linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")


@linux_only
def test_a_killed_worker_loses_no_run(sweep):
    """A worker killed mid-sweep loses nothing: the run it was reading is judged again in a fresh worker."""
    result, killed = killing_workers(["--json", "--jobs", "2", str(sweep)], every=False)
    assert killed == 1
    assert (result.returncode, result.stdout) == (1, cli("--json", str(sweep)).stdout), result.stderr


@linux_only
def test_a_run_whose_worker_always_dies_is_unreadable(sweep, tmp_path):
    for name in ("healthy", "exploding"):
        shutil.copytree(sweep / name / "runs", tmp_path / name)
    result, killed = killing_workers(["--jobs", "2", str(tmp_path)], every=True)
    # each run's worker died, and again in a fresh one; nothing could be read: exit 2, one line naming both runs
    assert killed >= 3 and result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.count(WORKER_DIED) == 2, result.stderr


@linux_only
def test_ctrl_c_ends_a_sweep_in_one_line_and_leaves_no_worker(sweep, tmp_path):
    for n in range(4 * MANY_RUNS):
        shutil.copytree(sweep / "healthy" / "runs", tmp_path / f"run-{n:02d}")
    process = subprocess.Popen(
        [sys.executable, "-m", "trainwatch", "analyze", "--jobs", "2", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not (workers := spawned_workers(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.002)
    # As a terminal sends it, to every process of the command, while the first worker is still starting (importing:
    # a Ctrl-C there printed a fatal error of its own when it was not kept from the workers).
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert (process.returncode, stdout, stderr) == (130, "", "trainwatch: interrupted\n")
    assert workers and not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def test_a_progress_bar_on_a_terminal_only(sweep, tmp_path):
    for n in range(MANY_RUNS):
        shutil.copytree(sweep / "healthy" / "runs", tmp_path / f"run-{n:02d}")
    piped = cli(str(tmp_path))
    assert piped.returncode == 0 and piped.stderr == ""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "trainwatch", "analyze", str(tmp_path)], stdout=subprocess.PIPE, stderr=terminal
    )
    os.close(terminal)
    shown = bytearray()
    reader = threading.Thread(target=lambda: shown.extend(_read_all(controller)))
    reader.start()
    stdout, _ = process.communicate(timeout=180)
    reader.join(timeout=60)
    os.close(controller)
    assert process.returncode == 0
    assert stdout.decode() == piped.stdout  # the bar never mixes into the report
    assert b"trainwatch analyze" in shown and f"/{MANY_RUNS} ".encode() in shown, shown


def _read_all(fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the terminal's other end was closed
            return data
        if not chunk:
            return data
        data += chunk
