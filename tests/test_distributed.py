"""A real two-process Trainer job (torchrun, and `accelerate launch`; gloo on CPU): every rank stops on the same step,
only rank 0 speaks."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")
SCENARIOS = ("exploding", "no_target_tokens", "rank0_masked", "exploded_before_first_log")
WALL_CLOCK_LIMIT = 300
"""Seconds before a hung job fails the test instead of hanging CI (a healthy launch takes ~40 s on 2 cores)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port"],
    # accelerate starts several CPU processes through torchrun when told --multi_gpu; Trainer picks gloo on a CPU
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port"],
}


@pytest.fixture(scope="module", params=list(LAUNCHERS))
def job(request, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(request.param)
    command = [sys.executable, *LAUNCHERS[request.param], str(_free_port()), str(WORKER), str(out), *SCENARIOS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[1])}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=WALL_CLOCK_LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and both ranks
        output, _ = process.communicate()
        pytest.fail(f"the two-process job hung for {WALL_CLOCK_LIMIT} s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    return out


def _ranks(job: Path, scenario: str) -> list[dict]:
    return [json.loads((job / f"{scenario}.rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_both_ranks_train_distributed_and_stop_on_the_same_step(job: Path, scenario: str) -> None:
    zero, one = _ranks(job, scenario)
    assert zero["world_size"] == one["world_size"] == 2 and zero["parallel_mode"] == "ParallelMode.DISTRIBUTED"
    assert zero["stopped_at"] == one["stopped_at"]
    assert zero["findings"] == one["findings"]
    assert not zero["disabled"] and not one["disabled"]


def test_exploding_run_is_stopped_on_every_rank(job: Path) -> None:
    zero, _ = _ranks(job, "exploding")
    assert zero["stopped_at"] < zero["max_steps"] and zero["findings"][0][:2] == ["exploding", "lr_too_high"]


def test_an_explosion_before_the_first_log_stops_every_rank_on_the_same_step(job: Path) -> None:
    """Logged every 5 steps, the loss is far above a uniform guess ln 64 from its first log: every rank must stop,
    on the same step, with the same finding (each rank decides from the same reduced loss)."""
    zero, one = _ranks(job, "exploded_before_first_log")
    assert zero["losses"] == one["losses"] and zero["losses"][0][0] == 5 and zero["losses"][0][1] > 2 * math.log(64)
    assert zero["stopped_at"] == one["stopped_at"] < zero["max_steps"]
    assert zero["findings"] == one["findings"] and zero["findings"][0][:2] == ["exploding", "lr_too_high"]


def test_no_target_tokens_stops_every_rank_at_the_start(job: Path) -> None:
    zero, _ = _ranks(job, "no_target_tokens")
    assert zero["stopped_at"] == 1 and zero["findings"] == [["flat", "no_target_tokens", 0]]


def test_per_rank_data_counts_are_reduced_before_deciding(job: Path) -> None:
    """Rank 0's share has no targets, rank 1's has: no rank stops alone (which would hang the other)."""
    zero, one = _ranks(job, "rank0_masked")
    assert zero["stopped_at"] == one["stopped_at"] == zero["max_steps"]
    assert zero["checks"]["target tokens"] == "warn" and one["checks"]["examples with targets"] == "pass"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_only_rank_zero_prints_and_writes(job: Path, scenario: str) -> None:
    assert "trainwatch" in (job / f"{scenario}.rank0.log").read_text()
    assert (job / f"{scenario}.rank1.log").read_text() == ""
    report = json.loads((job / scenario / "rank0" / "trainwatch" / "diagnosis.json").read_text())
    assert report["step"] == _ranks(job, scenario)[0]["stopped_at"]
    assert not (job / scenario / "rank1" / "trainwatch").exists()
    assert not list((job / scenario / "rank1").rglob("*.trainwatch"))
