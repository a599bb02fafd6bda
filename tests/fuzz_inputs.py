"""Generated and mutated log files for fuzzing the readers, driven by a ``random.Random`` (hypothesis or a seed).

Random bytes alone would only ever test the CRC check, so the event files are built the way writers build them
(TFRecord framing with real CRCs around hand-encoded ``Event`` protobufs, in every scalar encoding) and then
damaged at one of three depths: the bytes of the file (CRCs now fail), the payload of one record with its CRC
recomputed (the protobuf decoder meets garbage), or the values (NaN, huge steps, odd tags). trainer_state.json
documents get the same treatment: valid documents, then wrong types, odd numbers, broken JSON, broken UTF-8.
W&B transaction logs are built the same way (LevelDB log framing with real CRCs, records split across blocks,
around ``wandb_internal.Record`` protobufs made with wandb's own classes), MLflow stores as real SQLite databases
with MLflow's tables (and as file store runs), LLaMA-Factory logs and Lightning CSVs as their writers write them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sqlite3
import struct
import tempfile
import zlib
from collections.abc import Callable

from trainwatch.logs.tensorboard import masked_crc

TAGS = [
    "train/loss",
    "train/grad_norm",
    "train/learning_rate",
    "eval/loss",
    "loss",
    "eval_loss",
    "train/epoch",
    "args/text_summary",
    "",
    "train/loss\x00",
    "é/loss",
]
ODD_NUMBERS = [0.0, -0.0, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf, 2**31, -(2**63), 2**64, 10**30]


# -- protobuf, the few fields an Event needs ------------------------------------------------------------------------
def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, wire: int, payload: bytes | int) -> bytes:
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(payload)  # type: ignore[arg-type]
    if wire == 2:
        return key + varint(len(payload)) + payload  # type: ignore[arg-type]
    return key + payload  # type: ignore[operator]


def f32(value: float) -> bytes:
    """A float32, as a writer stores it: values beyond float32's range become inf."""
    if math.isfinite(value) and abs(value) > 3.4e38:
        value = math.copysign(math.inf, value)
    return struct.pack("<f", value)


def scalar_value(rng: random.Random, tag: str, value: float) -> bytes:
    """A ``Summary.Value`` in one of the encodings writers use."""
    name = field(1, 2, tag.encode("utf-8"))
    plugin = field(9, 2, field(1, 2, field(1, 2, b"scalars")))
    kind = rng.randrange(7)
    if kind == 0:  # simple_value (torch, TF1)
        return name + field(2, 5, f32(value))
    if kind == 1:  # rank-0 float tensor in tensor_content (TF2, torch new_style)
        return name + plugin + field(8, 2, field(1, 0, 1) + field(2, 2, b"") + field(4, 2, f32(value)))
    if kind == 2:  # double_val, packed
        return name + plugin + field(8, 2, field(1, 0, 2) + field(6, 2, struct.pack("<d", value)))
    if kind == 3:  # float_val, not packed
        return name + plugin + field(8, 2, field(1, 0, 1) + field(5, 5, f32(value)))
    if kind == 4:  # int64_val
        number = int(value) if math.isfinite(value) and abs(value) < 2**62 else rng.randrange(-(2**63), 2**63)
        return name + plugin + field(8, 2, field(1, 0, 9) + field(10, 0, number))
    if kind == 5:  # a text summary (TensorBoardCallback's args)
        text = json.dumps({"learning_rate": value if math.isfinite(value) else 1.0})
        meta = field(9, 2, field(1, 2, field(1, 2, b"text")))
        return name + meta + field(8, 2, field(1, 0, 7) + field(8, 2, text.encode()))
    return name + plugin + field(8, 2, field(1, 0, 14) + field(4, 2, f32(value)[2:]))  # bfloat16


def event(rng: random.Random, step: int, tag: str, value: float) -> bytes:
    summary = field(5, 2, field(1, 2, scalar_value(rng, tag, value)))
    return field(1, 1, struct.pack("<d", 1.7e9 + step)) + field(2, 0, step) + summary


def record(payload: bytes) -> bytes:
    """TFRecord framing: length, its masked CRC, the payload, its masked CRC."""
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", masked_crc(header)) + payload + struct.pack("<I", masked_crc(payload))


