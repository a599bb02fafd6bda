"""The decimator behind ``--plot``'s curves: bounded whatever the length, yet every spike and NaN/inf still drawn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainwatch.curves import CURVE_BUCKETS, Decimator


def decimate(values: np.ndarray, chunks: list[int] | None = None, buckets: int = CURVE_BUCKETS) -> Decimator:
    """``values`` at steps 1..n fed in pieces of the given sizes (cycled), as pass 2 feeds its buffers."""
    decimator = Decimator(buckets)
    steps = np.arange(1, len(values) + 1)
    at, sizes = 0, chunks or [len(values)]
    while at < len(values):
        size = sizes[0]
        sizes = sizes[1:] + sizes[:1]
        decimator.extend(steps[at : at + size], values[at : at + size])
        at += size
    return decimator


def test_a_short_series_is_kept_whole():
    values = np.random.default_rng(0).normal(size=CURVE_BUCKETS)
    values[[5, 17, 300]] = [math.nan, math.inf, -math.inf]
    steps, kept = decimate(values, [1, 7, 1000]).curve()
    assert list(steps) == list(range(1, CURVE_BUCKETS + 1))
    np.testing.assert_array_equal(kept, values)


def test_a_long_series_is_bounded_and_keeps_a_one_step_spike_and_nans():
    values = 1.0 + 0.01 * np.sin(np.arange(1_000_000))
    values[654_321] = 1e6
    values[123_456] = math.nan
    values[765_432] = -math.inf
    decimator = decimate(values, [65_536, 3, 100_000])
    steps, kept = decimator.curve()
    assert len(steps) <= 2 * CURVE_BUCKETS + 2  # min and max per bucket, and the two non-finite values
    assert kept[steps == 654_322][0] == 1e6
    assert math.isnan(kept[steps == 123_457][0]) and kept[steps == 765_433][0] == -math.inf
    assert np.all(np.diff(steps) > 0)  # in the order added
    assert kept[np.isfinite(kept)].min() == values[np.isfinite(values)].min()


def test_empty():
    steps, values = Decimator().curve()
    assert len(steps) == len(values) == 0


@pytest.mark.parametrize("chunks", [[1], [3, 5], [64], [1000]])
def test_buckets_are_the_min_max_and_first_nonfinite_of_aligned_blocks(chunks):
    """However the values arrive, the result is that of cutting them into blocks of the final width: each block's
    first smallest and first largest finite value and its first non-finite one (ties and NaNs included)."""
    rng = np.random.default_rng(1)
    values = rng.integers(0, 5, size=1_237).astype(float)
    values[rng.random(len(values)) < 0.03] = math.nan
    values[rng.random(len(values)) < 0.01] = math.inf
    decimator = decimate(values, chunks, buckets=8)
    width = decimator.width
    expected = set()
    for start in range(0, len(values), width):
        block = values[start : start + width]
        finite = np.flatnonzero(np.isfinite(block))
        if len(finite):
            expected.add(start + finite[np.argmin(block[finite])])
            expected.add(start + finite[np.argmax(block[finite])])
        if len(finite) < len(block):
            expected.add(start + np.flatnonzero(~np.isfinite(block))[0])
    steps, kept = decimator.curve()
    assert list(steps - 1) == sorted(expected)
    np.testing.assert_array_equal(kept, values[steps - 1])
    assert math.ceil(len(values) / width) <= 8  # bounded: at most `buckets` blocks
