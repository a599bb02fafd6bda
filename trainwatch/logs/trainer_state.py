"""trainer_state.json: Trainer's own record of every ``on_log`` call (``log_history``), plus what sits beside it.

``log_history`` is exactly the list of dicts the live callback received, each with its ``step``, so replaying it is
the live run again. The files Trainer and peft save next to it (``adapter_config.json``, ``config.json``,
``training_args.json`` where a tool wrote one) give the hyperparameters and vocabulary size; ``training_args.bin``
is a pickle and is never loaded (unpickling runs code).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainwatch.history import SIGNALS, Facts, objective_from_args, predicts_tokens
from trainwatch.logs import LogReadError
from trainwatch.logs.source import LoggedRun, is_number, is_step

STATE_FILE = "trainer_state.json"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
LORA_KEYS = (("lora_r", "r"), ("lora_alpha", "lora_alpha"), ("lora_dropout", "lora_dropout"))
STATE_HYPERPARAMETERS = ("num_train_epochs", "logging_steps", "eval_steps", "save_steps")
"""Fields of trainer_state.json that are also TrainingArguments fields of the same meaning (its ``max_steps`` is
the computed total, not the argument, so it is left out)."""


def read_trainer_state(path: str | os.PathLike[str]) -> LoggedRun:
    """Read ``path`` (a trainer_state.json) and the facts beside it; :class:`LogReadError` if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))  # Python's json reads the NaN/Infinity Trainer writes
    except OSError as error:
        raise LogReadError(f"{path}: cannot read ({error.strerror or error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LogReadError(f"{path}: not valid JSON ({error})") from None
    except RecursionError:
        raise LogReadError(f"{path}: not a trainer_state.json (JSON nested too deeply to read)") from None
    if not isinstance(data, dict) or not isinstance(data.get("log_history"), list):
        raise LogReadError(f"{path}: not a trainer_state.json (no log_history list)")
    state = LoggedRun([], facts=facts_beside(path.parent, data))
    skipped = 0
    for entry in data["log_history"]:
        if isinstance(entry, dict) and is_step(entry.get("step")):  # each entry as on_log received it, its step kept
            kept = {k: v for k, v in entry.items() if k == "step" or is_number(v) or k not in SIGNALS}
            state.log_history.append((entry["step"], kept))
        else:
            skipped += 1
    if skipped:
        state.notes.append(
            f"{path}: skipped {skipped} log_history entr{'y' if skipped == 1 else 'ies'} without a valid step"
        )
    if not state.log_history:
        state.notes.append(f"{path}: log_history is empty (the run saved its state before its first log)")
    return state


def looks_like_trainer_state(path: Path) -> bool:
    """A JSON file under another name that holds a trainer state (``trainer_state (1).json`` from the Hub, a
    folder of renamed ones): its ``log_history`` key is near the start (Trainer sorts the keys), so 64 KiB tell."""
    try:
        with open(path, "rb") as f:
            return b'"log_history"' in f.read(1 << 16)
    except OSError:
        return False


def _is_count(value: Any) -> bool:
    """A positive, finite number of steps or tokens (a config read from another tool's log may hold anything)."""
    return is_number(value) and 0 < value < math.inf


def facts_beside(directory: Path, state: Mapping[str, Any] | None = None) -> Facts:
    """Hyperparameters and vocab size from the files Trainer and peft save in an output dir and its checkpoints.

    ``directory`` is a checkpoint (its output dir is read too) or an output dir (its latest checkpoint is read too:
    Trainer saves the model config and adapter config there, and in the output dir only on ``save_model``).
    """
    params: dict[str, Any] = {}
    if state:
        params.update({k: state[k] for k in STATE_HYPERPARAMETERS if is_number(state.get(k)) and state[k] > 0})
    if _CHECKPOINT.fullmatch(directory.name):
        folders = [directory.parent, directory]  # a checkpoint's own files win over its output dir's
    else:
        folders = [directory, *latest_checkpoints(directory)[:1]]
    vocab_size, objective = None, None
    for folder in folders:
        args = _json_object(folder / "training_args.json")
        objective = objective_from_args(args) or objective
        params.update(hyperparameters_from_args(args))
        params.update(lora_hyperparameters(_json_object(folder / "adapter_config.json")))
        vocab_size = vocab_size_from_config(_json_object(folder / "config.json")) or vocab_size
    planned = state.get("max_steps") if state else None  # the computed total, unlike the argument of that name
    max_steps = planned if _is_count(planned) else planned_steps(params)
    return Facts(
        vocab_size=vocab_size,
        hyperparameters=params,
        max_steps=int(max_steps) if max_steps else None,
        objective=objective,
    )


def planned_steps(args: Mapping[str, Any]) -> int | None:
    """The ``max_steps`` argument when it sets the run's length (> 0); an epoch-based run's total is not in it."""
    value = args.get("max_steps")
    return int(value) if _is_count(value) else None


def latest_checkpoints(output_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` directories of an output dir, latest (highest N) first."""
    try:
        found = [
            (int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.fullmatch(p.name)) and p.is_dir()
        ]
    except OSError:
        return []
    return [p for _, p in sorted(found, reverse=True)]


def hyperparameters_from_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The TrainingArguments fields the live callback keeps: plain numbers, strings and booleans."""
    return {
        k: v
        for k, v in args.items()
        if isinstance(v, (int, float, str, bool)) and not (isinstance(v, float) and math.isnan(v))
    }


def lora_hyperparameters(adapter_config: Mapping[str, Any]) -> dict[str, Any]:
    """``r``/``lora_alpha``/``lora_dropout`` of a peft adapter config under the names the fixes use."""
    return {ours: adapter_config[theirs] for ours, theirs in LORA_KEYS if is_number(adapter_config.get(theirs))}


def vocab_size_from_config(config: Mapping[str, Any]) -> int | None:
    """A model config's vocabulary size, looking into ``text_config`` for multimodal models, as the live one does;
    None for a model whose ``architectures`` name a task head other than a language model's (its loss is no
    cross-entropy over that vocabulary)."""
    architectures = config.get("architectures")
    if isinstance(architectures, list) and predicts_tokens(architectures) is False:
        return None
    for candidate in (config.get("text_config"), config):
        if isinstance(candidate, Mapping) and _is_count(candidate.get("vocab_size")):
            return int(candidate["vocab_size"])
    return None


def _json_object(path: Path) -> dict[str, Any]:
    """A small JSON file's object, or {} when it is absent or not one (facts are a bonus, never a failure). Only a
    regular file is opened: a FIFO or a device under a config's name would block the read forever."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}
