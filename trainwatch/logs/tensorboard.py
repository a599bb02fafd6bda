"""TensorBoard event files, read completely and defensively, without TensorFlow.

An event file is a TFRecord stream: ``uint64 length, uint32 masked CRC-32C(length), data, uint32 masked
CRC-32C(data)``, each ``data`` a serialized ``tensorflow.Event``. We decode the few protobuf fields a scalar needs by
hand (a varint walker over bytes is several times faster than building full protobuf objects) and check every CRC
with google-crc32c (C-backed). Unlike TensorBoard's ``EventAccumulator`` nothing is sampled away: a one-step spike in
a million-step run is still there. Unlike TensorBoard's own reader, one damaged record costs that record only.

Scalars come in every encoding writers use: ``simple_value`` (TF1, torch, tensorboardX) and rank-0 tensors
(``tensor_content``, ``float_val``, ``double_val``, ``int_val``, ``int64_val``, ``half_val``) of a tag whose first-seen
plugin is ``scalars`` (TF2, torch ``new_style``; TF1-style writers send the metadata with a tag's first value only).

A run (:func:`read_run`) is read in memory that does not grow with its length, so that a million-step log costs no
more than a short one. A restart (``SessionLog.START``) or a resume (a later file logging steps again) replaces
values written *before* it, so one pass would have to hold every value until the end. Instead the run is read
twice: pass 1 collects only the few markers (restarts, each later file's first train and eval value), pass 2
streams the values and drops each one a later marker covers. Curves for plotting are kept as a bounded min/max
decimation (:class:`Decimator`) of what pass 2 streams.
"""

from __future__ import annotations

import math
import os
import re
import struct
from array import array
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
import numpy as np

from trainwatch.curves import Decimator
from trainwatch.history import EVAL_LOSS, GRAD_NORM, LEARNING_RATE, LOSS

SIGNALS = (LOSS, GRAD_NORM, LEARNING_RATE, EVAL_LOSS)
SIGNAL_TAGS: dict[str, int] = {
    "train/loss": 0,
    "train/grad_norm": 1,
    "train/learning_rate": 2,
    "eval/loss": 3,
    # Trainer before it prefixed its tags (transformers < 4.2) wrote its log keys as they are.
    "loss": 0,
    "grad_norm": 1,
    "learning_rate": 2,
    "eval_loss": 3,
}
"""Tags that carry Trainer's per-step signals, as indexes into :data:`SIGNALS`. ``train/train_loss`` is the mean
over the whole run, logged once at the end: not a per-step loss, so deliberately absent."""
EVAL_SIGNAL = 3
TEXT_TAGS = ("args", "model_config")
"""Text summaries TensorBoardCallback writes at train begin: TrainingArguments and the model config, as JSON."""

CHUNK_BYTES = 1 << 18
"""Bytes read at a time. Larger reads are no faster, and buffers of a MiB or more fragment the heap: a long run's
peak memory then grows with its length though nothing is kept."""
_MASK_DELTA = 0xA282EAD8
_FLOAT = struct.Struct("<f")
_DOUBLE = struct.Struct("<d")
_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")
_SESSION_START = 1
# tensorflow.DataType values of the numeric dtypes a scalar may have, with how tensor_content packs them.
_CONTENT_FORMAT = {
    1: "<f",
    2: "<d",
    3: "<i",
    4: "<B",
    5: "<h",
    6: "<b",
    9: "<q",
    10: "<?",
    19: "<e",
    17: "<H",
    22: "<I",
    23: "<Q",
}
_BFLOAT16 = 14


class Undecodable(ValueError):
    """A record whose CRC matched but whose bytes are not an Event we can read."""


def masked_crc(data: bytes) -> int:
    """TFRecord's CRC: CRC-32C rotated and offset, so a CRC of data that itself holds CRCs stays informative."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def file_timestamp(path: str | os.PathLike[str]) -> int:
    """The creation time writers put in the name (``events.out.tfevents.<seconds>.<host>...``); 0 if absent."""
    match = re.search(r"tfevents\.(\d+)", os.path.basename(path))
    return int(match.group(1)) if match else 0


def is_event_file(path: str | os.PathLike[str]) -> bool:
    """TensorBoard's own test: the name contains ``tfevents``."""
    return "tfevents" in os.path.basename(path)


