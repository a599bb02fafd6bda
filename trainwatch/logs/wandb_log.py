"""A Weights & Biases run's transaction log, ``wandb/run-*/run-<id>.wandb`` (``offline-run-*`` offline).

Everything a run logs is appended there as it happens (online runs too, before it is sent), so a crashed run still
has its history up to its last complete record. The file is LevelDB's log format under a ``:W&B`` header: 32 KiB
blocks of records, each ``uint32 CRC-32 (of its type byte and data), uint16 length, uint8 type`` then its data, a
record longer than a block's room split into first/middle/last pieces. Each assembled record is a
``wandb_internal.Record`` protobuf, decoded with the wandb package's own classes (``wandb.proto``; the extra
``trainwatch-hf[wandb]``). wandb ships no Python reader of the file any more (its ``wandb-core`` reads it, and
``wandb leet inspect`` prints it for people, one process per run), so the framing is read here, in a few lines, with
every CRC checked: a damaged record costs that block only, a record cut off at the end is noted.

What is read: the ``history`` records (one per ``wandb.log`` call: Trainer's ``WandbCallback`` logs each ``on_log``
with its keys renamed ``train/<key>`` and ``eval/<key>``, renamed back here, at the step ``train/global_step``), and
the ``run``/``config`` records (TrainingArguments merged with the model config, ``peft_config``), for the facts.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainwatch.history import Facts, objective_from_args
from trainwatch.logs import LogReadError
from trainwatch.logs.source import Entry, LoggedRun, as_step, is_number
from trainwatch.logs.trainer_state import (
    hyperparameters_from_args,
    lora_hyperparameters,
    planned_steps,
    vocab_size_from_config,
)

FILE_HEADER = struct.Struct("<4sHB")
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
RECORD_HEADER = struct.Struct("<IHB")
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_TYPE_CRC = [zlib.crc32(bytes([t])) for t in range(LAST + 1)]
STEP_KEYS = ("train/global_step", "trainer/global_step")
"""The step a history record belongs to: Trainer's (``WandbCallback`` defines it as the step metric), Lightning's
``WandbLogger``'s; else W&B's own ``_step`` counter."""
PREFIXES = (("train/", ""), ("eval/", "eval_"), ("test/", "test_"))
"""``WandbCallback``'s ``rewrite_logs``, undone: ``train/loss`` was Trainer's ``loss``, ``eval/loss`` its ``eval_loss``."""


def read_wandb_run(path: str | os.PathLike[str]) -> LoggedRun:
    """Read a run's ``.wandb`` file; :class:`LogReadError` when it is not one or wandb is not installed."""
    path = Path(path)
    try:
        from google.protobuf.message import DecodeError
        from wandb.proto import wandb_internal_pb2
    except ImportError as error:
        raise LogReadError(
            f"{path}: reading a W&B run needs the wandb package ({error}): pip install 'trainwatch-hf[wandb]'"
        ) from None
    try:
        data = path.read_bytes()
    except OSError as error:
        raise LogReadError(f"{path}: cannot read ({error.strerror or error})") from None
    if len(data) < FILE_HEADER.size or FILE_HEADER.unpack_from(data)[:2] != (IDENT, MAGIC):
        raise LogReadError(f"{path}: not a W&B transaction log (no :W&B header)")
    if FILE_HEADER.unpack_from(data)[2] != VERSION:
        raise LogReadError(f"{path}: W&B transaction log version {data[6]}, not {VERSION}: written by a newer wandb")
    reader = _Records(data)
    history: list[Entry] = []
    config: dict[str, Any] = {}
    undecodable, finished = 0, False
    for payload in reader:
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(payload)
        except DecodeError:
            undecodable += 1
            continue
        kind = record.WhichOneof("record_type")
        if kind == "history":
            entry = _entry(record.history)
            if entry is not None:
                history.append(entry)
        elif kind in ("run", "config"):
            _update(config, record.run.config if kind == "run" else record.config)
        elif kind == "exit":
            finished = True
    notes = reader.notes(path)
    if undecodable:
        notes.append(f"{path}: skipped {undecodable} record(s) that are not decodable")
    if not finished:
        notes.append(f"{path}: no exit record: the run crashed or is still running (read up to its last record)")
    if not history:
        notes.append(f"{path}: no history record (the run logged nothing)")
    return LoggedRun(history, _facts(config), notes)


