"""The TensorBoard reader on files written by the real writers, and on the damage real files carry.

Every file here is written by a real writer (torch's SummaryWriter, tensorboardX, TensorBoard's own
EventFileWriter fed TF2-style tensor summaries); damage is made by truncating or flipping bytes of such files.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from torch.utils.tensorboard import SummaryWriter

from trainwatch.logs.tensorboard import (
    CHUNK_BYTES,
    EVAL_SIGNAL,
    SIGNAL_TAGS,
    SIGNALS,
    FileStats,
    TensorBoardRun,
    event_files,
    masked_crc,
    read_events,
    read_run,
)

HF_TAGS = ("train/loss", "train/grad_norm", "train/learning_rate")


def write_hf_like(logdir: Path, steps: range, *, evals: int = 0, loss=lambda s: 4.0 / s) -> Path:
    """What HF's TensorBoardCallback writes: args/model_config texts, then per step train/* (+ eval/* every evals)."""
    with SummaryWriter(log_dir=str(logdir)) as writer:
        writer.add_text("args", '{"learning_rate": 0.003, "max_grad_norm": 1.0, "warmup_steps": 0}')
        writer.add_text("model_config", '{"vocab_size": 64, "model_type": "llama"}')
        for step in steps:
            writer.add_scalar("train/loss", loss(step), step)
            writer.add_scalar("train/grad_norm", 1.0, step)
            writer.add_scalar("train/learning_rate", 1e-3, step)
            writer.add_scalar("train/epoch", step / 100, step)
            if evals and step % evals == 0:
                writer.add_scalar("eval/loss", loss(step) + 0.5, step)
                writer.add_scalar("eval/runtime", 0.1, step)
                writer.add_scalar("train/epoch", step / 100, step)
    return logdir


def only_file(logdir: Path) -> Path:
    (path,) = event_files(logdir)
    return path


def scalars(path: Path) -> list[tuple[int, str, float]]:
    return [e for e in read_events(path, FileStats(str(path)), {}, {}) if e[1] is not None]


def kept(run: TensorBoardRun) -> dict[str, tuple[list[int], list[float]]]:
    """Every value the run streams (pass 2), per signal: what its decimated curves are made from."""
    series: dict[str, tuple[list[int], list[float]]] = {name: ([], []) for name in SIGNALS}
    for step, signal, value in run.values():
        series[SIGNALS[signal]][0].append(step)
        series[SIGNALS[signal]][1].append(value)
    return series


def test_reads_every_value_of_a_torch_log_as_tensorboard_does(tmp_path):
    path = only_file(write_hf_like(tmp_path, range(1, 41), evals=10))
    ours = scalars(path)
    accumulator = event_accumulator.EventAccumulator(str(path), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    theirs = sorted((e.step, tag, e.value) for tag in accumulator.Tags()["scalars"] for e in accumulator.Scalars(tag))
    assert sorted(ours) == theirs
    assert len(ours) == 40 * 4 + 4 * 3


def test_groups_values_into_the_entries_trainer_logged(tmp_path):
    run = read_run(event_files(write_hf_like(tmp_path, range(1, 21), evals=10)))
    entries = list(run.entries())
    # simple_value is a float32: TensorBoard keeps 7 digits of what Trainer logged
    assert entries[9] == (10, pytest.approx({"loss": 0.4, "grad_norm": 1.0, "learning_rate": 1e-3}, rel=1e-6))
    assert entries[10] == (10, pytest.approx({"eval_loss": 0.9}, rel=1e-6))
    assert len(entries) == 22  # 20 train logs + 2 evaluations, in write order
    assert run.texts["args"].startswith('{"learning_rate"')
    assert '"vocab_size": 64' in run.texts["model_config"]


def test_no_value_is_sampled_away(tmp_path):
    """EventAccumulator's default keeps 10 000 scalars per tag by reservoir sampling; a one-step spike can vanish."""
    steps = 12_000
    writer = EventFileWriter(str(tmp_path))
    for step in range(1, steps + 1):
        value = 1e6 if step == 6_789 else 1.0
        writer.add_event(
            event_pb2.Event(
                step=step,
                summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="train/loss", simple_value=value)]),
            )
        )
    writer.close()
    run = read_run(event_files(tmp_path))
    steps_seen, values = kept(run)["loss"]
    assert len(values) == steps and values[steps_seen.index(6_789)] == 1e6
    steps_drawn, values_drawn = run.curves()["loss"]  # decimated for the plot, but a spike is a bucket's max
    assert len(steps_drawn) < steps and values_drawn[steps_drawn == 6_789][0] == 1e6
    default = event_accumulator.EventAccumulator(str(tmp_path))
    default.Reload()
    assert len(default.Scalars("train/loss")) == 10_000  # the default really samples: ours must not


