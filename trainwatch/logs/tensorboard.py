"""TensorBoard event files, read completely and defensively, without TensorFlow.

An event file is a TFRecord stream: ``uint64 length, uint32 masked CRC-32C(length), data, uint32 masked
CRC-32C(data)``, each ``data`` a serialized ``tensorflow.Event``. Every CRC is checked. Unlike TensorBoard's
``EventAccumulator`` nothing is sampled away: a one-step spike in a million-step run is still there. Unlike
TensorBoard's own reader, one damaged record costs that record only.

A long log is almost all one kind of record: a scalar written as ``simple_value``, whose bytes are the same for
every value of a tag but for wall time, step and value (a :class:`_Layout`). Those are read in blocks with numpy
over the file's bytes (:class:`EventReader`): their headers found by their form, their CRCs summed from tables (CRC
is linear), their steps and values taken from fixed columns; a million scalars cost a few hundred numpy calls, not
a million Python loops. Every other record (text, tensor scalars, restarts, a tag's first value, damage) is decoded
one at a time by hand: a varint walker over the protobuf fields a scalar needs, several times faster than building
protobuf objects, its CRC by google-crc32c.

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
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

import google_crc32c
import numpy as np

from trainwatch.curves import Decimator
from trainwatch.history import EVAL_LOSS, GRAD_NORM, LEARNING_RATE, LOSS, Signals, tells_steps_per_epoch

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
EPOCH_TAGS = ("train/epoch", "epoch")
"""Trainer's fraction of the run's epochs done, logged with every train log (``epoch`` before the prefixes)."""
TEXT_TAGS = ("args", "model_config")
"""Text summaries TensorBoardCallback writes at train begin: TrainingArguments and the model config, as JSON."""

CHUNK_BYTES = 1 << 18
"""Bytes read, then checked and decoded as a block, at a time. Larger blocks are somewhat faster (1 MiB: a quarter
less time on a long log) but each costs its size in numpy arrays several times over (1 MiB: +14 MB of peak memory
against +5 MB)."""
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


# -- CRC-32C of many records at once ----------------------------------------------------------------------------------
def _crc_tables(longest: int) -> tuple[np.ndarray, np.ndarray]:
    """CRC-32C as a sum: ``crc(m) = zeros[len(m)] ^ XOR over k of byte_at[len(m) - 1 - k, m[k]]``.

    The CRC register takes each byte through a map that is linear over GF(2), so a message's CRC is that of as
    many zero bytes, plus one table entry per byte, by its value and its distance from the end. Table lookups
    vectorise over thousands of records where a C call per record would not.
    """
    table = np.zeros(256, dtype=np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table[byte] = crc
    byte_at = np.empty((longest, 256), dtype=np.uint32)
    byte_at[0] = table
    for distance in range(1, longest):
        previous = byte_at[distance - 1]
        byte_at[distance] = table[previous & 0xFF] ^ (previous >> 8)  # one more (zero) byte after it
    zeros = np.array([google_crc32c.value(bytes(n)) for n in range(longest + 1)], dtype=np.uint32)
    return byte_at, zeros


def _masked(crc: np.ndarray) -> np.ndarray:
    """:func:`masked_crc` of many CRCs at once."""
    return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(_MASK_DELTA)


_BULK_LENGTH = 256
"""Records of fewer bytes of data than this are framed and decoded in bulk (a scalar's has about 40)."""
_BYTE_AT, _ZEROS = _crc_tables(_BULK_LENGTH)
_HEADER_CRC = _masked(_ZEROS[8] ^ _BYTE_AT[7])
"""The masked CRC of every record header (a little-endian uint64 length) under 256."""
_MAX_STEP_BYTES = 5
"""Steps below 2**35 are decoded in bulk; longer varints (and negative steps) one record at a time."""
_SHORT_RUN = 8
"""Fewer consecutive records than this (between texts, say) are read one by one: a block costs some numpy calls."""
_BULK_RECORDS = 64
"""A layout is read in bulk once a block holds this many records of its length and step size: fewer are read faster
one by one than its template is made and matched (a sweep of short runs)."""


@dataclass(frozen=True)
class _Layout:
    """The bytes of every record of one scalar tag written as ``simple_value`` with a step of ``step_bytes`` bytes.

    Writers serialise ``Event{wall_time, step, summary{value{tag, simple_value}}}`` with the fields in one order,
    so all such records are byte for byte equal but for the wall time, the step and the value. A block of them is
    checked and decoded at once: their other bytes compared with :attr:`template`, their CRC summed from the
    template's and the table entries of the bytes that vary, the step and the value taken from fixed columns.
    """

    tag: int
    length: int
    step_bytes: int
    template: np.ndarray
    """The record's data with the varying bytes zeroed and the step's continuation bits set, as uint64 words (the
    last one padded with zeros)."""
    fixed: np.ndarray
    """The bits that must equal the template's: all but wall time, value and the step's low 7 bits; uint64 words."""
    template_crc: int
    varying: tuple[tuple[int, np.ndarray], ...]
    """``(column, its row of the CRC table)`` for each byte that varies."""

    @classmethod
    def of(cls, data: bytes, step_bytes: int, tag: int) -> _Layout:
        length, step_end = len(data), 10 + step_bytes
        template = np.zeros(-(-length // 8) * 8, dtype=np.uint8)
        template[:length] = np.frombuffer(data, dtype=np.uint8)
        fixed = np.zeros_like(template)
        fixed[:length] = 0xFF
        varying = [*range(1, 9), *range(10, step_end), *range(length - 4, length)]  # wall time, step, value
        template[varying] = 0
        fixed[varying] = 0
        template[10 : step_end - 1] = fixed[10:step_end] = 0x80  # a varint's last byte has no continuation bit
        rows = tuple((column, _BYTE_AT[length - 1 - column]) for column in varying)
        template_crc = google_crc32c.value(template[:length].tobytes())
        return cls(tag, length, step_bytes, template.view("<u8"), fixed.view("<u8"), template_crc, rows)

    def match(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which ``rows`` (uint64 words of records' data) are of this layout, and each row xor the template."""
        diff = rows ^ self.template
        differs = diff[:, 0] & self.fixed[0]
        for word in range(1, len(self.fixed)):
            differs |= diff[:, word] & self.fixed[word]
        return differs == 0, diff

    @property
    def key(self) -> int:
        return _layout_key(self.length, self.step_bytes)


def _layout_key(length: int | np.ndarray, step_bytes: int | np.ndarray) -> int | np.ndarray:
    return length * 8 + step_bytes


_CONTINUED = np.array([1 + next(i for i in range(5) if not bits >> i & 1) for bits in range(16)], dtype=np.int64)
"""By the continuation bits of a varint's first four bytes: its length, 5 for five or more (the layout's template
checks that the fifth is its last)."""


def _step_bytes(first_four: np.ndarray) -> np.ndarray:
    """The length of each step varint, from its first four bytes (little-endian uint32 words)."""
    bits = (first_four >> 7) & 1 | (first_four >> 14) & 2 | (first_four >> 21) & 4 | (first_four >> 28) & 8
    return _CONTINUED[bits]


def _framed(data: bytes, size: int, scratch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The start and data length of every valid record header under 256 bytes in ``data[:size]``, in order.

    Found without walking the records: such a header's length is a uint64 whose seven high bytes are zero, and its
    masked CRC one table lookup. A few may lie inside another record's data; only those the chain of lengths
    reaches are records (:meth:`EventReader._consume` follows it). ``scratch``: two rows of at least ``size``
    booleans, reused (allocating them anew for each buffer costs more than the scan).
    """
    if size < 12:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    count = size - 1
    zero = np.equal(np.frombuffer(data, dtype=np.uint8, count=count, offset=1), 0, out=scratch[0, :count])
    two = np.logical_and(zero[:-1], zero[1:], out=scratch[1, : count - 1])
    four = np.logical_and(two[:-2], two[2:], out=scratch[0, : count - 3])
    seven = np.logical_and(four[: size - 11], four[3 : size - 8], out=scratch[1, : size - 11])  # bytes i+1..i+7
    starts = np.flatnonzero(seven)
    lengths = np.frombuffer(data, dtype=np.uint8, count=size)[starts]
    valid = _HEADER_CRC[lengths] == _view(data, "<u4")[starts + 8]
    return starts[valid], lengths[valid].astype(np.int64)


def _view(data: bytes, dtype: str) -> np.ndarray:
    """The little-endian number of ``dtype`` at every byte offset: ``_view(data, "<u4")[i]`` is bytes i..i+3."""
    width = np.dtype(dtype).itemsize
    return np.ndarray((len(data) - width + 1,), dtype, data, 0, (1,))


def _rows(data: bytes, starts: np.ndarray, width: int) -> np.ndarray:
    """``data[start : start + width]`` for each start, as the rows of a new array."""
    return np.ndarray((len(data) - width + 1, width), np.uint8, data, 0, (1, 1))[starts]


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
                (
                    f"{name}: no valid record at its start: not a TensorBoard event file, or cut off or damaged "
                    "before its first record was complete"
                )
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


class Batch(NamedTuple):
    """Scalars of one file in write order, then perhaps a ``SessionLog.START``: what :class:`EventReader` yields."""

    steps: np.ndarray
    """int64"""
    tags: np.ndarray
    """int32 indexes into ``names``"""
    values: np.ndarray
    """float64"""
    names: list[str]
    """The reader's tags so far, by index (it grows as the file is read)."""
    restart: int | None = None
    """The step of a ``SessionLog.START`` written after these scalars, if one was."""


class EventReader:
    """Every scalar of one event file, in write order, as :class:`Batch` es; damage counted in ``stats``.

    ``plugins`` maps each tag to the plugin named with its first value (shared across a run's files, as
    TensorBoard does); ``texts`` receives the first value of each tag in :data:`TEXT_TAGS`. At most ``limit``
    bytes are read. Set :attr:`values_wanted` to False to have only restarts from then on: every record is still
    checked and counted, but no scalar is collected (:func:`read_run`'s first pass needs a file's first train and
    eval values, then only its restarts).

    A long run's records are read in blocks, with numpy over the file's bytes: the headers are found by their
    form, the chain of lengths followed, and the records of each known :class:`_Layout` (a scalar of one tag)
    checked and decoded together. Any other record (text, a tensor scalar, a restart, damage, a tag's first value)
    goes through the general decoder, in its place in the order; a layout it meets is known from then on.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        stats: FileStats,
        plugins: dict[str, str | None],
        texts: dict[str, str],
        *,
        limit: int | None = None,
    ) -> None:
        self.path, self.stats, self.plugins, self.texts, self.limit = path, stats, plugins, texts, limit
        self.values_wanted = True
        self.names: list[str] = []
        self._ids: dict[str, int] = {}
        self._tag_names: dict[bytes, str] = {}
        self._scalar_layouts: dict[bytes, str] = {}  # a simple_value record's bytes but time, step, value -> its tag
        self._layouts: dict[int, list[_Layout]] = {}
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._singles: tuple[list[int], list[int], list[float]] = ([], [], [])
        self._scratch = np.empty((2, 0), dtype=bool)

    def __iter__(self) -> Iterator[Batch]:
        stats = self.stats
        remaining = (1 << 63) if self.limit is None else self.limit
        with open(self.path, "rb") as f:
            buffer, pos, consumed, needed = b"", 0, 0, CHUNK_BYTES
            try:
                while True:
                    more = f.read(min(max(CHUNK_BYTES, needed - (len(buffer) - pos)), remaining))
                    if not more:
                        stats.truncated_bytes += len(buffer) - pos
                        return
                    remaining -= len(more)
                    consumed += pos
                    buffer, pos = buffer[pos:] + more, 0
                    pos, needed = yield from self._consume(buffer)
                    if self._pending or self._singles[0]:
                        yield self._batch()
                    if needed < 0:  # a header whose CRC does not match: the records cannot be told apart
                        stats.unframed_from = consumed + pos
                        stats.unread_bytes = len(buffer) - pos + min(remaining, os.fstat(f.fileno()).st_size - f.tell())
                        return
            finally:
                stats.read_bytes += consumed + len(buffer)

    def _consume(self, buffer: bytes) -> Generator[Batch, None, tuple[int, int]]:
        """Read every whole record in ``buffer``; return where the first one not read starts, and how many bytes
        reading it needs (-1: its header is damaged)."""
        size, pos = len(buffer), 0
        padded = buffer + bytes(8)  # a record's last uint64 word may run past the buffer
        if self._scratch.shape[1] < size:
            self._scratch = np.empty((2, size), dtype=bool)
        starts, lengths = _framed(padded, size, self._scratch)
        ends = starts + 16 + lengths
        breaks = np.flatnonzero(ends[:-1] != starts[1:])  # where the next valid header is not the next record
        while True:
            k = int(np.searchsorted(starts, pos))
            if k < len(starts) and starts[k] == pos:
                last = breaks[np.searchsorted(breaks, k)] if len(breaks) and breaks[-1] >= k else len(starts) - 1
                whole = int(np.searchsorted(ends[k : last + 1], size, side="right"))
                if whole >= _SHORT_RUN:
                    yield from self._block(padded, starts[k : k + whole], lengths[k : k + whole])
                    pos = int(ends[k + whole - 1])
                    continue
            # one record by hand: a long one, one of a few between long ones, the last in the buffer, or damage
            if size - pos < 12:
                return pos, 12
            length, length_crc = _HEADER.unpack_from(buffer, pos)
            if masked_crc(buffer[pos : pos + 8]) != length_crc:
                return pos, -1
            if pos + 16 + length > size:
                return pos, 16 + length
            data = buffer[pos + 12 : pos + 12 + length]
            if masked_crc(data) == _CRC.unpack_from(buffer, pos + 12 + length)[0]:
                yield from self._decode(data)
            else:
                self.stats.bad_data_crc += 1
            pos += 16 + length

    def _block(self, buffer: bytes, starts: np.ndarray, lengths: np.ndarray) -> Iterator[Batch]:
        """Consecutive whole records: those of a bulk layout together, the others one by one, in order."""
        count = len(starts)
        tags = np.full(count, -1, dtype=np.int32)
        steps = np.zeros(count, dtype=np.int64)
        values = np.zeros(count, dtype=np.float64)
        good = np.zeros(count, dtype=bool)
        step_bytes = _step_bytes(_view(buffer, "<u4")[np.minimum(starts + 22, len(buffer) - 4)])
        keys = _layout_key(lengths, step_bytes).astype(np.int16)  # < 2 048: sorted by radix
        self._match(buffer, starts, keys, np.arange(count), tags, steps, values, good)
        frequent = set(np.flatnonzero(np.bincount(keys) >= _BULK_RECORDS).tolist())
        # the others one by one: where there are few records of a kind that is the whole file, hence inline
        at, others = 0, np.flatnonzero(tags < 0).tolist()
        start_list, length_list = (starts.tolist(), lengths.tolist()) if others else ([], [])
        stats, crc, unpack_crc, unpack_float = self.stats, google_crc32c.value, _CRC.unpack_from, _FLOAT.unpack_from
        scalar_layouts, ids, (singles_steps, singles_tags, singles_values) = (
            self._scalar_layouts,
            self._ids,
            self._singles,
        )
        records = 0
        try:
            while others:
                after_learning: list[int] = []
                for other in others:
                    if other > at:
                        self._add_bulk(steps[at:other], tags[at:other], values[at:other], good[at:other])
                    at = other + 1
                    start, length = start_list[other], length_list[other]
                    data = buffer[start + 12 : start + 12 + length]
                    checksum = crc(data)
                    if (((checksum >> 15) | (checksum << 17)) + _MASK_DELTA) & 0xFFFFFFFF != unpack_crc(
                        buffer, start + 12 + length
                    )[0]:
                        stats.bad_data_crc += 1
                        continue
                    # the layout writers use for one simple_value: wall_time, step, summary{value{tag, value}}
                    tag, step_size = None, 0
                    if 20 < length and data[0] == 0x09 and data[9] == 0x10:
                        step, step_size = data[10], 1
                        if step >= 0x80 and data[11] < 0x80:  # steps below 16 384 inline: a call per record costs
                            step, step_size = step & 0x7F | data[11] << 7, 2
                        elif step >= 0x80:
                            try:
                                step, step_end = _varint(data, 10)
                                step, step_size = _int64(step), step_end - 10
                            except Undecodable:
                                step_size = 0  # the general decoder says what is wrong
                    if step_size:
                        layout = data[10 + step_size : length - 4]
                        tag = scalar_layouts.get(layout)
                        if tag is None:
                            tag = _one_scalar_layout(layout, self._tag_names, self.plugins)
                            if tag is not None:
                                scalar_layouts[layout] = tag
                    if tag is None:
                        yield from self._decode(data)
                        continue
                    records += 1
                    if self.values_wanted:
                        number = ids.get(tag)
                        singles_steps.append(step)
                        singles_tags.append(self._id(tag) if number is None else number)
                        singles_values.append(unpack_float(data, length - 4)[0])
                    key = length * 8 + step_size  # _layout_key
                    if key in frequent and step_size <= _MAX_STEP_BYTES:  # (its length is under _BULK_LENGTH)
                        self._learn(data, step_size, tag)  # and read the rest of its kind in bulk
                        self._match(
                            buffer, starts, keys, np.flatnonzero(keys[at:] == key) + at, tags, steps, values, good
                        )
                        after_learning = (np.flatnonzero(tags[at:] < 0) + at).tolist()
                        break
                others = after_learning
        finally:
            stats.records += records
            stats.scalars += records
        self._add_bulk(steps[at:], tags[at:], values[at:], good[at:])
        matched = int(np.count_nonzero(tags >= 0))
        bulk_good = int(np.count_nonzero(good))
        stats.records += bulk_good
        stats.scalars += bulk_good
        stats.bad_data_crc += matched - bulk_good

    def _match(
        self,
        buffer: bytes,
        starts: np.ndarray,
        keys: np.ndarray,
        chosen: np.ndarray,
        tags: np.ndarray,
        steps: np.ndarray,
        values: np.ndarray,
        good: np.ndarray,
    ) -> None:
        """For the ``chosen`` records of a known layout: their tag (else -1 is left), step, value, and whether
        their CRC matches."""
        if not self._layouts or not len(chosen):
            return
        order = chosen[np.argsort(keys[chosen], kind="stable")]
        ordered = keys[order]
        cuts = [0, *(np.flatnonzero(ordered[1:] != ordered[:-1]) + 1).tolist(), len(ordered)]
        crc_at = _view(buffer, "<u4")
        for low, high in pairwise(cuts):
            layouts = self._layouts.get(int(ordered[low]))
            if layouts is None:
                continue
            group = order[low:high]
            length = layouts[0].length
            rows = _rows(buffer, starts[group] + 12, len(layouts[0].template) * 8).view("<u8")
            left = np.ones(len(group), dtype=bool)
            for layout in layouts:
                hit, words = layout.match(rows)
                hit &= left
                if not hit.any():
                    continue
                which = group
                if not hit.all():
                    which, words = group[hit], words[hit]
                diff = words.view(np.uint8)
                crc = np.full(len(which), layout.template_crc, dtype=np.uint32)
                for column, table in layout.varying:
                    crc ^= table.take(diff[:, column])
                good[which] = _masked(crc) == crc_at[starts[which] + 12 + length]
                tags[which] = layout.tag
                if self.values_wanted:
                    step = np.zeros(len(which), dtype=np.int64)
                    for byte in range(layout.step_bytes):
                        step |= (diff[:, 10 + byte] & 0x7F).astype(np.int64) << (7 * byte)
                    steps[which] = step
                    values[which] = np.ascontiguousarray(diff[:, length - 4 : length]).view("<f4")[:, 0]
                left &= ~hit
                if not left.any():
                    break

    def _decode(self, data: bytes) -> Iterator[Batch]:
        """One record whose CRC matched, by the general decoder: its scalars added, a restart ending a batch."""
        stats = self.stats
        stats.records += 1
        try:
            found = _decode_event(data, self.plugins, self.texts, self._tag_names)
        except (Undecodable, IndexError, struct.error, ValueError):
            stats.undecodable += 1
            return
        for step, tag, value in found:
            if tag is SESSION_START:
                yield self._batch(restart=step)
            else:
                stats.scalars += 1
                self._add(step, tag, value)

    def _learn(self, data: bytes, step_size: int, tag: str) -> None:
        """Read the records laid out as ``data`` (a ``simple_value`` of ``tag``) in bulk from now on."""
        layout = _Layout.of(data, step_size, self._id(tag))
        self._layouts.setdefault(layout.key, []).append(layout)

    def _id(self, tag: str) -> int:
        number = self._ids.get(tag)
        if number is None:
            number = self._ids[tag] = len(self.names)
            self.names.append(tag)
        return number

    def _add(self, step: int, tag: str, value: float) -> None:
        if self.values_wanted:
            steps, tags, values = self._singles
            steps.append(step)
            tags.append(self._id(tag))
            values.append(value)

    def _add_bulk(self, steps: np.ndarray, tags: np.ndarray, values: np.ndarray, good: np.ndarray) -> None:
        if self.values_wanted and good.any():
            self._flush_singles()
            self._pending.append((steps[good], tags[good], values[good]))

    def _flush_singles(self) -> None:
        steps, tags, values = self._singles
        if steps:
            self._pending.append(
                (np.array(steps, dtype=np.int64), np.array(tags, dtype=np.int32), np.array(values, dtype=np.float64))
            )
            steps.clear()
            tags.clear()
            values.clear()

    def _batch(self, restart: int | None = None) -> Batch:
        """What was collected since the last batch, then ``restart``."""
        self._flush_singles()
        pending, self._pending = self._pending, []
        if len(pending) == 1:
            steps, tags, values = pending[0]
        else:
            steps = np.concatenate([p[0] for p in pending]) if pending else np.empty(0, dtype=np.int64)
            tags = np.concatenate([p[1] for p in pending]) if pending else np.empty(0, dtype=np.int32)
            values = np.concatenate([p[2] for p in pending]) if pending else np.empty(0, dtype=np.float64)
        return Batch(steps, tags, values, self.names, restart)


def read_events(
    path: str | os.PathLike[str],
    stats: FileStats,
    plugins: dict[str, str | None],
    texts: dict[str, str],
    *,
    limit: int | None = None,
) -> Iterator[tuple[int, str | None, float]]:
    """``(step, tag, value)`` for every scalar of one file in write order, and ``(step, SESSION_START, nan)``: the
    :class:`EventReader`'s batches one value at a time."""
    for batch in EventReader(path, stats, plugins, texts, limit=limit):
        names = batch.names
        for step, tag, value in zip(batch.steps.tolist(), batch.tags.tolist(), batch.values.tolist()):
            yield step, names[tag], value
        if batch.restart is not None:
            yield batch.restart, SESSION_START, math.nan


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
_ALL = frozenset(range(len(SIGNALS)))
_EVAL_ONLY = frozenset((EVAL_SIGNAL,))


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


class _Signals:
    """The signal (index into :data:`SIGNALS`, -1 for none) of each tag of a reader, kept up to date as it grows."""

    def __init__(self) -> None:
        self.of = np.empty(0, dtype=np.int8)

    def __call__(self, batch: Batch) -> np.ndarray:
        if len(self.of) < len(batch.names):
            known = [SIGNAL_TAGS.get(name, -1) for name in batch.names[len(self.of) :]]
            self.of = np.concatenate([self.of, np.array(known, dtype=np.int8)])
        return self.of[batch.tags]


@dataclass
class TensorBoardRun:
    """One run's signals, streamed in write order with restarts and resumes resolved, in memory that does not grow
    with the run's length.

    A restart or a resume replaces values written *before* it, so a single pass would have to keep every value
    until the end to know which survive (~100 bytes per logged step). Instead :func:`read_run` reads the files
    twice. Pass 1 (done by :func:`read_run`) finds the markers, few as the files and restarts are: each
    ``SessionLog.START`` and each later file's first train and first eval value; it also collects the text
    summaries, the damage notes, the record counts and the first epoch that tells the steps per epoch. Pass 2
    (:meth:`batches`, :meth:`values`, :meth:`entries`) reads the files again and keeps a value unless a marker
    after it covers it, which is what replaying the markers in order would leave. Per-signal minima of the steps
    of the markers still ahead make that test one comparison per value.

    :attr:`notes` (restarts and resumes, which pass 2 counts), :attr:`other_tags` and :meth:`curves` are complete
    once a pass 2 has run to its end; each iteration is a new pass 2 over the same bytes.
    """

    files: list[str]
    texts: dict[str, str] = field(default_factory=dict)
    other_tags: dict[str, int] = field(default_factory=dict)
    """Scalar tags that are none of Trainer's signals, with their number of values."""
    epoch_mark: tuple[int, float] | None = None
    """The first ``(step, epoch)`` that tells the steps per epoch (found by pass 1)."""
    notes: list[str] = field(default_factory=list)
    records: int = 0
    scalars: int = 0
    _read_notes: list[str] = field(default_factory=list, init=False, repr=False)
    _read_bytes: list[int] = field(default_factory=list, init=False, repr=False)
    _file_boundaries: list[int] = field(default_factory=list, init=False, repr=False)
    _markers: list[_Marker] = field(default_factory=list, init=False, repr=False)
    _limits: np.ndarray = field(default_factory=lambda: np.empty((0, len(SIGNALS)), np.int64), init=False, repr=False)
    """Per boundary b: for each signal, the lowest step a marker at b or later covers ..."""
    _bounded: np.ndarray = field(default_factory=lambda: np.empty((0, len(SIGNALS)), bool), init=False, repr=False)
    """... if one does."""
    _curves: list[Decimator] = field(default_factory=lambda: [Decimator() for _ in SIGNALS], init=False, repr=False)

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Pass 2: ``(steps, signals, values)`` arrays of the values kept, in write order; ``signals`` index
        :data:`SIGNALS`. At its end :attr:`notes` gains what each restart and resume dropped (counted only here)."""
        dropped = [0] * len(self._markers)
        problems: list[str] = []
        other_tags: dict[str, int] = {}
        self.other_tags = other_tags
        self._curves = [Decimator() for _ in SIGNALS]
        plugins: dict[str, str | None] = {}
        for path, size, boundary in zip(self.files, self._read_bytes, self._file_boundaries):
            if not size:  # nothing there, or pass 1 could not open it (already noted)
                continue
            signal_of = _Signals()
            try:
                for batch in EventReader(path, FileStats(path), plugins, {}, limit=size):
                    if len(batch.steps):
                        signals = signal_of(batch)
                        ours = signals >= 0
                        if not ours.all():
                            counts = np.bincount(batch.tags[~ours], minlength=len(batch.names))
                            for tag in np.flatnonzero(counts).tolist():
                                name = batch.names[tag]
                                other_tags[name] = other_tags.get(name, 0) + int(counts[tag])
                        steps, signals, values = batch.steps[ours], signals[ours], batch.values[ours]
                        covered = self._bounded[boundary + 1][signals] & (steps >= self._limits[boundary + 1][signals])
                        if covered.any():
                            self._count_dropped(boundary, steps[covered], signals[covered], dropped)
                            kept = ~covered
                            steps, signals, values = steps[kept], signals[kept], values[kept]
                        if len(steps):
                            for signal, decimator in enumerate(self._curves):
                                mine = signals == signal
                                if mine.any():
                                    decimator.extend(steps[mine], values[mine])
                            yield steps, signals, values
                    if batch.restart is not None:
                        boundary += 1
            except OSError as error:  # pass 1 read it: it changed since
                problems.append(f"{path}: could not be read ({error.strerror or error})")
        counted = list(zip(self._markers, dropped))
        self.notes = [
            *self._read_notes,
            *problems,
            *(m.note(n) for m, n in counted if n and m.restart),  # TF writers mark every session: only drops are news
            *(m.note(n) for m, n in counted if n and not m.restart),
        ]

    def _count_dropped(self, boundary: int, steps: np.ndarray, signals: np.ndarray, dropped: list[int]) -> None:
        """Charge each covered value to the first marker after ``boundary`` that covers it: the one that, replayed
        in order, dropped it."""
        left = np.ones(len(steps), dtype=bool)
        for number, marker in enumerate(self._markers):
            if marker.boundary <= boundary:
                continue
            hit = left & (steps >= marker.step) & np.isin(signals, list(marker.signals))
            dropped[number] += int(np.count_nonzero(hit))
            left &= ~hit
            if not left.any():
                return

    def values(self) -> Iterator[tuple[int, int, float]]:
        """Pass 2 one value at a time: ``(step, signal, value)`` for each value kept, in write order."""
        for steps, signals, values in self.batches():
            yield from zip(steps.tolist(), signals.tolist(), values.tolist())

    def entries(self) -> Iterator[tuple[int, Signals]]:
        """The run as Trainer's ``on_log`` saw it: one entry per log call (same step, train or eval, no tag twice),
        of Trainer's signals only (:class:`~trainwatch.history.Signals`, which the engine records as they are).

        The values of one log call are consecutive, so entries are cut where the step or train/eval changes, in
        bulk; where a signal repeats within such a cut (a writer that logged a tag twice at one step), value by
        value."""
        current = Signals()
        current_step, current_eval = None, False
        for steps, signals, values in self.batches():
            is_eval = signals == EVAL_SIGNAL
            cut = np.flatnonzero((steps[1:] != steps[:-1]) | (is_eval[1:] != is_eval[:-1])) + 1
            bounds = [0, *cut.tolist(), len(steps)]
            bits = np.left_shift(1, signals.astype(np.int64))
            starts = bounds[:-1]
            if not np.array_equal(np.add.reduceat(bits, starts), np.bitwise_or.reduceat(bits, starts)):
                bounds = [0, len(steps)]  # a signal repeats within a cut: all by hand
            step_list, value_list = steps.tolist(), values.tolist()
            names = [SIGNALS[s] for s in signals.tolist()]
            eval_list = is_eval.tolist()
            # the first cut may continue the entry the last batch ended with: by hand
            for i in range(bounds[1]):
                step, name, evaluating = step_list[i], names[i], eval_list[i]
                if current and (step != current_step or evaluating != current_eval or name in current):
                    yield current_step, current  # type: ignore[misc]
                    current = Signals()
                current_step, current_eval = step, evaluating
                current[name] = value_list[i]
            if len(bounds) > 2:
                yield current_step, current  # type: ignore[misc]
                for low, high in pairwise(bounds[1:-1]):
                    yield step_list[low], Signals(zip(names[low:high], value_list[low:high]))
                low = bounds[-2]
                current = Signals(zip(names[low:], value_list[low:]))
                current_step, current_eval = step_list[low], eval_list[low]
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
    restart, two per file), the text summaries, the counts and the damage notes; it collects no value once a
    file's first train and eval values are known, and the first epoch that tells the steps per epoch (an
    epoch-based run's planned length: a few logs into the first file). Iterate the run's
    :meth:`~TensorBoardRun.entries` for the values.
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
        reader = EventReader(path, stats, plugins, run.texts)
        need_epoch = run.epoch_mark is None
        reader.values_wanted = need_train or need_epoch
        signal_of = _Signals()
        try:
            for batch in reader:
                if len(batch.steps):
                    signals = signal_of(batch)
                    train = np.flatnonzero((signals >= 0) & (signals != EVAL_SIGNAL))
                    evals = np.flatnonzero(signals == EVAL_SIGNAL)
                    if need_epoch:
                        run.epoch_mark = _epoch_mark(batch)
                        # found, or values without an epoch among them (no Trainer log): nothing more to look for
                        need_epoch = run.epoch_mark is None and _has_epoch(batch)
                    if need_train and len(train):
                        run._markers.append(_Marker(start, int(batch.steps[train[0]]), _ALL, path, restart=False))
                        need_train = False
                    if need_eval and len(evals):
                        run._markers.append(_Marker(start, int(batch.steps[evals[0]]), _EVAL_ONLY, path, restart=False))
                        need_eval = False
                    reader.values_wanted = need_train or need_eval or need_epoch
                if batch.restart is not None:
                    boundary += 1
                    run._markers.append(_Marker(boundary, batch.restart, _ALL, path, restart=True))
        except OSError as error:
            run._read_notes.append(f"{path}: could not be read ({error.strerror or error})")
        run._read_bytes.append(stats.read_bytes)
        run.records += stats.records
        run.scalars += stats.scalars
        run._read_notes.extend(stats.notes())

    run._limits, run._bounded = _suffix_minima(run._markers, boundary + 1)
    run.notes = list(run._read_notes)
    return run


def _epoch_values(batch: Batch) -> np.ndarray:
    """Where in the batch the epoch was logged (indexes into its values)."""
    epoch_tags = [i for i, name in enumerate(batch.names) if name in EPOCH_TAGS]
    return np.flatnonzero(np.isin(batch.tags, epoch_tags)) if epoch_tags else np.empty(0, dtype=np.int64)


def _has_epoch(batch: Batch) -> bool:
    return len(_epoch_values(batch)) > 0


def _epoch_mark(batch: Batch) -> tuple[int, float] | None:
    """The batch's first ``(step, epoch)`` that tells the steps per epoch (:func:`tells_steps_per_epoch`)."""
    for i in _epoch_values(batch).tolist():
        step, epoch = int(batch.steps[i]), float(batch.values[i])
        if step > 0 and tells_steps_per_epoch(epoch):
            return step, epoch
    return None


def _suffix_minima(markers: list[_Marker], boundaries: int) -> tuple[np.ndarray, np.ndarray]:
    """For each boundary b (and one past the last): per signal, the lowest step of the markers at b or later, and
    whether there is one."""
    at: dict[int, list[_Marker]] = {}
    for marker in markers:
        at.setdefault(marker.boundary, []).append(marker)
    lowest: list[int | None] = [None] * len(SIGNALS)
    limits = [lowest] * (boundaries + 1)
    for b in range(boundaries - 1, -1, -1):
        if b in at:
            lowest = list(lowest)
            for marker in at[b]:
                for signal in marker.signals:
                    low = lowest[signal]
                    lowest[signal] = marker.step if low is None else min(low, marker.step)
        limits[b] = lowest
    steps = np.array([[0 if s is None else s for s in row] for row in limits], dtype=np.int64)
    return steps, np.array([[s is not None for s in row] for row in limits], dtype=bool)
