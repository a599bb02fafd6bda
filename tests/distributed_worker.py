"""One rank of a real two-process Trainer job (launched by tests/test_distributed.py through torchrun, gloo on CPU).

For each scenario named on the command line it trains a tiny run with ``Diagnoser(stop_on=...)`` into
``OUT/<scenario>/rank<N>`` (a directory per rank, so that who wrote what can be seen), and writes what this rank
saw (the step it stopped at, the world size, its findings and checklist) to ``OUT/<scenario>.rank<N>.json`` and
what the trainwatch logger said on this rank to ``OUT/<scenario>.rank<N>.log``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from trainwatch.callbacks import Diagnoser
from trainwatch.testing import Progressions, tiny_trainer

RANK0_MASKED = "rank0_masked"
"""A healthy run whose rank 0 alone was given a train set without a single target token."""


def main(out: Path, scenarios: list[str]) -> None:
    rank = int(os.environ["RANK"])
    for scenario in scenarios:
        handler = logging.FileHandler(out / f"{scenario}.rank{rank}.log")
        logging.getLogger("trainwatch").addHandler(handler)
        diagnoser = Diagnoser(stop_on=("exploding", "flat"))
        run_dir = str(out / scenario / f"rank{rank}")
        if scenario == RANK0_MASKED:
            trainer = tiny_trainer("healthy", run_dir, callbacks=[diagnoser], ddp_backend="gloo",
                                   per_device_train_batch_size=4, max_steps=12, eval_strategy="no")
            # Pre-sharded data: only rank 0's share is fully masked. The ranks must still decide alike.
            trainer.train_dataset = Progressions(512, masked_fraction=1.0 if rank == 0 else 0.0)
        else:
            trainer = tiny_trainer(scenario, run_dir, callbacks=[diagnoser], ddp_backend="gloo",
                                   per_device_train_batch_size=4)
        trainer.train()
        logging.getLogger("trainwatch").removeHandler(handler)
        handler.close()
        seen = {
            "rank": rank,
            "world_size": trainer.args.world_size,
            "parallel_mode": str(trainer.args.parallel_mode),
            "stopped_at": trainer.state.global_step,
            "max_steps": trainer.state.max_steps,
            "findings": [(f.kind, f.cause, f.step) for f in diagnoser.diagnoses],
            "disabled": diagnoser.disabled,
            "checks": {c.name: c.status for c in diagnoser.checks},
            "losses": [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e],
        }
        (out / f"{scenario}.rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
