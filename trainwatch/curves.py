"""Curves for plotting, bounded whatever the run's length: a streaming min/max decimation.

The curves read from either log format go through a :class:`Decimator`, so ``trainwatch analyze --plot`` draws a
million-step run from a few thousand points without losing what matters on a training curve: its spikes and its
NaN/inf values.
"""

from __future__ import annotations

import numpy as np

CURVE_BUCKETS = 4000
"""At most this many buckets per curve, each drawn as up to three points: ~2 000 to 4 000 columns of a plot."""


class Decimator:
    """A bounded picture of one series for plotting: min/max decimation, in one pass, in O(:data:`CURVE_BUCKETS`).

    Consecutive values are grouped into buckets of ``width`` values; a bucket keeps its smallest and largest finite
    value and its first non-finite one (plot.py marks NaN/inf with a cross), each with its step. When the buckets
    fill up, neighbours are merged in pairs and the width doubles. A one-step spike is its bucket's max, so it
    survives any length; a series shorter than :data:`CURVE_BUCKETS` values is kept whole.
    """

    def __init__(self, buckets: int = CURVE_BUCKETS) -> None:
        if buckets < 2 or buckets % 2:
            raise ValueError("buckets must be even and >= 2: they are merged in pairs")
        self.buckets = buckets
        self.width = 1
        """Values per bucket."""
        self.count = 0
        """Values seen."""
        # each bucket: (index, step, value) of its min, max and first non-finite value; index -1 marks no such value
        self._index = np.empty((0, 3), dtype=np.int64)
        self._steps = np.empty((0, 3), dtype=np.int64)
        self._values = np.empty((0, 3), dtype=np.float64)
        self._open = _no_points()
        self._open_fill = 0  # values in the bucket not yet full, kept as its three points

    def extend(self, steps: np.ndarray, values: np.ndarray) -> None:
        """Add values in order (``steps`` and ``values`` of one length)."""
        steps = np.asarray(steps, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        index = np.arange(self.count, self.count + len(values), dtype=np.int64)
        self.count += len(values)
        at = 0
        while at < len(values):
            if not self._open_fill and len(values) - at >= self.width:
                # whole buckets straight from the values, as many as fit before the next merge
                n = min((len(values) - at) // self.width, self.buckets - len(self._index))
                stop = at + n * self.width
                shape = (n, self.width)
                found = _extremes(
                    index[at:stop].reshape(shape), steps[at:stop].reshape(shape), values[at:stop].reshape(shape)
                )
                self._close(*found)
                at = stop
            else:
                take = min(self.width - self._open_fill, len(values) - at)
                open_index, open_steps, open_values = self._open
                self._open = _extremes(
                    np.concatenate([open_index, index[None, at : at + take]], axis=1),
                    np.concatenate([open_steps, steps[None, at : at + take]], axis=1),
                    np.concatenate([open_values, values[None, at : at + take]], axis=1),
                )
                self._open_fill += take
                at += take
                if self._open_fill == self.width:
                    self._close(*self._open)
                    self._open = _no_points()
                    self._open_fill = 0
            if len(self._index) == self.buckets:
                half = (self.buckets // 2, 6)
                self._index, self._steps, self._values = _extremes(
                    self._index.reshape(half), self._steps.reshape(half), self._values.reshape(half)
                )
                self.width *= 2

    def _close(self, index: np.ndarray, steps: np.ndarray, values: np.ndarray) -> None:
        self._index = np.concatenate([self._index, index])
        self._steps = np.concatenate([self._steps, steps])
        self._values = np.concatenate([self._values, values])

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of the points kept, in the order they were added."""
        index = np.concatenate([self._index.ravel(), self._open[0].ravel()])
        steps = np.concatenate([self._steps.ravel(), self._open[1].ravel()])
        values = np.concatenate([self._values.ravel(), self._open[2].ravel()])
        unique, first = np.unique(index, return_index=True)  # sorted: write order; a min that is also the max once
        keep = first[unique >= 0]
        return steps[keep], values[keep]


def _no_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An empty bucket: its three points absent."""
    return np.full((1, 3), -1, dtype=np.int64), np.zeros((1, 3), dtype=np.int64), np.zeros((1, 3))


def _extremes(index: np.ndarray, steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's min, max (finite) and first non-finite point, as ``(n, 3)`` arrays; points of index -1 are absent.

    A row is a bucket's raw values, or the points of buckets being merged (in write order, so ties go to the first).
    """
    present = index >= 0
    finite = np.isfinite(values) & present
    rows = np.arange(len(index))[:, None]
    columns = np.stack(
        [
            np.where(finite, values, np.inf).argmin(axis=1),
            np.where(finite, values, -np.inf).argmax(axis=1),
            (present & ~finite).argmax(axis=1),
        ],
        axis=1,
    )
    chosen = index[rows, columns]
    has_finite = finite.any(axis=1)
    chosen[~has_finite, :2] = -1
    chosen[~(present & ~finite).any(axis=1), 2] = -1
    return chosen, steps[rows, columns], values[rows, columns]
