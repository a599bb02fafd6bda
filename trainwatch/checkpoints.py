"""Which checkpoint to go back to after a failure, with its weights checked where that is cheap.

A checkpoint saved at or after an explosion's onset already holds the bad update: with NaN in the weights it is
worse than none. So the checkpoint named is the newest one saved *before* the onset (for overfitting, at or before
the best evaluation, whose weights are the ones worth keeping), and where its weights are small enough to read
cheaply (a LoRA adapter, or a model under ``max_bytes``) it must hold no NaN/inf; one that does is skipped for the
one before it. A big full-model checkpoint is trusted on its step alone: reading gigabytes to advise is not cheap.

Reads safetensors files with numpy only (the header, then each float tensor's exponent bits), so ``trainwatch
analyze`` can name the same checkpoint without importing torch.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from trainwatch.findings import EXPLODING, OVERFITTING, Finding
from trainwatch.logs.trainer_state import latest_checkpoints

MAX_VERIFIED_BYTES = 64 * 2**20
"""A full-model ``model.safetensors`` above this is trusted, not read."""
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors")

# A float is NaN/inf when all its exponent bits are set: (unsigned view, exponent mask) per safetensors dtype.
_EXPONENT = {
    "F64": ("<u8", 0x7FF0000000000000),
    "F32": ("<u4", 0x7F800000),
    "F16": ("<u2", 0x7C00),
    "BF16": ("<u2", 0x7F80),
    "F8_E5M2": ("u1", 0x7C),
    "F8_E4M3": ("u1", 0x7F),  # the "fn" format: no inf, NaN is S.1111.111
}


@dataclass(frozen=True)
class Choice:
    """The checkpoint to go back to (None: there is none), and those passed over for damaged weights."""

    path: Path | None
    verified: bool = False
    """Its weights were read and are all finite (False: none, or too large to read, trusted on its step)."""
    skipped: tuple[str, ...] = ()
    """``"checkpoint-N: why"`` for each newer candidate whose weights hold NaN/inf or cannot be read."""

    def advice(self) -> str:
        """One line for the report; empty when there is nothing to say."""
        if self.path is None and not self.skipped:
            return ""
        text = str(self.path) if self.path else "none (every earlier checkpoint is damaged)"
        if self.verified:
            text += " (weights checked: all finite)"
        if self.skipped:
            text += "; skipped " + "; ".join(self.skipped)
        return text


def checkpoint_for(finding: Finding, output_dir: str | os.PathLike[str] | None, **options: int) -> Choice:
    """The checkpoint worth going back to after ``finding``: for an explosion the newest clean one before its onset,
    for overfitting the newest clean one at or before the best evaluation, otherwise the newest clean one saved by
    the step it was decided. ``options``: :func:`checkpoint_before`'s."""
    onset = finding.evidence.get("onset_step") if finding.kind in (EXPLODING, OVERFITTING) else None
    limit = onset if isinstance(onset, int) else finding.step
    return checkpoint_before(output_dir, limit, inclusive=finding.kind != EXPLODING, **options)


def checkpoint_before(
    output_dir: str | os.PathLike[str] | None,
    step: int,
    *,
    inclusive: bool = False,
    max_bytes: int = MAX_VERIFIED_BYTES,
) -> Choice:
    """The newest ``checkpoint-N`` of ``output_dir`` with N < ``step`` (≤ when ``inclusive``) whose weights are
    finite, walking back past damaged ones. Weights are read from ``adapter_model.safetensors``, else from
    ``model.safetensors`` when it is at most ``max_bytes``; a checkpoint with neither is trusted on its step."""
    if not output_dir or not os.path.isdir(output_dir):
        return Choice(None)
    skipped: list[str] = []
    for checkpoint in latest_checkpoints(Path(output_dir)):
        n = int(checkpoint.name.rsplit("-", 1)[1])
        if n > step or (n == step and not inclusive):
            continue
        weights = weights_file(checkpoint, max_bytes)
        if weights is None:
            return Choice(checkpoint, verified=False, skipped=tuple(skipped))
        problem = weights_problem(weights)
        if problem is None:
            return Choice(checkpoint, verified=True, skipped=tuple(skipped))
        skipped.append(f"{checkpoint.name}: {problem}")
    return Choice(None, skipped=tuple(skipped))


def weights_file(checkpoint: Path, max_bytes: int = MAX_VERIFIED_BYTES) -> Path | None:
    """The checkpoint's weights when cheap to read: its adapter, or a model file of at most ``max_bytes``."""
    for name in WEIGHT_FILES:
        path = checkpoint / name
        try:
            size = path.stat().st_size
        except OSError:
            continue
        return path if name.startswith("adapter") or size <= max_bytes else None
    return None


def weights_problem(path: Path) -> str | None:
    """Why the safetensors file at ``path`` is no checkpoint to go back to (NaN/inf tensors, unreadable); None: fine."""
    try:
        stat = path.stat()
        return _weights_problem(str(path), stat.st_mtime_ns, stat.st_size)
    except OSError as error:
        return f"{path.name} cannot be read ({error.strerror or error})"


@lru_cache(maxsize=64)
def _weights_problem(path: str, mtime_ns: int, size: int) -> str | None:
    """Cached on the file's identity: the live report asks again at every finding and at the end of training."""
    try:
        bad = nonfinite_tensors(path)
    except ValueError as error:
        return f"{os.path.basename(path)} is not a readable safetensors file ({error})"
    if not bad:
        return None
    names = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
    return f"NaN/inf in {len(bad)} tensor(s) of {os.path.basename(path)} ({names})"


def nonfinite_tensors(path: str | os.PathLike[str]) -> list[str]:
    """The names of the tensors of a safetensors file that hold a NaN or inf. Raises ``ValueError`` when the file
    is not a safetensors file (truncated, damaged) and ``OSError`` when it cannot be read."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError("shorter than its header")
    (length,) = struct.unpack("<Q", data[:8])
    if 8 + length > len(data):
        raise ValueError("header runs past the end of the file")
    try:
        header = json.loads(data[8 : 8 + length])
    except ValueError as error:
        raise ValueError(f"header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    bad = []
    for name, info in header.items():
        if name == "__metadata__" or not isinstance(info, dict):
            continue
        view = _EXPONENT.get(str(info.get("dtype")))
        if view is None:  # integers and bools are always finite
            continue
        begin, end = (8 + length + int(x) for x in info["data_offsets"])
        if not 8 + length <= begin <= end <= len(data):
            raise ValueError(f"tensor {name} lies outside the file")
        dtype, mask = view
        bits = np.frombuffer(data, dtype=dtype, count=(end - begin) // np.dtype(dtype).itemsize, offset=begin)
        if np.any((bits & np.array(mask, dtype=dtype)) == mask):
            bad.append(name)
    return bad