def _tensor_event(step: int, tag: str, tensor: tensor_pb2.TensorProto, first: bool) -> event_pb2.Event:
    metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    value = summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=metadata if first else None)
    return event_pb2.Event(step=step, wall_time=1.0, summary=summary_pb2.Summary(value=[value]))


def test_tf2_tensor_scalars_in_every_encoding(tmp_path):
    """TF2 writes rank-0 tensors; TF1-style writers send the plugin metadata with a tag's first value only."""
    scalar_shape = tensor_shape_pb2.TensorShapeProto()
    encodings = {
        "train/loss": lambda v: tensor_pb2.TensorProto(dtype=1, tensor_shape=scalar_shape, float_val=[v]),
        "train/grad_norm": lambda v: tensor_pb2.TensorProto(dtype=2, tensor_shape=scalar_shape, double_val=[v]),
        "train/learning_rate": lambda v: tensor_pb2.TensorProto(
            dtype=1, tensor_shape=scalar_shape, tensor_content=struct.pack("<f", v)
        ),
        "eval/loss": lambda v: tensor_pb2.TensorProto(
            dtype=2, tensor_shape=scalar_shape, tensor_content=struct.pack("<d", v)
        ),
    }
    writer = EventFileWriter(str(tmp_path))
    for step in range(1, 6):
        for tag, encode in encodings.items():
            writer.add_event(_tensor_event(step, tag, encode(step / 4), first=step == 1))
    # a histogram-like tensor (rank 1) under a "scalars" tag is not a scalar; an unknown plugin's tensor is ignored
    vector = tensor_pb2.TensorProto(
        dtype=1,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)]),
        float_val=[1, 2, 3],
    )
    writer.add_event(_tensor_event(6, "train/loss", vector, first=False))
    writer.close()
    run = read_run(event_files(tmp_path))
    series = kept(run)
    for name in ("loss", "grad_norm", "learning_rate", "eval_loss"):
        np.testing.assert_allclose(series[name][1], [0.25, 0.5, 0.75, 1.0, 1.25])
        assert series[name][0] == [1, 2, 3, 4, 5]


def test_tensorboardx_writer(tmp_path):
    tensorboardX = pytest.importorskip("tensorboardX")
    with tensorboardX.SummaryWriter(logdir=str(tmp_path)) as writer:
        writer.add_text("args", '{"learning_rate": 0.5}')
        for step in range(1, 11):
            writer.add_scalar("train/loss", 10.0 - step, step)
        writer.add_scalar("eval/loss", float("nan"), 10)
    run = read_run(event_files(tmp_path))
    series = kept(run)
    steps, values = series["loss"]
    assert steps == list(range(1, 11)) and values == [10.0 - s for s in range(1, 11)]
    assert math.isnan(series["eval_loss"][1][0])
    assert run.texts["args"] == '{"learning_rate": 0.5}'


def test_nan_and_inf_are_kept(tmp_path):
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        for step, value in enumerate([1.0, float("nan"), float("inf"), -float("inf")], 1):
            writer.add_scalar("train/loss", value, step)
    values = [v for _, _, v in scalars(only_file(tmp_path))]
    assert values[0] == 1.0 and math.isnan(values[1]) and values[2] == math.inf and values[3] == -math.inf


