"""Generated and mutated log files for fuzzing the readers, driven by a ``random.Random`` (hypothesis or a seed).

Random bytes alone would only ever test the CRC check, so the event files are built the way writers build them
(TFRecord framing with real CRCs around hand-encoded ``Event`` protobufs, in every scalar encoding) and then
damaged at one of three depths: the bytes of the file (CRCs now fail), the payload of one record with its CRC
recomputed (the protobuf decoder meets garbage), or the values (NaN, huge steps, odd tags). trainer_state.json
documents get the same treatment: valid documents, then wrong types, odd numbers, broken JSON, broken UTF-8.
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Callable

from trainwatch.logs.tensorboard import masked_crc

TAGS = ["train/loss", "train/grad_norm", "train/learning_rate", "eval/loss", "loss", "eval_loss", "train/epoch",
        "args/text_summary", "", "train/loss\x00", "é/loss"]
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
            data[at : at + 8] = rng.choice([b"\xff" * 8, b"\x00" * 8, struct.pack("<Q", 2**63), struct.pack("<Q", 2**40)])
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
    return rng.choice([
        None, True, False, "1.0", "NaN", "", [], {}, [1.0], {"loss": 1.0}, -1, 2**70, -(2**70),
        *ODD_NUMBERS,
    ])


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


GENERATORS: dict[str, Callable[[random.Random], bytes]] = {
    "tensorboard": tensorboard_bytes,
    "trainer_state": trainer_state_document,
}


# -- the contract -------------------------------------------------------------------------------------------------
FILE_NAMES = {"tensorboard": "events.out.tfevents.1700000000.host.1.0", "trainer_state": "trainer_state.json"}


def exercise(kind: str, data: bytes, directory: str) -> str:
    """Feed ``data`` to the reader of ``kind`` and replay what it read through the engine, as ``analyze`` does.

    Returns "read" (entries, perhaps with notes) or "refused" (a one-line :class:`LogReadError` naming the file).
    Any other exception is a bug in trainwatch and propagates.
    """
    import os

    from trainwatch.engine import Engine
    from trainwatch.logs import LogReadError
    from trainwatch.logs.tensorboard import read_run
    from trainwatch.logs.trainer_state import read_trainer_state

    path = os.path.join(directory, FILE_NAMES[kind])
    with open(path, "wb") as f:
        f.write(data)
    try:
        if kind == "tensorboard":
            run = read_run([path])
            entries, notes, facts = list(run.entries()), run.notes, None
            run.curves()
        else:
            state = read_trainer_state(path)
            entries, notes, facts = list(state.entries()), state.notes, state.facts
    except LogReadError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(path), message
        return "refused"
    assert all(isinstance(n, str) and n for n in notes)
    engine = Engine(facts=facts).replay(entries)
    for finding in engine.findings:
        json.dumps(finding.to_dict(), allow_nan=False)  # the report can always be written as strict JSON
    _analyze(path)
    return "read"


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