def event_file(rng: random.Random) -> list[bytes]:
    """The payloads of a plausible event file: a version record, scalars of a run, perhaps a restart."""
    payloads = [field(1, 1, struct.pack("<d", 1.7e9)) + field(3, 2, b"brain.Event:2")]
    step = rng.choice([0, 1, 10**6, 2**40])
    for _ in range(rng.randrange(0, 40)):
        step += rng.choice([1, 1, 1, 0, 5, -3])
        tag = rng.choice(TAGS[:4]) if rng.random() < 0.8 else rng.choice(TAGS)
        value = rng.choice(ODD_NUMBERS) if rng.random() < 0.1 else rng.uniform(0, 10)
        payloads.append(event(rng, step, tag, value))
        if rng.random() < 0.03:  # a restarted writer: SessionLog.START
            payloads.append(field(2, 0, step) + field(7, 2, field(1, 0, 1)))
    return payloads


# -- damage -------------------------------------------------------------------------------------------------------
def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(6)
        at = rng.randrange(len(data) + 1)
        if kind == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del data[at:]
        elif kind == 2:
            data[at:at] = rng.randbytes(rng.randrange(1, 32))
        elif kind == 3:
            del data[at : at + rng.randrange(1, 64)]
        elif kind == 4:
            data[at:at] = data[at : at + rng.randrange(1, 64)]
        else:
            data[at : at + 8] = rng.choice(
                [b"\xff" * 8, b"\x00" * 8, struct.pack("<Q", 2**63), struct.pack("<Q", 2**40)]
            )
    return bytes(data)


def tensorboard_bytes(rng: random.Random) -> bytes:
    """An event file: valid, damaged at the byte level, or valid framing around damaged payloads."""
    payloads = event_file(rng)
    depth = rng.randrange(4)
    if depth == 0:
        return b"".join(map(record, payloads))
    if depth == 1:
        return mutate_bytes(rng, b"".join(map(record, payloads)))
    if depth == 2:
        hit = {rng.randrange(len(payloads)) for _ in range(rng.randrange(1, 4))}
        return b"".join(record(mutate_bytes(rng, p) if i in hit else p) for i, p in enumerate(payloads))
    return rng.randbytes(rng.randrange(0, 200))


def _odd_value(rng: random.Random) -> object:
    return rng.choice(
        [
            None,
            True,
            False,
            "1.0",
            "NaN",
            "",
            [],
            {},
            [1.0],
            {"loss": 1.0},
            -1,
            2**70,
            -(2**70),
            *ODD_NUMBERS,
        ]
    )


def trainer_state_document(rng: random.Random) -> bytes:
    """A trainer_state.json: valid, with wrong types and odd numbers inside, or broken as JSON or as UTF-8."""
    history: list[object] = []
    step = rng.choice([0, 1, 1000])
    for _ in range(rng.randrange(0, 40)):
        step += rng.choice([1, 1, 0, 10, -5])
        entry: dict[str, object] = {"step": step, "epoch": step / 100}
        if rng.random() < 0.8:
            entry.update(loss=rng.uniform(0, 5), grad_norm=rng.uniform(0, 3), learning_rate=rng.uniform(0, 1e-3))
        else:
            entry.update(eval_loss=rng.uniform(0, 5))
        for _ in range(rng.randrange(0, 3) if rng.random() < 0.3 else 0):
            entry[rng.choice(["step", "loss", "grad_norm", "learning_rate", "eval_loss", "epoch"])] = _odd_value(rng)
        if rng.random() < 0.03:
            entry = rng.choice([None, 1, "entry", [entry]])  # type: ignore[assignment]
        history.append(entry)
    document: object = {"global_step": step, "max_steps": step, "log_history": history, "num_train_epochs": 3}
    if rng.random() < 0.05:
        document = rng.choice([history, {"log_history": _odd_value(rng)}, {}, None, "text", 3])
    text = json.dumps(document, allow_nan=True)  # Trainer writes NaN/Infinity bare, as Python's json does
    damage = rng.randrange(6)
    if damage == 0:
        text = text[: rng.randrange(len(text) + 1)]
    elif damage == 1:
        return mutate_bytes(rng, text.encode())
    elif damage == 2:
        return text.encode("utf-8") + b"\xff\xfe"
    elif damage == 3:
        text = "[" * rng.randrange(1, 5000) + "]" * rng.randrange(0, 5000)  # deep nesting
    return text.encode("utf-8")


def _records(rng: random.Random, payloads: list[bytes]) -> list[bytes]:
    """Some payloads damaged, their framing (CRCs) still right: the decoder itself meets garbage."""
    hit = {rng.randrange(len(payloads)) for _ in range(rng.randrange(1, 4))} if payloads else set()
    return [mutate_bytes(rng, p) if i in hit else p for i, p in enumerate(payloads)]


