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

from trainwatch.logs.tensorboard import FileStats, event_files, masked_crc, read_events, read_run

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
    assert len(run.values) == steps
    steps_seen, values = run.curves()["loss"]
    assert values[steps_seen == 6_789][0] == 1e6
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
    curves = run.curves()
    for name in ("loss", "grad_norm", "learning_rate", "eval_loss"):
        np.testing.assert_allclose(curves[name][1], [0.25, 0.5, 0.75, 1.0, 1.25])
        assert list(curves[name][0]) == [1, 2, 3, 4, 5]


def test_tensorboardx_writer(tmp_path):
    tensorboardX = pytest.importorskip("tensorboardX")
    with tensorboardX.SummaryWriter(logdir=str(tmp_path)) as writer:
        writer.add_text("args", '{"learning_rate": 0.5}')
        for step in range(1, 11):
            writer.add_scalar("train/loss", 10.0 - step, step)
        writer.add_scalar("eval/loss", float("nan"), 10)
    run = read_run(event_files(tmp_path))
    steps, values = run.curves()["loss"]
    assert list(steps) == list(range(1, 11)) and list(values) == [10.0 - s for s in range(1, 11)]
    assert math.isnan(run.curves()["eval_loss"][1][0])
    assert run.texts["args"] == '{"learning_rate": 0.5}'


def test_nan_and_inf_are_kept(tmp_path):
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        for step, value in enumerate([1.0, float("nan"), float("inf"), -float("inf")], 1):
            writer.add_scalar("train/loss", value, step)
    values = [v for _, _, v in scalars(only_file(tmp_path))]
    assert values[0] == 1.0 and math.isnan(values[1]) and values[2] == math.inf and values[3] == -math.inf


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
    assert len(run.curves()["loss"][1]) == 10 and len(run.curves()["learning_rate"][1]) == 10
    assert len(run.values) == 30  # the cut record is the last train/epoch: every signal value is there
    assert any("last record truncated" in n for n in run.notes)


def test_flipped_data_byte_costs_one_record_only(tmp_path):
    """TensorBoard's own reader stops at the first bad record; we skip it and read on."""
    path = only_file(write_hf_like(tmp_path, range(1, 11)))
    offsets = _record_offsets(path)
    data = bytearray(path.read_bytes())
    data[offsets[11] + 14] ^= 0xFF  # inside the data of step 3's train/loss (after version, 2 texts, 2 steps)
    path.write_bytes(bytes(data))
    run = read_run([path])
    assert len(run.values) == 29 and 3 not in run.curves()["loss"][0]
    assert any("1 record(s) whose data CRC does not match" in n for n in run.notes)


def test_record_that_is_not_an_event_is_skipped(tmp_path):
    path = only_file(write_hf_like(tmp_path, range(1, 4)))
    garbage = b"\xff\xff\xff"  # an unterminated varint key: not protobuf, though its CRC is right
    header = struct.pack("<Q", len(garbage))
    record = header + struct.pack("<I", masked_crc(header)) + garbage + struct.pack("<I", masked_crc(garbage))
    path.write_bytes(path.read_bytes() + record + path.read_bytes()[_record_offsets(path)[3] :])
    run = read_run([path])
    assert any("not decodable" in n for n in run.notes)
    assert len(run.curves()["loss"][1]) == 6  # read on past the bad record: steps 1-3 and again 1-3


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
    steps, values = run.curves()["loss"]
    assert list(steps) == [1, 2, 3, 4, 5, 6, 7, 8] and list(values) == [1.0] * 5 + [2.0] * 3
    assert any("SessionLog.START" in n and "dropped 5" in n for n in run.notes)


def test_files_of_a_directory_are_stitched_in_timestamp_order_and_resumed_steps_replaced(tmp_path):
    """A resume from checkpoint-5 after a crash at step 8: steps 6-8 are logged twice, the later ones win."""
    first = only_file(write_hf_like(tmp_path / "a", range(1, 9)))
    second = only_file(write_hf_like(tmp_path / "b", range(6, 13), loss=lambda s: 100.0 + s))
    # names decide the order, not the listing: give the later writer the later timestamp, listed first by name
    os.rename(second, tmp_path / "events.out.tfevents.1700000500.aaa.1.0")
    os.rename(first, tmp_path / "events.out.tfevents.1700000000.zzz.1.0")
    run = read_run(event_files(tmp_path))
    steps, values = run.curves()["loss"]
    assert list(steps) == list(range(1, 13))
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
    assert len(run.curves()["loss"][1]) == 10
    assert list(run.curves()["eval_loss"][1]) == [pytest.approx(0.123)]


def test_overlong_step_varint_is_an_undecodable_record(tmp_path):
    """Found by the fuzzer: a step varint longer than 10 bytes on the fast path."""
    path = only_file(write_hf_like(tmp_path, range(1, 3)))
    data = b"\x09" + bytes(8) + b"\x10" + b"\xff" * 11 + bytes(10)
    header = struct.pack("<Q", len(data))
    bad = header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))
    path.write_bytes(path.read_bytes() + bad)
    run = read_run([path])
    assert len(run.curves()["loss"][1]) == 2
    assert any("1 record(s) that are not decodable" in n for n in run.notes)



def test_steps_going_back_without_a_restart_marker_are_kept_in_write_order(tmp_path):
    """One writer reused for a second run (a notebook cell run twice): TensorBoard keeps both, and so do we."""
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        for step in [*range(1, 6), *range(1, 4)]:
            writer.add_scalar("train/loss", 1.0, step)
    run = read_run(event_files(tmp_path))
    assert list(run.curves()["loss"][0]) == [1, 2, 3, 4, 5, 1, 2, 3]