class _Records:
    """The records of a LevelDB-format log, each CRC-checked: iterate for the payloads, then ask :meth:`notes`."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.damaged_blocks = 0
        self.cut_at: int | None = None

    def __iter__(self) -> Iterator[bytes]:
        data, pos, pieces = self.data, FILE_HEADER.size, None
        while pos < len(data):
            room = BLOCK - pos % BLOCK
            if room < RECORD_HEADER.size:  # the block's tail is padding
                pos += room
                continue
            if pos + RECORD_HEADER.size > len(data):
                self.cut_at = pos
                return
            checksum, length, kind = RECORD_HEADER.unpack_from(data, pos)
            start, end = pos + RECORD_HEADER.size, pos + RECORD_HEADER.size + length
            if kind == 0 and length == 0 and not any(data[pos : pos + room]):  # zeros to the block's end
                pos += room
                continue
            if end > len(data) and end - pos <= room and kind <= LAST:
                self.cut_at = pos
                return
            if kind > LAST or end - pos > room or zlib.crc32(data[start:end], _TYPE_CRC[kind]) != checksum:
                self.damaged_blocks += 1  # nothing in the rest of this block can be trusted: on to the next one
                pos += room
                pieces = None
                continue
            pos = end
            piece = data[start:end]
            if kind == FULL:
                pieces = None
                yield piece
            elif kind == FIRST:
                pieces = [piece]
            elif pieces is not None:  # a middle or last piece whose first was read
                pieces.append(piece)
                if kind == LAST:
                    yield b"".join(pieces)
                    pieces = None
        if pieces is not None:
            self.cut_at = len(data)

    def notes(self, path: Path) -> list[str]:
        notes = []
        if self.damaged_blocks:
            notes.append(
                f"{path}: {self.damaged_blocks} damaged block(s) (CRC mismatch or bad record header): "
                "the rest of each block skipped"
            )
        if self.cut_at is not None:
            notes.append(
                f"{path}: cut off mid-record at byte {self.cut_at} (the run stopped mid-write): read up to there"
            )
        return notes


def _entry(history: Any) -> Entry | None:
    """One ``wandb.log`` call as Trainer's ``on_log`` saw it, or None when it carries no number."""
    values: dict[str, float] = {}
    for item in history.item:
        key = item.key or "/".join(item.nested_key)
        try:
            value = json.loads(item.value_json)  # wandb writes NaN and Infinity as Python's json does
        except (ValueError, RecursionError):
            continue
        if is_number(value):
            values[key] = value
    step = next((as_step(values[k]) for k in STEP_KEYS if k in values), None)
    if step is None:
        step = history.step.num if history.HasField("step") else None
    logs = {_trainer_key(k): v for k, v in values.items() if not k.startswith("_") and k not in STEP_KEYS}
    return (step, logs) if logs and step is not None and as_step(step) is not None else None


def _trainer_key(key: str) -> str:
    for prefix, ours in PREFIXES:
        if key.startswith(prefix):
            return ours + key[len(prefix) :]
    return key


def _update(config: dict[str, Any], record: Any) -> None:
    """Apply a config record's updates, each item's value as JSON."""
    for item in record.update:
        key = item.key or "/".join(item.nested_key)
        try:
            value = json.loads(item.value_json)
        except (ValueError, RecursionError):
            continue
        config[key] = value
    for item in record.remove:
        config.pop(item.key or "/".join(item.nested_key), None)


def _facts(config: dict[str, Any]) -> Facts:
    """TrainingArguments (merged with the model config by ``WandbCallback``) and the peft adapter's r and alpha."""
    params = hyperparameters_from_args(config)
    adapters = config.get("peft_config")
    if isinstance(adapters, dict):
        adapter = next((a for a in adapters.values() if isinstance(a, dict)), adapters)
        params.update(lora_hyperparameters(adapter))
    return Facts(
        vocab_size=vocab_size_from_config(config),
        hyperparameters=params,
        max_steps=planned_steps(params),
        objective=objective_from_args(config),
    )