def _damaged(rng: random.Random, valid: Callable[[bool], bytes]) -> bytes:
    """A file valid, with damaged payloads (``valid(True)``), damaged at the byte level, or random bytes."""
    depth = rng.randrange(4)
    if depth == 0:
        return valid(False)
    if depth == 1:
        return valid(True)
    if depth == 2:
        return mutate_bytes(rng, valid(False))
    return rng.randbytes(rng.randrange(0, 200))


def _log_values(rng: random.Random, keys: list[str]) -> list[tuple[int, dict[str, object]]]:
    """A run's log calls: steps that mostly rise, values mostly plausible, some odd."""
    step, calls = rng.choice([0, 1, 1000]), []
    for _ in range(rng.randrange(0, 40)):
        step += rng.choice([1, 1, 1, 0, 10, -5])
        names = rng.sample(keys, rng.randrange(1, len(keys) + 1))
        calls.append((step, {k: rng.uniform(0, 5) if rng.random() < 0.85 else _odd_value(rng) for k in names}))
    return calls


# -- W&B: LevelDB log framing around wandb_internal.Record protobufs -------------------------------------------------
def leveldb_log(payloads: list[bytes]) -> bytes:
    """wandb's transaction log: a ``:W&B`` header, then 32 KiB blocks of CRC-32-framed records, split as needed."""
    out = bytearray(struct.pack("<4sHB", b":W&B", 0xBEE1, 0))
    for payload in payloads:
        first = True
        while True:
            room = 32768 - len(out) % 32768
            if room < 7:
                out += bytes(room)
                continue
            piece, payload = payload[: room - 7], payload[room - 7 :]
            kind = (1 if not payload else 2) if first else (4 if not payload else 3)
            out += struct.pack("<IHB", zlib.crc32(piece, zlib.crc32(bytes([kind]))), len(piece), kind) + piece
            first = False
            if not payload:
                break
    return bytes(out)


def wandb_log(rng: random.Random) -> bytes:
    """A run's .wandb file as Trainer's WandbCallback leaves it: config, history, perhaps an exit record."""
    from wandb.proto import wandb_internal_pb2 as pb

    def record(**fields: object) -> bytes:
        message = pb.Record()
        for name, items in fields.items():
            for key, value in items:  # type: ignore[attr-defined]
                item = getattr(message, name).update.add() if name != "history" else message.history.item.add()
                item.key, item.value_json = key, value
        return message.SerializeToString()

    def as_json(value: object) -> str:
        return json.dumps(value) if rng.random() < 0.97 else rng.choice(["{", "NaN", "-Infinity", "[1", '"x"', ""])

    config = [
        ("learning_rate", as_json(rng.choice([2e-4, 1.0, _odd_value(rng)]))),
        ("vocab_size", as_json(64)),
        ("max_steps", as_json(rng.choice([40, -1, 2**70]))),
        ("peft_config", as_json({"default": {"r": 8}})),
    ]
    if rng.random() < 0.1:  # a value longer than a block: split into first, middle and last pieces
        config.append(("notes", json.dumps("x" * rng.randrange(32768, 80000))))
    payloads = [record(config=config)]
    keys = ["train/loss", "train/grad_norm", "train/learning_rate", "eval/loss", "train/epoch", "_runtime", "odd"]
    for step, values in _log_values(rng, keys):
        items = [(k, as_json(v)) for k, v in values.items()] + [("train/global_step", as_json(step))]
        payloads.append(record(history=items))
    if rng.random() < 0.7:
        exit_record = pb.Record()
        exit_record.exit.exit_code = 0
        payloads.append(exit_record.SerializeToString())
    return _damaged(rng, lambda damage: leveldb_log(_records(rng, payloads) if damage else payloads))