def accumulator_scalars(path: Path) -> list[tuple[int, str, float]]:
    accumulator = event_accumulator.EventAccumulator(str(path), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    return sorted((e.step, tag, e.value) for tag in accumulator.Tags()["scalars"] for e in accumulator.Scalars(tag))


# a record header (length 20, its masked CRC) that is also text: it will sit inside another record's data
HEADER_AS_TEXT = "\x14" + "\x00" * 7 + "^=)\x15"


def test_a_long_log_read_in_blocks_is_what_tensorboard_reads(tmp_path):
    """Several reads' worth of records, read in bulk: every step varint length (and steps too long for the bulk
    path), a record too long for it, text between the scalars, and a valid-looking header inside a record's data."""
    assert struct.pack("<Q", 20) + struct.pack("<I", masked_crc(struct.pack("<Q", 20))) == HEADER_AS_TEXT.encode()
    steps = [*range(1, 3000), *range(16_300, 16_500), *range(2**21 - 100, 2**21 + 100), 2**28 - 1, 2**28, 2**35 + 1]
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        writer.add_text("args", '{"learning_rate": 0.003}')
        for number, step in enumerate(steps):
            writer.add_scalar("train/loss", 4.0 / (number + 1), step)
            writer.add_scalar("train/grad_norm", 1.0 + number % 7, step)
            writer.add_scalar("train/learning_rate", 1e-3 * (1 - number / len(steps)), step)
            if number % 10 == 0:
                writer.add_scalar("eval/loss", 5.0 / (number + 1), step)
            if number == 1500:
                writer.add_text("notes", "x" * 70_000, step)
            if number == 2000:
                writer.add_text("notes", "x" + HEADER_AS_TEXT + "y" * 30, step)
    path = only_file(tmp_path)
    assert path.stat().st_size > 2 * CHUNK_BYTES
    ours = scalars(path)
    assert sorted(ours) == accumulator_scalars(path)
    assert len(ours) == 3 * len(steps) + len(steps[::10])
    run = read_run([path])
    series = kept(run)
    assert series["loss"][0] == steps and series["eval_loss"][0] == steps[::10]
    assert run.notes == [] and run.records == len(ours) + 4  # the file version and three texts


def test_damage_inside_a_long_log_costs_the_damaged_records_only(tmp_path):
    """In the middle of a long log: a flipped value byte fails its CRC; a record rewritten to another tag, with its
    CRC made right, is a value of that tag, however like its neighbours it looks."""
    path = only_file(write_hf_like(tmp_path, range(1, 3001)))
    data = bytearray(path.read_bytes())
    offsets = _record_offsets(path)
    flipped = offsets[3 + 4 * 1500]  # after the version and 2 texts, 4 a step: loss, grad_norm, lr, epoch
    assert data[flipped + 12 :].startswith(b"\x09")
    length = struct.unpack_from("<Q", data, flipped)[0]
    data[flipped + 12 + length - 1] ^= 0x40  # the float's last byte
    # the last: of a new tag, and no record of its length and step size after it
    for renamed, tag in ((offsets[3 + 4 * 2000], b"train/lozz"), (offsets[3 + 4 * 2999], b"train/loxx")):
        length = struct.unpack_from("<Q", data, renamed)[0]
        payload = bytes(data[renamed + 12 : renamed + 12 + length])
        assert b"train/loss" in payload
        payload = payload.replace(b"train/loss", tag)
        data[renamed + 12 : renamed + 16 + length] = payload + struct.pack("<I", masked_crc(payload))
    path.write_bytes(bytes(data))
    run = read_run([path])
    series = kept(run)
    assert len(series["loss"][1]) == 3000 - 3 and len(series["grad_norm"][1]) == 3000
    assert run.other_tags == {"train/epoch": 3000, "train/lozz": 1, "train/loxx": 1}
    assert sum("1 record(s) whose data CRC does not match" in n for n in run.notes) == 1


# -- damage ------------------------------------------------------------------------------------------------------------
def _record_offsets(path: Path) -> list[int]:
    data, offsets, pos = path.read_bytes(), [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 16 + struct.unpack_from("<Q", data, pos)[0]
    return offsets


def test_truncated_last_record_is_noted_and_the_rest_read(tmp_path):
    path = only_file(write_hf_like(tmp_path, range(1, 11)))
    path.write_bytes(path.read_bytes()[:-7])
    run = read_run([path])
    series = kept(run)
    assert len(series["loss"][1]) == 10 and len(series["learning_rate"][1]) == 10
    assert sum(len(v) for _, v in series.values()) == 30  # the cut record is the last train/epoch: all values there
    assert sum("last record truncated" in n for n in run.notes) == 1  # from pass 1 only, though both read it


def test_flipped_data_byte_costs_one_record_only(tmp_path):
    """TensorBoard's own reader stops at the first bad record; we skip it and read on."""
    path = only_file(write_hf_like(tmp_path, range(1, 11)))
    offsets = _record_offsets(path)
    data = bytearray(path.read_bytes())
    data[offsets[11] + 14] ^= 0xFF  # inside the data of step 3's train/loss (after version, 2 texts, 2 steps)
    path.write_bytes(bytes(data))
    run = read_run([path])
    series = kept(run)
    assert sum(len(v) for _, v in series.values()) == 29 and 3 not in series["loss"][0]
    assert sum("1 record(s) whose data CRC does not match" in n for n in run.notes) == 1


def test_record_that_is_not_an_event_is_skipped(tmp_path):
    path = only_file(write_hf_like(tmp_path, range(1, 4)))
    garbage = b"\xff\xff\xff"  # an unterminated varint key: not protobuf, though its CRC is right
    header = struct.pack("<Q", len(garbage))
    record = header + struct.pack("<I", masked_crc(header)) + garbage + struct.pack("<I", masked_crc(garbage))
    path.write_bytes(path.read_bytes() + record + path.read_bytes()[_record_offsets(path)[3] :])
    run = read_run([path])
    assert any("not decodable" in n for n in run.notes)
    assert len(kept(run)["loss"][1]) == 6  # read on past the bad record: steps 1-3 and again 1-3


def test_bad_length_crc_stops_that_file_with_a_note(tmp_path):
    path = only_file(write_hf_like(tmp_path, range(1, 11)))
    offsets = _record_offsets(path)
    data = bytearray(path.read_bytes())
    data[offsets[20] + 9] ^= 0x01  # the length CRC of the 21st record
    path.write_bytes(bytes(data))
    stats = FileStats(str(path))
    list(read_events(path, stats, {}, {}))
    assert stats.unframed_from == offsets[20] and stats.unread_bytes == len(data) - offsets[20]
    assert any("length CRC mismatch" in n for n in stats.notes())


def test_empty_file_is_a_note(tmp_path):
    path = tmp_path / "events.out.tfevents.1700000000.host"
    path.touch()
    run = read_run([path])
    assert run.records == 0 and any("empty event file" in n for n in run.notes)


def test_session_start_drops_earlier_values_at_later_steps(tmp_path):
    writer = EventFileWriter(str(tmp_path))
    for step in range(1, 11):
        writer.add_event(
            event_pb2.Event(
                step=step,
                summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="train/loss", simple_value=1.0)]),
            )
        )
    writer.add_event(event_pb2.Event(step=6, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    for step in range(6, 9):
        writer.add_event(
            event_pb2.Event(
                step=step,
                summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag="train/loss", simple_value=2.0)]),
            )
        )
    writer.close()
    run = read_run(event_files(tmp_path))
    steps, values = kept(run)["loss"]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8] and values == [1.0] * 5 + [2.0] * 3
    assert any("SessionLog.START" in n and "dropped 5" in n for n in run.notes)


