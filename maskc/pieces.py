"""Dense pieces: a mask written as a few rectangles, each all-visible or causal.

Many masks are a handful of dense blocks: prefix-LM is every query against the prefix's keys plus a
causal square after it, a shared-question mask is a causal question, the answers' rows against it,
and one causal square per answer. Each such piece runs with the fastest dense attention there is,
and the backward of attention splits over pieces exactly: given the whole mask's output ``O`` and
log-sum-exp, a piece's ``dQ``, ``dK``, ``dV`` are its share of the sums, and the shares add up
(``maskc.runtime.pieces``). A plan may carry them; the cost model decides whether its backward
runs through them.

A piece is ``(q0, q1, k0, k1, causal)``: rows ``[q0, q1)`` see keys ``[k0, k1)``, all of them, or,
``causal`` (a square, ``q1 - q0 == k1 - k0``), key ``k0 + t`` from row ``q0 + t`` on. The pieces of a
mask are disjoint, their bounding boxes too, and cover exactly its visible pairs.
"""

from __future__ import annotations

import numpy as np

from maskc.runtime.format import LTE, LTS, MAX_PIECES, PIECE_FIELDS, UTE, UTS

__all__ = ["MAX_PIECES", "PIECE_FIELDS", "find_pieces"]


def find_pieces(vectors: np.ndarray, q_len: int, max_pieces: int = MAX_PIECES) -> np.ndarray | None:
    """The dense pieces of a one-slice mask given by its interval vectors ``[1, 4, kv_len]``, as int32
    ``[n, 5]`` rows of :data:`PIECE_FIELDS` ordered by key then row; None when the mask has more than
    ``max_pieces`` of them (or several slices). O(kv_len) numpy plus a loop over the pieces.

    Each key column's visible rows are at most three runs (the complement of two masked intervals).
    Neighbouring columns whose runs end on the same rows and start on the same rows (a rectangle)
    or one row further down (a causal edge) belong to the same pieces; a run of columns with a
    causal edge is a causal square with, if its runs reach further down, a rectangle under it.
    """
    if vectors.shape[0] != 1:
        return None
    starts, ends = _visible_runs(vectors[0], q_len)
    kv_len = starts.shape[0]
    counts = (ends > starts).sum(1)
    step = starts[1:] - starts[:-1]
    used = np.arange(3)[None, :] < counts[1:, None]
    same = (counts[1:] == counts[:-1]) & np.all(~used | ((ends[1:] == ends[:-1]) & ((step == 0) | (step == 1))), 1)
    step = np.where(used, step, 0)
    # A column starts a new piece where it does not continue its neighbour, or where its edge
    # changes kind (rectangle / causal) from the neighbour's own step.
    changes = np.ones(kv_len, dtype=bool)
    changes[1:] = ~same
    changes[2:] |= np.any(step[1:] != step[:-1], 1)
    breaks = np.flatnonzero(changes)
    if breaks.size > 2 * max_pieces + 2:
        return None
    pieces: list[tuple[int, int, int, int, int]] = []
    j0 = 0
    while j0 < kv_len:
        j1 = j0 + 1
        if j1 < kv_len and same[j0]:  # the piece takes every following column up to the next break
            later = breaks[breaks > j1]
            j1 = int(later[0]) if later.size else kv_len
        width = j1 - j0
        for r in range(int(counts[j0])):
            a, b = int(starts[j0, r]), int(ends[j0, r])
            causal = width > 1 and step[j0, r] == 1
            if causal:
                pieces.append((a, a + width, j0, j1, 1))
                a += width
            if a < b:
                pieces.append((a, b, j0, j1, 0))
        if len(pieces) > max_pieces:
            return None
        j0 = j1
    if not pieces:
        return None
    return np.array(sorted(pieces, key=lambda p: (p[2], p[0])), dtype="<i4").reshape(-1, len(PIECE_FIELDS))


def _visible_runs(iv: np.ndarray, q_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Per key column the visible runs of rows ``[start, end)``, up to three, non-empty ones first in
    row order, empty ones as ``(q_len, q_len)``: ``[kv_len, 3]`` each."""
    s1, e1, s2, e2 = (iv[i].astype(np.int64) for i in (LTS, LTE, UTS, UTE))
    # order the two masked intervals, an empty one as [q_len, q_len) after the other
    empty1, empty2 = s1 >= e1, s2 >= e2
    s1, e1 = np.where(empty1, q_len, s1), np.where(empty1, q_len, e1)
    s2, e2 = np.where(empty2, q_len, s2), np.where(empty2, q_len, e2)
    swap = s2 < s1
    s1, s2 = np.where(swap, s2, s1), np.where(swap, s1, s2)
    e1, e2 = np.where(swap, e2, e1), np.where(swap, e1, e2)
    e1 = np.maximum(e1, np.where(s2 <= e1, e2, e1))  # overlapping or touching: one interval
    s2 = np.where(s2 <= e1, q_len, s2)
    e2 = np.where(s2 == q_len, q_len, np.maximum(e2, s2))
    starts = np.stack([np.zeros_like(s1), e1, e2], 1)
    ends = np.stack([s1, s2, np.full_like(s1, q_len)], 1)
    nonempty = ends > starts
    order = np.argsort(~nonempty, axis=1, kind="stable")
    starts = np.where(np.take_along_axis(nonempty, order, 1), np.take_along_axis(starts, order, 1), q_len)
    ends = np.where(np.take_along_axis(nonempty, order, 1), np.take_along_axis(ends, order, 1), q_len)
    return starts, ends