# -- MLflow: a SQLite store with MLflow's tables, a file store run's metric file -------------------------------------
MLFLOW_SCHEMA = """
CREATE TABLE experiments (experiment_id INTEGER NOT NULL PRIMARY KEY, name VARCHAR(256) NOT NULL,
    artifact_location VARCHAR(256), lifecycle_stage VARCHAR(32), creation_time BIGINT, last_update_time BIGINT);
CREATE TABLE runs (run_uuid VARCHAR(32) NOT NULL PRIMARY KEY, name VARCHAR(250), status VARCHAR(9),
    start_time BIGINT, end_time BIGINT, lifecycle_stage VARCHAR(20), experiment_id INTEGER);
CREATE TABLE metrics ("key" VARCHAR(250) NOT NULL, value FLOAT NOT NULL, timestamp BIGINT NOT NULL,
    run_uuid VARCHAR(32) NOT NULL, step BIGINT DEFAULT '0' NOT NULL, is_nan BOOLEAN DEFAULT '0' NOT NULL,
    PRIMARY KEY ("key", timestamp, step, run_uuid, value, is_nan));
CREATE TABLE params ("key" VARCHAR(250) NOT NULL, value VARCHAR(8000) NOT NULL, run_uuid VARCHAR(32) NOT NULL,
    PRIMARY KEY ("key", run_uuid));
"""
"""The tables and columns of MLflow's SQLite store that the reader reads (``mlflow db`` schema, MLflow 3)."""
MLFLOW_KEYS = ["loss", "grad_norm", "learning_rate", "eval_loss", "epoch", "train_runtime"]


def mlflow_store(rng: random.Random) -> bytes:
    """An MLflow SQLite store: runs of the default experiment with metrics as the SQL store writes them (NaN as 0
    with is_nan, inf as the largest double), params as strings, and odd rows that SQLite's loose types allow."""

    def build(damage: bool) -> bytes:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "mlflow.db")
            db = sqlite3.connect(path)
            db.executescript(MLFLOW_SCHEMA)
            db.execute("INSERT INTO experiments VALUES (0, 'Default', '', 'active', 0, 0)")
            for run in range(rng.randrange(0, 3)):
                stage = "deleted" if rng.random() < 0.1 else "active"
                status = rng.choice(["FINISHED", "RUNNING", "FAILED", None])
                db.execute(
                    "INSERT INTO runs VALUES (?, ?, ?, ?, 0, ?, 0)", (f"r{run}", f"run {run}", status, run, stage)
                )
                timestamp = 1_700_000_000_000
                for step, values in _log_values(rng, MLFLOW_KEYS):
                    timestamp += rng.choice([1, 1, 0, 100, -50])
                    for key, value in values.items():
                        row = _mlflow_metric(rng, value, damage)
                        db.execute(
                            "INSERT OR IGNORE INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
                            (
                                key,
                                row[0],
                                timestamp,
                                f"r{run}",
                                step
                                if not damage or rng.random() < 0.9
                                else rng.choice(["3", 2.5, None, b"\x01", 2**62]),
                                row[1],
                            ),
                        )
                for key, value in (
                    ("learning_rate", "0.0002"),
                    ("vocab_size", rng.choice(["64", "x", "1e400"])),
                    ("max_steps", rng.choice(["40", "-1", "None"])),
                    ("fp16", "False"),
                ):
                    db.execute("INSERT INTO params VALUES (?, ?, ?)", (key, value, f"r{run}"))
            db.commit()
            db.close()
            with open(path, "rb") as f:
                return f.read()

    return _damaged(rng, build)


def _mlflow_metric(rng: random.Random, value: object, damage: bool) -> tuple[object, int]:
    """``(value, is_nan)`` as MLflow's SQL store writes a value; with damage, what SQLite's loose types let in."""
    if damage and rng.random() < 0.2:
        return rng.choice(["text", b"\x00", None, 2**63 - 1]), rng.choice([0, 1, 2])
    number = value if isinstance(value, float) else rng.uniform(0, 5)
    if math.isnan(number):
        return 0.0, 1
    return (math.copysign(1.7976931348623157e308, number) if math.isinf(number) else number), 0


def mlflow_metric_file(rng: random.Random) -> bytes:
    """A file store run's metric file: ``timestamp value step`` lines, appended, perhaps cut off or damaged."""
    lines = []
    timestamp = 1_700_000_000_000
    for step, values in _log_values(rng, ["loss"]):
        timestamp += rng.choice([1, 100, -5])
        value = values["loss"]
        lines.append(f"{timestamp} {value if isinstance(value, float) else rng.uniform(0, 5)} {step}")
        if rng.random() < 0.05:
            lines.append(rng.choice([f"{timestamp} 1.0", "1 2 3 4 5", "x y z", f"{timestamp} nan {2**70}", ""]))
    return _damaged(rng, lambda damage: ("\n".join(lines) + "\n").encode())