def event_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The event files directly in ``directory``, in the order they were written (their names' timestamps)."""
    files = [p for p in Path(directory).iterdir() if p.is_file() and is_event_file(p)]
    return sorted(files, key=lambda p: (file_timestamp(p), _natural(p.name)))


def _natural(name: str) -> list[tuple[int, str]]:
    """Sort key that puts ``...pid.9`` before ``...pid.10``, as the writers' counters mean."""
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", name)]


# -- protobuf wire format ---------------------------------------------------------------------------------------------
def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise Undecodable("varint longer than 10 bytes")


def _int64(value: int) -> int:
    """A varint read as protobuf's int64: its low 64 bits, two's complement."""
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def _skip(data: bytes, pos: int, wire: int) -> int:
    if wire == 0:
        return _varint(data, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 2:
        length, pos = _varint(data, pos)
        return pos + length
    if wire == 5:
        return pos + 4
    raise Undecodable(f"wire type {wire}")


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field, wire, value_or_start, end)`` for each field of the message in ``data[start:end]``.

    For a length-delimited field ``value_or_start..end`` is its payload; for a varint, the value; else its offset.
    """
    pos = start
    while pos < end:
        key = data[pos]
        pos += 1
        if key >= 0x80:
            key, pos = _varint(data, pos - 1)
        wire = key & 7
        if wire == 2:
            length = data[pos]
            pos += 1
            if length >= 0x80:
                length, pos = _varint(data, pos - 1)
            if pos + length > end:
                raise Undecodable("field runs past its message")
            yield key >> 3, 2, pos, pos + length
            pos += length
        elif wire == 0:
            value, pos = _varint(data, pos)
            yield key >> 3, 0, value, pos
        else:
            following = _skip(data, pos, wire)
            yield key >> 3, wire, pos, following
            pos = following
    if pos != end:
        raise Undecodable("message ends inside a field")


def _plugin_name(data: bytes, start: int, end: int) -> str | None:
    for number, wire, a, b in _fields(data, start, end):
        if number == 1 and wire == 2:  # SummaryMetadata.plugin_data
            for inner, inner_wire, c, d in _fields(data, a, b):
                if inner == 1 and inner_wire == 2:  # PluginData.plugin_name
                    return data[c:d].decode("utf-8", "replace")
    return None


def _packed(data: bytes, start: int, end: int, wire: int, fmt: str) -> float:
    """The first element of a repeated numeric field, packed (wire 2) or not."""
    if wire == 2:
        if fmt in "fd":
            return struct.unpack_from("<" + fmt, data, start)[0]
        return float(_varint(data, start)[0])
    if wire == 5:
        return _FLOAT.unpack_from(data, start)[0]
    if wire == 1:
        return _DOUBLE.unpack_from(data, start)[0]
    return float(start)  # a varint: _fields gave its value


def _signed(value: float, bits: int) -> float:
    """Varints carry negative integers as their two's complement."""
    value = int(value)
    return float(value - (1 << bits) if value >= 1 << (bits - 1) else value)


def _tensor(data: bytes, start: int, end: int) -> tuple[str, float | str | None]:
    """Decode a TensorProto: ``("scalar", number)``, ``("text", first string)`` or ``("other", None)``."""
    dtype, elements, content, number, text = 0, 1, None, None, None
    for num, wire, a, b in _fields(data, start, end):
        if num == 1 and wire == 0:
            dtype = a
        elif num == 2 and wire == 2:  # TensorShapeProto: a scalar has one element (rank 0, or every dim 1)
            for dim, dim_wire, c, d in _fields(data, a, b):
                if dim == 2 and dim_wire == 2:
                    elements *= next((v for f, w, v, _ in _fields(data, c, d) if f == 1 and w == 0), 0)
        elif num == 4 and wire == 2:
            content = data[a:b]
        elif number is None and num == 5:
            number = _packed(data, a, b, wire, "f")
        elif number is None and num == 6:
            number = _packed(data, a, b, wire, "d")
        elif number is None and num == 7:
            number = _signed(_packed(data, a, b, wire, "i"), 64)
        elif number is None and num == 10:
            number = _signed(_packed(data, a, b, wire, "q"), 64)
        elif number is None and num == 11:
            number = _packed(data, a, b, wire, "b")
        elif number is None and num == 13:  # half_val: float16 bits in an int32
            number = struct.unpack("<e", struct.pack("<H", int(_packed(data, a, b, wire, "i")) & 0xFFFF))[0]
        elif text is None and num == 8 and wire == 2:
            text = data[a:b].decode("utf-8", "replace")
    if text is not None:
        return "text", text
    if elements != 1:
        return "other", None
    if content:
        if dtype == _BFLOAT16:
            return "scalar", struct.unpack("<f", b"\x00\x00" + content[:2])[0]
        fmt = _CONTENT_FORMAT.get(dtype)
        if fmt is None or struct.calcsize(fmt) != len(content):
            return "other", None
        return "scalar", float(struct.unpack(fmt, content)[0])
    if number is not None:
        return "scalar", float(number)
    return "other", None


# -- records ----------------------------------------------------------------------------------------------------------
@dataclass
class FileStats:
    """What reading one event file met, for the report's notes."""

    path: str
    records: int = 0
    scalars: int = 0
    truncated_bytes: int = 0
    bad_data_crc: int = 0
    undecodable: int = 0
    unframed_from: int | None = None
    """Byte offset of a length CRC mismatch: from there on the records cannot be delimited."""
    unread_bytes: int = 0
    read_bytes: int = 0
    """Bytes read from the file: a second pass reads no further, so a file still being written gives both passes
    the same records."""

    def notes(self) -> list[str]:
        name = self.path
        if self.records == 0 and not (self.bad_data_crc or self.undecodable):
            if self.unframed_from is None and not self.truncated_bytes:
                return [f"{name}: empty event file"]
            return [
                f"{name}: no valid record at its start: not a TensorBoard event file, or cut off or damaged "
                "before its first record was complete"
            ]
        notes = []
        if self.truncated_bytes:
            notes.append(
                f"{name}: last record truncated ({self.truncated_bytes} bytes; the writer was stopped mid-write)"
            )
        if self.bad_data_crc:
            notes.append(
                f"{name}: skipped {self.bad_data_crc} record(s) whose data CRC does not match (corrupted bytes)"
            )
        if self.undecodable:
            notes.append(f"{name}: skipped {self.undecodable} record(s) that are not decodable Events")
        if self.unframed_from is not None:
            notes.append(
                f"{name}: length CRC mismatch at byte {self.unframed_from}: the remaining {self.unread_bytes} bytes "
                "cannot be split into records and were not read"
            )
        return notes


SESSION_START = None
"""The tag :func:`read_events` yields for a ``SessionLog.START`` (a restarted writer) at its step."""


def read_events(
    path: str | os.PathLike[str],
    stats: FileStats,
    plugins: dict[str, str | None],
    texts: dict[str, str],
    *,
    limit: int | None = None,
    quiet: bool = False,
) -> Generator[tuple[int, str | None, float], bool | None, None]:
    """``(step, tag, value)`` for every scalar of one file in write order, and ``(step, SESSION_START, nan)``.

    ``plugins`` maps each tag to the plugin named with its first value (shared across a run's files, as
    TensorBoard does); ``texts`` receives the first value of each tag in :data:`TEXT_TAGS`. Damage is counted in
    ``stats``. At most ``limit`` bytes are read. Framing, CRC checks and the common scalar layout are decoded in
    this one loop: it runs once per record, a million times for a long run, so it avoids every call it can.

    ``quiet`` (or sending ``True`` into the generator) yields only ``SESSION_START`` from then on: every record is
    still checked and counted, but its scalars are neither unpacked nor yielded. :func:`read_run`'s first pass
    needs a file's first train and eval values, then only its restarts.
    """
    tag_names: dict[bytes, str] = {}
    valid_headers: dict[bytes, int] = {}  # a header seen valid needs no second CRC: most records share a length
    layouts: dict[bytes, str] = {}  # the bytes of a valid one-scalar layout (all but time, step, value) -> its tag
    crc = google_crc32c.value
    unpack_crc = _CRC.unpack_from
    unpack_float = _FLOAT.unpack_from
    records = scalars = 0
    remaining = (1 << 63) if limit is None else limit
    with open(path, "rb") as f:
        buffer, pos, consumed = b"", 0, 0
        try:
            while True:
                if len(buffer) - pos < 12:
                    more = f.read(min(CHUNK_BYTES, remaining))
                    if not more:
                        stats.truncated_bytes += len(buffer) - pos
                        return
                    remaining -= len(more)
                    consumed += pos
                    buffer, pos = buffer[pos:] + more, 0
                    continue
                header = buffer[pos : pos + 12]
                length = valid_headers.get(header)
                if length is None:
                    length, length_crc = _HEADER.unpack(header)
                    if masked_crc(header[:8]) != length_crc:
                        stats.unframed_from = consumed + pos
                        unread = min(remaining, os.fstat(f.fileno()).st_size - f.tell())
                        stats.unread_bytes = len(buffer) - pos + unread
                        return
                    valid_headers[header] = length
                end = pos + 16 + length
                if end > len(buffer):
                    more = f.read(min(max(CHUNK_BYTES, end - len(buffer)), remaining))
                    if not more:
                        stats.truncated_bytes += len(buffer) - pos
                        return
                    remaining -= len(more)
                    consumed += pos
                    buffer, pos = buffer[pos:] + more, 0
                    continue
                data = buffer[pos + 12 : end - 4]
                pos = end
                checksum = crc(data)
                if (((checksum >> 15) | (checksum << 17)) + _MASK_DELTA) & 0xFFFFFFFF != unpack_crc(buffer, end - 4)[0]:
                    stats.bad_data_crc += 1
                    continue
                records += 1
                try:
                    # Fast path, the layout writers use for one simple_value: wall_time, step, summary{value{tag, v}}.
                    if 20 < length and data[0] == 0x09 and data[9] == 0x10:
                        step = data[10]
                        at = 11
                        if step >= 0x80:  # steps below 2**21 inline (a call per record costs), longer by _varint
                            byte = data[11]
                            step = (step & 0x7F) | (byte & 0x7F) << 7
                            at = 12
                            if byte >= 0x80:
                                byte = data[12]
                                step |= (byte & 0x7F) << 14
                                at = 13
                                if byte >= 0x80:
                                    step, at = _varint(data, 10)
                                    step = _int64(step)
                        layout = data[at : length - 4]
                        tag = layouts.get(layout)
                        if tag is None:
                            tag = _one_scalar_layout(layout, tag_names, plugins)
                            if tag is not None:
                                layouts[layout] = tag
                        if tag is not None:
                            scalars += 1
                            if not quiet and (yield step, tag, unpack_float(data, length - 4)[0]):
                                quiet = True
                            continue
                    found = _decode_event(data, plugins, texts, tag_names)
                except (Undecodable, IndexError, struct.error, ValueError):
                    stats.undecodable += 1
                    continue
                for item in found:
                    scalars += item[1] is not None
                    if (not quiet or item[1] is SESSION_START) and (yield item):
                        quiet = True
        finally:
            stats.records += records
            stats.scalars += scalars
            stats.read_bytes += consumed + len(buffer)


def _one_scalar_layout(layout: bytes, tag_names: dict[bytes, str], plugins: dict[str, str | None]) -> str | None:
    """The tag if ``layout`` is exactly ``summary{value{tag, simple_value}}`` (value bytes left out), else None."""
    size = len(layout) + 4  # the float's 4 bytes complete the message
    if not (
        11 <= size < 130
        and layout[0] == 0x2A
        and layout[1] == size - 2
        and layout[2] == 0x0A
        and layout[3] == size - 4
        and layout[4] == 0x0A
        and layout[5] == size - 11
        and layout[-1] == 0x15
    ):
        return None
    tag_bytes = layout[6:-1]
    tag = tag_names.get(tag_bytes)
    if tag is None:
        tag = tag_names[tag_bytes] = tag_bytes.decode("utf-8", "replace")
    plugins.setdefault(tag, "scalars")
    return tag


def _decode_event(
    data: bytes, plugins: dict[str, str | None], texts: dict[str, str], tag_names: dict[bytes, str]
) -> list[tuple[int, str | None, float]]:
    step, summary, session = 0, None, None
    for number, wire, a, b in _fields(data, 0, len(data)):
        if number == 2 and wire == 0:
            step = _int64(a)
        elif number == 5 and wire == 2:
            summary = (a, b)
        elif number == 7 and wire == 2:
            session = (a, b)
    found: list[tuple[int, str | None, float]] = []
    if session is not None:
        status = next((v for n, w, v, _ in _fields(data, *session) if n == 1 and w == 0), 0)
        if status == _SESSION_START:
            found.append((step, SESSION_START, math.nan))
    if summary is None:
        return found
    for number, wire, a, b in _fields(data, *summary):
        if number != 1 or wire != 2:
            continue
        tag_bytes, simple, tensor, metadata = b"", None, None, None
        for num, w, c, d in _fields(data, a, b):
            if num == 1 and w == 2:
                tag_bytes = data[c:d]
            elif num == 2 and w == 5:
                simple = _FLOAT.unpack_from(data, c)[0]
            elif num == 8 and w == 2:
                tensor = (c, d)
            elif num == 9 and w == 2:
                metadata = (c, d)
        tag = tag_names.get(tag_bytes)
        if tag is None:
            tag = tag_names[tag_bytes] = tag_bytes.decode("utf-8", "replace")
        if tag not in plugins:
            plugins[tag] = _plugin_name(data, *metadata) if metadata else ("scalars" if simple is not None else None)
        if simple is not None:
            found.append((step, tag, simple))
        elif tensor is not None and plugins[tag] in ("scalars", "text"):
            kind, value = _tensor(data, *tensor)
            if kind == "scalar" and plugins[tag] == "scalars":
                found.append((step, tag, value))  # type: ignore[arg-type]
            elif kind == "text":
                name = tag.removesuffix("/text_summary")  # torch and tensorboardX add this suffix
                if name in TEXT_TAGS and name not in texts:
                    texts[name] = value  # type: ignore[assignment]
    return found


# -- a run: its files stitched into one series, in two passes ---------------------------------------------------------
_NEVER = 1 << 63
"""A step beyond int64: the limit of a signal that no later marker covers."""
_ALL = frozenset(range(len(SIGNALS)))
_EVAL_ONLY = frozenset((EVAL_SIGNAL,))
_FEED_VALUES = 1 << 12
"""Kept values buffered before they are handed to the curves' decimators in one numpy step (small, for the same
reason as :data:`CHUNK_BYTES`)."""


@dataclass(frozen=True)
class _Marker:
    """A point of the run that drops values written before ``boundary`` at steps >= ``step``, of ``signals``.

    ``boundary`` numbers the places where what is covered changes: the start of each file and each
    ``SessionLog.START``, in the order pass 2 meets them. A restart covers everything before itself; a later file's
    first train value (a resume) covers the earlier files, all signals; its first eval value their evaluations.
    """

    boundary: int
    step: int
    signals: frozenset[int]
    path: str
    restart: bool

    def note(self, dropped: int) -> str:
        if self.restart:
            return (
                f"{self.path}: writer restarted (SessionLog.START) at step {self.step}; "
                f"dropped {dropped} earlier value(s) at steps >= {self.step}, as TensorBoard does"
            )
        return (
            f"{self.path} logs again from step {self.step} (a resume): it replaced {dropped} value(s) an earlier "
            "writer had logged at those steps"
        )


@dataclass
class TensorBoardRun:
    """One run's signals, streamed in write order with restarts and resumes resolved, in memory that does not grow
    with the run's length.

    A restart or a resume replaces values written *before* it, so a single pass would have to keep every value
    until the end to know which survive (~100 bytes per logged step). Instead :func:`read_run` reads the files
    twice. Pass 1 (done by :func:`read_run`) finds the markers, few as the files and restarts are: each
    ``SessionLog.START`` and each later file's first train and first eval value; it also collects the text
    summaries, the damage notes and the record counts. Pass 2 (:meth:`values`, :meth:`entries`) reads the files
    again and keeps a value unless a marker after it covers it, which is what replaying the markers in order would
    leave. Per-signal minima of the steps of the markers still ahead make that test one comparison per value.

    :attr:`notes` (restarts and resumes, which pass 2 counts), :attr:`other_tags` and :meth:`curves` are complete
    once a pass 2 has run to its end; each iteration is a new pass 2 over the same bytes.
    """

    files: list[str]
    texts: dict[str, str] = field(default_factory=dict)
    other_tags: dict[str, int] = field(default_factory=dict)
    """Scalar tags that are none of Trainer's signals, with their number of values."""
    notes: list[str] = field(default_factory=list)
    records: int = 0
    scalars: int = 0
    _read_notes: list[str] = field(default_factory=list, init=False, repr=False)
    _read_bytes: list[int] = field(default_factory=list, init=False, repr=False)
    _file_boundaries: list[int] = field(default_factory=list, init=False, repr=False)
    _markers: list[_Marker] = field(default_factory=list, init=False, repr=False)
    _limits: list[list[int]] = field(default_factory=list, init=False, repr=False)
    """Per boundary b: for each signal, the lowest step a marker at b or later covers."""
    _curves: list[Decimator] = field(default_factory=lambda: [Decimator() for _ in SIGNALS], init=False, repr=False)

    def values(self) -> Iterator[tuple[int, int, float]]:
        """Pass 2: ``(step, signal, value)`` for each value kept, in write order; ``signal`` indexes :data:`SIGNALS`.

        At its end :attr:`notes` gains what each restart and resume dropped (counted only here)."""
        limits, signal_tags = self._limits, SIGNAL_TAGS
        dropped = [0] * len(self._markers)
        problems: list[str] = []
        other_tags: dict[str, int] = {}
        self.other_tags = other_tags
        self._curves = [Decimator() for _ in SIGNALS]
        kept_steps, kept_signals, kept_values = array("q"), array("b"), array("d")
        feed_at = _FEED_VALUES
        plugins: dict[str, str | None] = {}
        for path, size, boundary in zip(self.files, self._read_bytes, self._file_boundaries):
            if not size:  # nothing there, or pass 1 could not open it (already noted)
                continue
            limit = limits[boundary + 1]
            try:
                for step, tag, value in read_events(path, FileStats(path), plugins, {}, limit=size):
                    signal = signal_tags.get(tag)  # type: ignore[arg-type]
                    if signal is None:
                        if tag is SESSION_START:
                            boundary += 1
                            limit = limits[boundary + 1]
                        else:
                            other_tags[tag] = other_tags.get(tag, 0) + 1  # type: ignore[index]
                        continue
                    if step >= limit[signal]:
                        dropped[self._dropped_by(boundary, step, signal)] += 1
                        continue
                    kept_steps.append(step)
                    kept_signals.append(signal)
                    kept_values.append(value)
                    if len(kept_values) == feed_at:
                        self._feed(kept_steps, kept_signals, kept_values)
                    yield step, signal, value
            except OSError as error:  # pass 1 read it: it changed since
                problems.append(f"{path}: could not be read ({error.strerror or error})")
        self._feed(kept_steps, kept_signals, kept_values)
        counted = list(zip(self._markers, dropped))
        self.notes = [
            *self._read_notes,
            *problems,
            *(m.note(n) for m, n in counted if n and m.restart),  # TF writers mark every session: only drops are news
            *(m.note(n) for m, n in counted if n and not m.restart),
        ]

    def _dropped_by(self, boundary: int, step: int, signal: int) -> int:
        """The first marker after ``boundary`` that covers the value: the one that, replayed in order, dropped it."""
        return next(
            i for i, m in enumerate(self._markers) if m.boundary > boundary and step >= m.step and signal in m.signals
        )

    def _feed(self, steps: array, signals: array, values: array) -> None:
        """Hand buffered kept values to each signal's decimator, and empty the buffers."""
        which = np.array(signals, dtype=np.int8)
        all_steps, all_values = np.array(steps, dtype=np.int64), np.array(values, dtype=np.float64)
        for signal, decimator in enumerate(self._curves):
            mine = which == signal
            if mine.any():
                decimator.extend(all_steps[mine], all_values[mine])
        del steps[:], signals[:], values[:]

    def entries(self) -> Iterator[tuple[int, dict[str, float]]]:
        """The run as Trainer's ``on_log`` saw it: one entry per log call (same step, train or eval, no tag twice)."""
        current: dict[str, float] = {}
        current_step, current_eval = None, False
        for step, signal, value in self.values():
            name = SIGNALS[signal]
            is_eval = signal == EVAL_SIGNAL
            if current and (step != current_step or is_eval != current_eval or name in current):
                yield current_step, current  # type: ignore[misc]
                current = {}
            current_step, current_eval = step, is_eval
            current[name] = value
        if current:
            yield current_step, current  # type: ignore[misc]

    def curves(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each signal's ``(steps, values)`` as the last pass 2 streamed them, decimated (see :class:`Decimator`)."""
        return {name: decimator.curve() for name, decimator in zip(SIGNALS, self._curves)}


def read_run(files: Iterable[str | os.PathLike[str]]) -> TensorBoardRun:
    """Pass 1 over a run's event files, in order: what pass 2 needs to stream them as one series.

    Where a later file starts writing a step an earlier file already covered, the training restarted there (a
    resume from a checkpoint): the later values win, as they describe the run that went on. A ``SessionLog.START``
    drops earlier values at steps >= its step, as TensorBoard does. This pass records those markers (few: one per
    restart, two per file), the text summaries, the counts and the damage notes; it unpacks no value once a file's
    first train and eval values are known. Iterate the run's :meth:`~TensorBoardRun.entries` for the values.
    """
    run = TensorBoardRun(files=[str(f) for f in files])
    plugins: dict[str, str | None] = {}
    boundary = -1
    for path in run.files:
        boundary += 1
        start = boundary
        run._file_boundaries.append(start)
        stats = FileStats(path)
        need_train = need_eval = start > 0  # a later file's first values resume over the earlier files
        events = read_events(path, stats, plugins, run.texts, quiet=not need_train)
        request: bool | None = None
        try:
            while True:
                try:
                    step, tag, _ = events.send(request)
                except StopIteration:
                    break
                if tag is SESSION_START:
                    boundary += 1
                    run._markers.append(_Marker(boundary, step, _ALL, path, restart=True))
                    continue
                signal = SIGNAL_TAGS.get(tag)  # type: ignore[arg-type]
                if signal is None:
                    continue
                if signal == EVAL_SIGNAL and need_eval:
                    run._markers.append(_Marker(start, step, _EVAL_ONLY, path, restart=False))
                    need_eval = False
                elif signal != EVAL_SIGNAL and need_train:
                    run._markers.append(_Marker(start, step, _ALL, path, restart=False))
                    need_train = False
                request = not (need_train or need_eval) or None
        except OSError as error:
            run._read_notes.append(f"{path}: could not be read ({error.strerror or error})")
        run._read_bytes.append(stats.read_bytes)
        run.records += stats.records
        run.scalars += stats.scalars
        run._read_notes.extend(stats.notes())

    run._limits = _suffix_minima(run._markers, boundary + 1)
    run.notes = list(run._read_notes)
    return run


def _suffix_minima(markers: list[_Marker], boundaries: int) -> list[list[int]]:
    """For each boundary b (and one past the last): per signal, the lowest step of the markers at b or later."""
    at: dict[int, list[_Marker]] = {}
    for marker in markers:
        at.setdefault(marker.boundary, []).append(marker)
    lowest = [_NEVER] * len(SIGNALS)
    limits = [lowest] * (boundaries + 1)
    for b in range(boundaries - 1, -1, -1):
        if b in at:
            lowest = list(lowest)
            for marker in at[b]:
                for signal in marker.signals:
                    lowest[signal] = min(lowest[signal], marker.step)
        limits[b] = lowest
    return limits
