"""The interval form on the compiler side: canonical vectors, set algebra, detection from rows, hash.

A mask fits the interval form when, in every slice, every key column's masked query rows are at
most two runs. The vectors (rows LTS, LTE, UTS, UTE of an int32 ``[slices, 4, kv_len]`` array) are
kept **canonical**, so that equal masks give equal vectors whatever their source:

- the masked runs of a column are maximal (two runs never touch or overlap);
- with two runs, the upper interval ``[UTS, UTE)`` is the one with the smaller rows, the lower
  ``[LTS, LTE)`` the other;
- a single run is upper if it starts at row 0, lower otherwise;
- an empty upper interval is ``[0, 0)``, an empty lower one ``[q_len, q_len)``.

Structured sources produce their vectors in O(kv_len) from their parameters
(:meth:`MaskSource.intervals`); any other source is read once, row block by row block, by
:class:`RunTracker`, which follows every column's runs with vectorised numpy and never holds more
than one block of rows.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np

from maskc.runtime.format import LTE, LTS, UTE, UTS

Shape4 = tuple[int, int, int, int]


# --- runs: per-column sets of rows as sorted interval lists ----------------------------------------


def merge_runs(starts: np.ndarray, ends: np.ndarray, q_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The union of each column's intervals as sorted maximal runs.

    ``starts``/``ends`` are ``[kv, c]`` (an interval is empty where start >= end). Returns two
    ``[kv, c]`` int64 arrays: each column's runs in ascending order, touching or overlapping
    intervals merged, followed by empty ``[q_len, q_len)`` slots.
    """
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    empty = starts >= ends
    s = np.where(empty, q_len, starts)
    e = np.where(empty, q_len, ends)
    order = np.argsort(s, axis=1, kind="stable")
    s, e = np.take_along_axis(s, order, 1), np.take_along_axis(e, order, 1)
    valid = s < e  # the empty slots sort last (start q_len) and stay invalid
    reach = np.maximum.accumulate(e, axis=1)
    new = valid.copy()
    new[:, 1:] &= s[:, 1:] > reach[:, :-1]
    run = np.cumsum(new, axis=1) - 1
    last = valid.copy()
    last[:, :-1] &= new[:, 1:] | ~valid[:, 1:]
    out_s = np.full(s.shape, q_len, dtype=np.int64)
    out_e = np.full(s.shape, q_len, dtype=np.int64)
    col, pos = np.nonzero(new)
    out_s[col, run[col, pos]] = s[col, pos]
    col, pos = np.nonzero(last)
    out_e[col, run[col, pos]] = reach[col, pos]
    return out_s, out_e