def test_files_of_a_directory_are_stitched_in_timestamp_order_and_resumed_steps_replaced(tmp_path):
    """A resume from checkpoint-5 after a crash at step 8: steps 6-8 are logged twice, the later ones win."""
    first = only_file(write_hf_like(tmp_path / "a", range(1, 9)))
    second = only_file(write_hf_like(tmp_path / "b", range(6, 13), loss=lambda s: 100.0 + s))
    # names decide the order, not the listing: give the later writer the later timestamp, listed first by name
    os.rename(second, tmp_path / "events.out.tfevents.1700000500.aaa.1.0")
    os.rename(first, tmp_path / "events.out.tfevents.1700000000.zzz.1.0")
    run = read_run(event_files(tmp_path))
    steps, values = kept(run)["loss"]
    assert steps == list(range(1, 13))
    np.testing.assert_allclose(values, [4.0 / s for s in range(1, 6)] + [100.0 + s for s in range(6, 13)], rtol=1e-6)
    assert any("replaced 9 value(s)" in n for n in run.notes)  # 3 steps x loss, grad_norm, learning_rate


def test_evaluation_only_writer_replaces_only_evaluations(tmp_path):
    """trainer.evaluate() after train() opens a new writer in the same directory: it must not erase train logs."""
    first = only_file(write_hf_like(tmp_path / "a", range(1, 11), evals=10))
    with SummaryWriter(log_dir=str(tmp_path / "b")) as writer:
        writer.add_scalar("eval/loss", 0.123, 10)
    os.rename(first, tmp_path / "events.out.tfevents.1700000000.h.1.0")
    os.rename(only_file(tmp_path / "b"), tmp_path / "events.out.tfevents.1700000900.h.1.1")
    run = read_run(event_files(tmp_path))
    series = kept(run)
    assert len(series["loss"][1]) == 10
    assert series["eval_loss"][1] == [pytest.approx(0.123)]


