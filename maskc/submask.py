"""A mask restricted to some of its query rows and key columns: what one rank of a sharded mask runs.

The rows and columns are ascending token indices of the original; the view's row ``i`` is original
row ``rows[i]`` and its column ``j`` original column ``cols[j]``. The compiler reads it like any
source. Where the original gives its column intervals from its structure, so does the view, in
O(columns): an original column's masked rows ``[a, b)`` are, among the kept rows, exactly the local
rows ``[#kept rows < a, #kept rows < b)`` — keeping rows in ascending order keeps every run a run —
and the view's rows are rebuilt from those vectors, never from full-width original rows.
"""

from __future__ import annotations

import numpy as np

from maskc.errors import MaskError
from maskc.runtime.format import DERIVED_LISTS, interval_vectors, visible_rows
from maskc.sources import MaskSource, PlanSource


class SubMask(MaskSource):
    """``source`` restricted to rows ``rows`` and columns ``cols`` (ascending, unique, in range)."""

    def __init__(self, source: MaskSource, rows: np.ndarray, cols: np.ndarray, name: str | None = None):
        self._source = source
        self._rows, self._cols = (np.asarray(a, dtype=np.int64) for a in (rows, cols))
        for what, index, size in (("rows", self._rows, source.q_len), ("columns", self._cols, source.kv_len)):
            if index.ndim != 1 or index.size == 0 or index[0] < 0 or index[-1] >= size or np.any(np.diff(index) <= 0):
                raise MaskError(f"{source.name}: a sub-mask's {what} must be ascending, unique and in [0, {size})")
        self.name = name or f"{source.name}[{self._rows.size} rows, {self._cols.size} columns]"
        self.shape = (source.batch, source.heads, int(self._rows.size), int(self._cols.size))
        vectors = source.intervals()
        self._intervals = None if vectors is None else np.searchsorted(self._rows, np.asarray(vectors)[:, :, self._cols])

    def rows(self, b: int, h: int, start: int, stop: int) -> np.ndarray:
        if not (0 <= b < self.batch and 0 <= h < self.heads and 0 <= start <= stop <= self.q_len):
            raise MaskError(f"{self.name}: rows({b}, {h}, {start}, {stop}) is outside the mask of shape {list(self.shape)}")
        if self._intervals is not None:
            return visible_rows(self._intervals[b * self.heads + h], start, stop)
        wanted = self._rows[start:stop]
        parts = []
        for run in np.split(wanted, np.flatnonzero(np.diff(wanted) != 1) + 1):  # original rows read a run at a time
            if run.size:
                parts.append(self._source.rows(b, h, int(run[0]), int(run[-1]) + 1)[:, self._cols])
        return np.concatenate(parts) if parts else np.zeros((0, self.kv_len), dtype=bool)

    def intervals(self) -> np.ndarray | None:
        return self._intervals


class PlanMask(PlanSource):
    """The mask a plan stands for, with the interval vectors of an interval or dense plan."""

    def intervals(self) -> np.ndarray | None:
        return interval_vectors(self.plan) if self.plan.variant in DERIVED_LISTS else None