def complement_runs(starts: np.ndarray, ends: np.ndarray, q_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``[0, q_len)`` outside sorted maximal runs (as :func:`merge_runs` returns them)."""
    kv = starts.shape[0]
    gap_s = np.concatenate([np.zeros((kv, 1), dtype=np.int64), ends], axis=1)
    gap_e = np.concatenate([starts, np.full((kv, 1), q_len, dtype=np.int64)], axis=1)
    return merge_runs(gap_s, gap_e, q_len)


def canonical_from_runs(starts: np.ndarray, ends: np.ndarray, q_len: int) -> np.ndarray | None:
    """Canonical ``[4, kv]`` vectors of sorted maximal masked runs, or None if a column has more than two."""
    count = (starts < ends).sum(axis=1)
    if np.any(count > 2):
        return None
    q = q_len
    a0, b0 = starts[:, 0], ends[:, 0]
    a1, b1 = (starts[:, 1], ends[:, 1]) if starts.shape[1] > 1 else (np.full_like(a0, q), np.full_like(b0, q))
    two, one = count == 2, count == 1
    upper = two | (one & (a0 == 0))
    lower_single = one & (a0 != 0)
    out = np.empty((4, starts.shape[0]), dtype=np.int64)
    out[UTS] = np.where(upper, a0, 0)
    out[UTE] = np.where(upper, b0, 0)
    out[LTS] = np.where(two, a1, np.where(lower_single, a0, q))
    out[LTE] = np.where(two, b1, np.where(lower_single, b0, q))
    return out.astype(np.int32)


def _masked_runs(iv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One slice's two masked intervals as ``[kv, 2]`` starts and ends."""
    return np.stack([iv[UTS], iv[LTS]], axis=1), np.stack([iv[UTE], iv[LTE]], axis=1)


def canonical(intervals: np.ndarray, q_len: int) -> np.ndarray:
    """Canonical form of valid interval vectors ``[S, 4, kv]`` (any two intervals per column)."""
    intervals = np.asarray(intervals, dtype=np.int64)
    out = np.empty(intervals.shape, dtype=np.int32)
    for s, iv in enumerate(intervals):
        out[s] = canonical_from_runs(*merge_runs(*_masked_runs(iv), q_len), q_len)
    return out


def union(operands: Sequence[np.ndarray], q_len: int) -> np.ndarray | None:
    """Canonical vectors of the OR of equally shaped masks ``[S, 4, kv]`` (a pair is visible if it
    is in any operand), or None where some column's masked rows would need more than two runs."""
    out = []
    for slices in zip(*operands):
        visible = [complement_runs(*merge_runs(*_masked_runs(iv), q_len), q_len) for iv in slices]
        merged = merge_runs(np.concatenate([v[0] for v in visible], axis=1), np.concatenate([v[1] for v in visible], axis=1), q_len)
        result = canonical_from_runs(*complement_runs(*merged, q_len), q_len)
        if result is None:
            return None
        out.append(result)
    return np.stack(out)


def intersection(operands: Sequence[np.ndarray], q_len: int) -> np.ndarray | None:
    """Canonical vectors of the AND of equally shaped masks ``[S, 4, kv]``, or None where some
    column's masked rows (the union of the operands') would need more than two runs."""
    out = []
    for slices in zip(*operands):
        runs = [_masked_runs(iv) for iv in slices]
        merged = merge_runs(np.concatenate([r[0] for r in runs], axis=1), np.concatenate([r[1] for r in runs], axis=1), q_len)
        result = canonical_from_runs(*merged, q_len)
        if result is None:
            return None
        out.append(result)
    return np.stack(out)


# --- detection from rows -------------------------------------------------------------------------


class RunTracker:
    """Follows every key column of one mask slice down its rows, one block of rows at a time.

    A column fits while its masked rows form at most two runs, i.e. at most four switches between
    visible and masked (counting the virtual visible rows above row 0 and below the last). For each
    block, the switches are found with one vectorised comparison against the row above; their
    positions are recorded only while every column still fits, so the work beyond reading the
    rows is O(kv_len) per fitting mask. The first column that stops fitting ends the tracking.
    """

    def __init__(self, q_len: int, kv_len: int):
        self.q_len, self.kv_len = q_len, kv_len
        self.switches = np.full((kv_len, 4), q_len, dtype=np.int64)
        self.count = np.zeros(kv_len, dtype=np.int64)
        self.last_masked = np.zeros(kv_len, dtype=bool)
        self.row = 0
        self.failure: str | None = None

    def update(self, visible: np.ndarray) -> bool:
        """Feed the next rows (bools ``[rows, kv_len]``); False once the slice no longer fits."""
        if self.failure is not None:
            return False
        masked = ~visible
        switch = np.empty_like(masked)
        switch[0] = masked[0] ^ self.last_masked
        np.not_equal(masked[1:], masked[:-1], out=switch[1:])
        count = self.count + switch.sum(axis=0)
        if np.any(count > 4):
            j = int(np.argmax(count > 4))
            self.failure = f"key column {j} has more than two runs of masked rows (by row {self.row + masked.shape[0] - 1})"
            return False
        rows, cols = np.nonzero(switch)
        order = np.argsort(cols, kind="stable")
        rows, cols = rows[order], cols[order]
        first = np.searchsorted(cols, cols, side="left")
        self.switches[cols, self.count[cols] + np.arange(cols.size) - first] = self.row + rows
        self.count = count
        self.last_masked = masked[-1].copy()
        self.row += masked.shape[0]
        return True

    def finish(self) -> np.ndarray | None:
        """The slice's canonical ``[4, kv_len]`` vectors once every row was fed, or None."""
        if self.failure is not None:
            return None
        closing = np.flatnonzero(self.last_masked)  # a run still open at the last row ends at q_len
        if closing.size:
            if np.any(self.count[closing] >= 4):
                j = int(closing[np.argmax(self.count[closing] >= 4)])
                self.failure = f"key column {j} has more than two runs of masked rows"
                return None
            self.switches[closing, self.count[closing]] = self.q_len
            self.count[closing] += 1
        runs_s, runs_e = self.switches[:, 0::2], self.switches[:, 1::2]
        return canonical_from_runs(runs_s, runs_e, self.q_len)


# --- the interval-form hash ----------------------------------------------------------------------


def intervals_sha256(shape: Shape4, intervals: np.ndarray) -> str:
    """The hash of a mask in interval form: SHA-256 over the ASCII bytes ``maskc-intervals-v1``,
    the shape ``[batch, heads, q_len, kv_len]`` as four uint64 little-endian, and the canonical
    vectors as int32 little-endian in C order. Equal masks give equal hashes, whatever the source."""
    hasher = hashlib.sha256(b"maskc-intervals-v1")
    hasher.update(struct.pack("<4Q", *shape))
    hasher.update(np.ascontiguousarray(intervals, dtype="<i4").tobytes())
    return hasher.hexdigest()