def test_overlong_step_varint_is_an_undecodable_record(tmp_path):
    """Found by the fuzzer: a step varint longer than 10 bytes on the fast path."""
    path = only_file(write_hf_like(tmp_path, range(1, 3)))
    data = b"\x09" + bytes(8) + b"\x10" + b"\xff" * 11 + bytes(10)
    header = struct.pack("<Q", len(data))
    bad = header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))
    path.write_bytes(path.read_bytes() + bad)
    run = read_run([path])
    assert len(kept(run)["loss"][1]) == 2
    assert any("1 record(s) that are not decodable" in n for n in run.notes)


def test_steps_going_back_without_a_restart_marker_are_kept_in_write_order(tmp_path):
    """One writer reused for a second run (a notebook cell run twice): TensorBoard keeps both, and so do we."""
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        for step in [*range(1, 6), *range(1, 4)]:
            writer.add_scalar("train/loss", 1.0, step)
    run = read_run(event_files(tmp_path))
    assert kept(run)["loss"][0] == [1, 2, 3, 4, 5, 1, 2, 3]


# -- the two passes against the sequential algorithm they replace ----------------------------------------------------
def reference(files: list[Path]) -> tuple[list[tuple[int, dict[str, float]]], list[str]]:
    """Entries and restart/resume notes as the one-pass reader made them: every value kept in a list, each marker
    dropping from it, in order, what it covers. Memory O(steps), but plainly right."""
    kept_values: list[tuple[int, int, int, float]] = []  # (file, step, signal, value)
    restarts, resumes = [], []
    plugins: dict[str, str | None] = {}
    for number, path in enumerate(files):
        seen_train = seen_eval = False
        for step, tag, value in read_events(path, FileStats(str(path)), plugins, {}):
            if tag is None:  # SessionLog.START: every earlier value at steps >= step
                left = [v for v in kept_values if v[1] < step]
                if len(left) < len(kept_values):
                    restarts.append(
                        f"{path}: writer restarted (SessionLog.START) at step {step}; dropped "
                        f"{len(kept_values) - len(left)} earlier value(s) at steps >= {step}, as TensorBoard does"
                    )
                kept_values = left
                continue
            signal = SIGNAL_TAGS.get(tag)
            if signal is None:
                continue
            is_eval = signal == EVAL_SIGNAL
            if number and not (seen_eval if is_eval else seen_train):  # a later file's first train or eval value
                left = [
                    v
                    for v in kept_values
                    if not (v[0] < number and v[1] >= step and (not is_eval or v[2] == EVAL_SIGNAL))
                ]
                if len(left) < len(kept_values):
                    resumes.append(
                        f"{path} logs again from step {step} (a resume): it replaced "
                        f"{len(kept_values) - len(left)} value(s) an earlier writer had logged at those steps"
                    )
                kept_values = left
            seen_eval, seen_train = seen_eval or is_eval, seen_train or not is_eval
            kept_values.append((number, step, signal, value))
    entries: list[tuple[int, dict[str, float]]] = []
    for _, step, signal, value in kept_values:
        last = entries[-1] if entries else None
        is_eval = signal == EVAL_SIGNAL
        if last is None or last[0] != step or ("eval_loss" in last[1]) != is_eval or SIGNALS[signal] in last[1]:
            entries.append((step, {}))
        entries[-1][1][SIGNALS[signal]] = value
    return entries, restarts + resumes


