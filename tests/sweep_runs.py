"""A sweep folder of real tiny runs, one of each verdict, written once per test session for the sweep and HTML tests.

Each run is a real Trainer run (:func:`trainwatch.testing.tiny_trainer`) cut to the steps its verdict needs, writing
TensorBoard event files, trainer_state.json and checkpoints as a user's runs do; one folder holds a damaged event file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainwatch.testing import tiny_trainer

RUNS: dict[str, tuple[str, dict[str, Any], str]] = {
    # folder: (scenario, TrainingArguments overrides, the verdict trainwatch must give)
    "healthy": ("healthy", {"max_steps": 30, "eval_steps": 10}, "healthy"),
    "exploding": ("exploding", {"max_steps": 10}, "exploding"),
    "flat": ("zero_gradients", {"max_steps": 10}, "flat"),
    "overfitting": ("overfitting", {"max_steps": 60, "lr_scheduler_type": "constant"}, "overfitting"),
    # logging every 10 steps, stopped at 2: trainer_state.json without a single train loss
    "not_judged": ("healthy", {"max_steps": 2, "logging_steps": 10, "report_to": []}, "not judged"),
}
BROKEN = "broken"
"""The folder whose event file is 100 bytes that are no TensorBoard record: unreadable."""
VERDICTS = {**{name: verdict for name, (_, _, verdict) in RUNS.items()}, BROKEN: "unreadable"}


def sweep_of_real_runs(tmp_path_factory: Any) -> Path:
    """The sweep folder, written on first use in this session's temporary directory."""
    root = Path(tmp_path_factory.getbasetemp()) / "sweep-of-real-runs"
    done = root / ".written"
    if done.exists():
        return root
    logging.disable(logging.WARNING)
    try:
        for name, (scenario, overrides, _) in RUNS.items():
            trainer = tiny_trainer(scenario, str(root / name), save_strategy="steps", save_steps=10, **overrides)
            trainer.train()
            trainer.save_state()
    finally:
        logging.disable(logging.NOTSET)
    (root / BROKEN).mkdir()
    (root / BROKEN / "events.out.tfevents.1700000000.host").write_bytes(bytes(range(100)))
    done.touch()
    return root