# -- LLaMA-Factory's trainer_log.jsonl, Lightning's metrics.csv ------------------------------------------------------
def llamafactory_log(rng: random.Random) -> bytes:
    """Lines as LogCallback writes them (json.dumps, None values dropped), appended across a resume, cut off."""
    lines = []
    for step, values in _log_values(rng, ["loss", "eval_loss", "lr", "epoch", "accuracy"]):
        values = {"current_steps": step if rng.random() < 0.95 else _odd_value(rng), "total_steps": 40, **values}
        lines.append(json.dumps(values, allow_nan=True))
    text = "\n".join(lines) + "\n"
    if rng.random() < 0.3:
        text = text[: rng.randrange(len(text) + 1)]  # the run stopped mid-write
    return _damaged(rng, lambda damage: text.encode("utf-8") + (b"\xff{" if damage else b""))


def lightning_csv(rng: random.Random) -> bytes:
    """A CSVLogger metrics.csv: sparse rows, train, lr and val apart, the user's own column names."""
    header = rng.sample(
        [
            "epoch",
            "step",
            "train_loss_step",
            "train_loss_epoch",
            "val_loss",
            "lr-AdamW",
            "grad_2.0_norm_total",
            "train/loss",
            "my_metric",
        ],
        rng.randrange(1, 9),
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for step, values in _log_values(rng, header):
        row = {k: v for k, v in values.items() if rng.random() < 0.5} | ({"step": step} if "step" in header else {})
        writer.writerow([row.get(k, "") if rng.random() < 0.98 else 'x,"y' for k in header])
    return _damaged(rng, lambda damage: buffer.getvalue().encode() + (b"1,2,3,4,5,6,7,8,9,10\n\x00" if damage else b""))


GENERATORS: dict[str, Callable[[random.Random], bytes]] = {
    "tensorboard": tensorboard_bytes,
    "trainer_state": trainer_state_document,
    "wandb": wandb_log,
    "mlflow": mlflow_store,
    "mlflow_file_store": mlflow_metric_file,
    "llamafactory": llamafactory_log,
    "lightning": lightning_csv,
}


# -- the contract -------------------------------------------------------------------------------------------------
FILE_NAMES = {
    "tensorboard": "events.out.tfevents.1700000000.host.1.0",
    "trainer_state": "trainer_state.json",
    "wandb": "run-fuzz.wandb",
    "mlflow": "mlflow.db",
    "mlflow_file_store": "mlruns/0/fuzzrun/metrics/loss",
    "llamafactory": "trainer_log.jsonl",
    "lightning": "metrics.csv",
}
MLFLOW_RUN_META = "run_id: fuzzrun\nexperiment_id: '0'\nlifecycle_stage: active\nstatus: 3\n"


def exercise(kind: str, data: bytes, directory: str) -> str:
    """Feed ``data`` to the reader of ``kind``, through the run-source interface ``analyze`` uses, and replay what
    it read through the engine, as ``analyze`` does.

    Returns "read" (entries, perhaps with notes) or "refused" (a one-line :class:`LogReadError` naming the file).
    Any other exception is a bug in trainwatch and propagates.
    """
    from pathlib import Path

    from trainwatch.analysis import find_runs, open_run
    from trainwatch.engine import Engine
    from trainwatch.logs import LogReadError

    path = os.path.join(directory, FILE_NAMES[kind])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if kind == "mlflow_file_store":  # the run folder: meta.yaml beside metrics/
        path = os.path.join(directory, "mlruns", "0", "fuzzrun")
        with open(os.path.join(path, "meta.yaml"), "w") as f:
            f.write(MLFLOW_RUN_META)
    outcome = "read"
    for source in find_runs(Path(path)):
        try:
            run = open_run(source)
        except LogReadError as error:
            message = str(error)
            assert "\n" not in message and message.startswith(path), message
            outcome = "refused"
            continue
        entries = list(run.entries())
        assert all(isinstance(n, str) and n for n in run.notes)
        run.curves()
        engine = Engine(facts=run.facts).replay(entries)
        for finding in engine.findings:
            json.dumps(finding.to_dict(), allow_nan=False)  # the report can always be written as strict JSON
    _analyze(path)
    return outcome


def _analyze(path: str) -> None:
    """The whole post-hoc pipeline on the same file: ``trainwatch.analyze``, its text and its JSON."""
    from trainwatch.analysis import analyze
    from trainwatch.logs import LogReadError

    try:
        for report in analyze(path):
            report.format_text()
            json.dumps(report.to_dict(), allow_nan=False)  # what --json prints is strict JSON
    except LogReadError as error:
        assert "\n" not in str(error), str(error)