def write_events(folder: Path, timestamp: int, items: list[tuple[int, str | None, float]]) -> Path:
    """One event file by TensorBoard's EventFileWriter: ``(step, tag, value)`` scalars, tag None a SessionLog.START.

    Named with ``timestamp`` so that a run's files sort in the order the test means."""
    writer = EventFileWriter(str(folder / "tmp"))
    for step, tag, value in items:
        if tag is None:
            event = event_pb2.Event(step=step, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
        else:
            value_pb = summary_pb2.Summary.Value(tag=tag, simple_value=value)
            event = event_pb2.Event(step=step, summary=summary_pb2.Summary(value=[value_pb]))
        writer.add_event(event)
    writer.close()
    target = folder / f"events.out.tfevents.{timestamp}.host.1.0"
    only_file(folder / "tmp").rename(target)
    (folder / "tmp").rmdir()
    return target


def train(steps: range, value: float, *, eval_every: int = 0) -> list[tuple[int, str | None, float]]:
    items: list[tuple[int, str | None, float]] = []
    for step in steps:
        items += [(step, "train/loss", value + step), (step, "train/grad_norm", 1.0), (step, "train/epoch", 0.1)]
        if eval_every and step % eval_every == 0:
            items.append((step, "eval/loss", value + step + 0.5))
    return items


def assert_streams_like_reference(files: list[Path]) -> TensorBoardRun:
    run = read_run(files)
    entries, notes = reference(files)
    assert list(run.entries()) == entries
    assert [n for n in run.notes if "SessionLog.START" in n or "(a resume)" in n] == notes
    assert list(run.entries()) == entries  # a second pass 2 is the same stream, and counts the same once
    assert [n for n in run.notes if "SessionLog.START" in n or "(a resume)" in n] == notes
    return run


def test_streaming_matches_the_sequential_reader_on_a_restart_mid_file(tmp_path):
    items = [(0, None, 0.0), *train(range(1, 21), 1.0, eval_every=5), (12, None, 0.0)]
    items += train(range(12, 31), 100.0, eval_every=5) + [(25, None, 0.0)] + train(range(25, 28), 200.0)
    run = assert_streams_like_reference([write_events(tmp_path, 1_700_000_000, items)])
    # the start at step 0 drops nothing and is no news; the restart at 12 drops 9 steps x 2 signals + 2 evals
    assert [n for n in run.notes if "SessionLog.START" in n] == [
        (
            f"{run.files[0]}: writer restarted (SessionLog.START) at step 12; dropped 20 earlier value(s) at steps "
            ">= 12, as TensorBoard does"
        ),
        (
            f"{run.files[0]}: writer restarted (SessionLog.START) at step 25; dropped 14 earlier value(s) at steps "
            ">= 25, as TensorBoard does"
        ),
    ]


def test_streaming_matches_the_sequential_reader_on_resumes_across_files(tmp_path):
    """Real SummaryWriter files of a resumed run, then an evaluation-only writer; and a later writer that restarts
    mid-file across what both it and an earlier file wrote."""
    first = only_file(write_hf_like(tmp_path / "a", range(1, 31), evals=10))
    second = only_file(write_hf_like(tmp_path / "b", range(21, 41), evals=10, loss=lambda s: 100.0 + s))
    with SummaryWriter(log_dir=str(tmp_path / "c")) as writer:
        writer.add_scalar("eval/loss", 0.5, 40)
        writer.add_scalar("eval/loss", 0.25, 35)
    third = only_file(tmp_path / "c")
    fourth = write_events(
        tmp_path, 1_700_000_900, [*train(range(36, 39), 7.0), (33, None, 0.0), *train(range(33, 45), 9.0, eval_every=4)]
    )
    files = []
    for number, path in enumerate((first, second, third)):
        files.append(path.rename(tmp_path / f"events.out.tfevents.{1_700_000_000 + 100 * number}.host.1.0"))
    files.append(fourth)
    assert event_files(tmp_path) == files
    run = assert_streams_like_reference(files)
    # b replaces a's steps 21-30 (3 signals) and its eval at 30; c the eval b made at 40; d, from step 36, b's train
    # values at 36-40 and c's eval at 40; then d's restart at 33 drops what is left at steps >= 33 before it
    resumes = [n for n in run.notes if "(a resume)" in n]
    assert [n.split(": it ")[1].split(" value")[0] for n in resumes] == ["replaced 31", "replaced 1", "replaced 16"]
    assert sum("dropped 16 earlier value(s)" in n for n in run.notes) == 1
    series = kept(run)
    assert series["loss"][0] == list(range(1, 45)) and series["eval_loss"][0] == [10, 20, 30, 36, 40, 44]
    assert "eval/loss" not in run.other_tags and run.other_tags["train/epoch"] > 0


def test_stream_stops_where_pass_one_stopped_reading(tmp_path):
    """A file still being written: pass 2 reads the bytes pass 1 read, not what was appended since."""
    path = only_file(write_hf_like(tmp_path, range(1, 11)))
    run = read_run([path])
    with open(path, "ab") as f:
        f.write(path.read_bytes()[_record_offsets(path)[3] :])  # the writer went on: steps 1-10 again
    assert [step for step, _ in run.entries()] == list(range(1, 11))


def test_unreadable_file_is_noted_once(tmp_path):
    path = only_file(write_hf_like(tmp_path, range(1, 4)))
    missing = tmp_path / "events.out.tfevents.1.gone"
    run = read_run([missing, path])
    assert list(run.entries()) and run.records
    assert [n for n in run.notes if "could not be read" in n] == [
        f"{missing}: could not be read (No such file or directory)"
    ]
