"""The sources behind the library's kinds: each mask's rows from a vectorised formula.

A :class:`FormulaSource` evaluates a numpy formula on the query and key index grids of the
requested rows only. Per-token tables (document starts, bucket ids, tree intervals) are O(n);
nothing is ever O(n × n) beyond the rows asked for, so a 131072-token library mask compiles in
bounded memory. ``True`` means the query (row) may attend the key (column).

Kinds whose key columns each mask at most two runs of query rows also give those runs directly
(:meth:`~maskc.sources.MaskSource.intervals`, O(n)), so the compiler builds their interval plans
without reading a single row: causal, full, sliding window, documents, prefix LM, shared question,
causal blockwise, Longformer with its global tokens in a leading and/or trailing run, token trees
numbered in depth-first preorder. BigBird and hash buckets scatter their keys and never fit; other
trees and global tokens may or may not, and the compiler decides from their rows.

The sources trust their arguments: :mod:`maskc.library` checks them first.
"""

from __future__ import annotations

import numpy as np

from maskc import intervals as iv_form
from maskc.runtime.format import LTE, LTS, UTE, UTS
from maskc.sources import MaskSource, check_rows


def _segment_starts(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each token of consecutive segments of ``lengths``: its segment's start and end."""
    ends = np.cumsum(lengths)
    starts = ends - lengths
    return np.repeat(starts, lengths), np.repeat(ends, lengths)


def _upper_lower(upper_end: np.ndarray, lower_start: np.ndarray, q_len: int) -> np.ndarray:
    """Interval vectors ``[1, 4, kv]`` masking rows ``[0, upper_end)`` and ``[lower_start, q_len)`` of each column."""
    out = np.empty((1, 4, upper_end.size), dtype=np.int64)
    out[0, UTS], out[0, UTE] = 0, upper_end
    out[0, LTS], out[0, LTE] = lower_start, q_len
    return out


class FormulaSource(MaskSource):
    """A single ``[q_len, kv_len]`` mask (batch 1, heads 1) whose rows come from a formula.

    Subclasses implement :meth:`formula` on the index grids ``q`` (``[rows, 1]``) and ``k``
    (``[1, kv_len]``), returning the ``[rows, kv_len]`` bool block.
    """

    def __init__(self, name: str, q_len: int, kv_len: int | None = None):
        self.name = name
        self.shape = (1, 1, q_len, q_len if kv_len is None else kv_len)

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def rows(self, b: int, h: int, start: int, stop: int) -> np.ndarray:
        check_rows(self, b, h, start, stop)
        if start == stop:
            return np.zeros((0, self.kv_len), dtype=bool)
        q = np.arange(start, stop, dtype=np.int64)[:, None]
        k = np.arange(self.kv_len, dtype=np.int64)[None, :]
        return self.formula(q, k)


class Causal(FormulaSource):
    """Rows of :func:`~maskc.library.causal`; key ``j`` is masked for queries ``[0, j)``."""

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        return k <= q

    def intervals(self) -> np.ndarray:
        j = np.arange(self.kv_len)
        return _upper_lower(j, np.full_like(j, self.q_len), self.q_len)


class Full(FormulaSource):
    """Rows of :func:`~maskc.library.full`; nothing is masked."""

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        return np.ones((q.shape[0], k.shape[1]), dtype=bool)

    def intervals(self) -> np.ndarray:
        return _upper_lower(np.zeros(self.kv_len, dtype=np.int64), np.full(self.kv_len, self.q_len), self.q_len)


class SlidingWindow(FormulaSource):
    """Rows of :func:`~maskc.library.sliding_window`."""

    def __init__(self, name: str, n: int, window: int, causal: bool):
        super().__init__(name, n)
        self.window, self.causal = window, causal

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        if self.causal:
            return (k <= q) & (k > q - self.window)
        return (k > q - self.window) & (k < q + self.window)

    def intervals(self) -> np.ndarray:
        """Key ``j`` is seen by queries ``[j, j + window)`` (causal) or ``(j - window, j + window)``."""
        j = np.arange(self.kv_len)
        first = j if self.causal else np.maximum(j - self.window + 1, 0)
        return _upper_lower(first, np.minimum(j + self.window, self.q_len), self.q_len)


class Segments(FormulaSource):
    """Rows of :func:`~maskc.library.documents` and :func:`~maskc.library.shared_question`:
    consecutive segments, a query sees its own segment (and, where ``shared`` is set, the shared
    first ``shared`` tokens causally)."""

    def __init__(self, name: str, lengths: np.ndarray, causal: bool, shared: int = 0):
        super().__init__(name, int(lengths.sum()))
        self.starts, self.ends = _segment_starts(lengths)
        self.causal, self.shared = causal, shared

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        own = (k >= self.starts[q]) & ((k <= q) if self.causal else (k < self.ends[q]))
        return own | ((k < self.shared) & (k <= q)) if self.shared else own

    def intervals(self) -> np.ndarray:
        """Key ``j`` is seen by its segment's queries from ``j`` (causal) or the segment start, up to
        the segment end; a shared key by every query from ``j`` on."""
        j = np.arange(self.kv_len)
        end = np.where(j < self.shared, self.q_len, self.ends)
        return _upper_lower(j if self.causal else self.starts, end, self.q_len)


class PrefixLM(FormulaSource):
    """Rows of :func:`~maskc.library.prefix_lm`."""

    def __init__(self, name: str, n: int, prefix: int):
        super().__init__(name, n)
        self.prefix = prefix

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        return (k <= q) | (k < self.prefix)

    def intervals(self) -> np.ndarray:
        """A prefix key is seen by every query; key ``j`` after it by queries ``[j, n)``."""
        j = np.arange(self.kv_len)
        return _upper_lower(np.where(j < self.prefix, 0, j), np.full_like(j, self.q_len), self.q_len)


class CausalBlockwise(FormulaSource):
    """Rows of :func:`~maskc.library.causal_blockwise`."""

    def __init__(self, name: str, n: int, block: int):
        super().__init__(name, n)
        self.block = block

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        return k // self.block <= q // self.block

    def intervals(self) -> np.ndarray:
        """Key ``j`` is seen by every query from the start of its block on."""
        j = np.arange(self.kv_len)
        return _upper_lower(j // self.block * self.block, np.full_like(j, self.q_len), self.q_len)


MAX_GLOBAL_RUNS = 16  # more runs of global tokens than this essentially never fit: the rows decide


class Longformer(FormulaSource):
    """Rows of :func:`~maskc.library.longformer`: a symmetric window plus global rows and columns."""

    def __init__(self, name: str, n: int, window: int, is_global: np.ndarray, causal: bool):
        super().__init__(name, n)
        self.window, self.is_global, self.causal = window, is_global, causal

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        local = (k > q - self.window) & (k < q + self.window)
        visible = local | self.is_global[q] | self.is_global[k]
        return visible & (k <= q) if self.causal else visible

    def intervals(self) -> np.ndarray | None:
        """Key ``j`` is seen by its window's queries and by every global query (all queries if
        ``j`` is global), from ``j`` on when causal. Its masked rows are the gaps between those
        runs; they fit two intervals when the global tokens form a leading and/or a trailing run
        (FlashMask's global + sliding window), and in general only then, so None otherwise."""
        n, window = self.q_len, self.window
        flags = np.concatenate([[False], self.is_global, [False]])
        edges = np.flatnonzero(flags[1:] != flags[:-1])
        g_starts, g_ends = edges[0::2], edges[1::2]
        if g_starts.size > MAX_GLOBAL_RUNS:
            return None
        j = np.arange(n)
        lowest = j if self.causal else np.zeros_like(j)
        starts = np.empty((n, 1 + g_starts.size), dtype=np.int64)
        ends = np.empty_like(starts)
        starts[:, 0] = np.maximum(j - window + 1, lowest)
        ends[:, 0] = np.minimum(j + window, n)
        starts[self.is_global, 0], ends[self.is_global, 0] = lowest[self.is_global], n
        starts[:, 1:] = np.maximum(g_starts[None, :], lowest[:, None])
        ends[:, 1:] = g_ends[None, :]
        masked = iv_form.complement_runs(*iv_form.merge_runs(starts, ends, n), n)
        vectors = iv_form.canonical_from_runs(*masked, n)
        return None if vectors is None else vectors[None]


class BigBird(Longformer):
    """Rows of :func:`~maskc.library.bigbird`: Longformer's window and globals plus, per query
    block, a table of random key blocks."""

    def __init__(self, name: str, n: int, window: int, is_global: np.ndarray, table: np.ndarray, block: int):
        super().__init__(name, n, window, is_global, causal=False)
        self.table, self.block = table, block

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        return super().formula(q, k) | self._random(q[:, 0] // self.block, k.shape[1])

    def intervals(self) -> None:
        """None: the random key blocks scatter each column's visible rows (the rows decide)."""
        return None

    def _random(self, q_blocks: np.ndarray, kv_len: int) -> np.ndarray:
        """The random key blocks of the rows' query blocks, expanded to keys (C order, for speed)."""
        first = int(q_blocks[0])
        span = self.table[first : int(q_blocks[-1]) + 1]
        hits = np.zeros((span.shape[0], self.table.shape[0]), dtype=bool)
        hits[np.arange(span.shape[0])[:, None], span] = True
        keys = np.repeat(hits, self.block, axis=1)[:, :kv_len]
        return keys[q_blocks - first]


class TokenTree(FormulaSource):
    """Rows of :func:`~maskc.library.token_tree` and :func:`~maskc.library.medusa`: each node sees its ancestors and itself.

    The ancestor test is an interval test on a preorder numbering: ``j`` is an ancestor of ``i``
    (or ``i`` itself) iff ``tin[j] <= tin[i] < tout[j]``. That keeps the tables O(n) and a row
    O(n) whatever the depth of the tree.
    """

    def __init__(self, name: str, parents: np.ndarray):
        super().__init__(name, parents.size)
        self.tin, self.tout = _preorder_intervals(parents)

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        return (self.tin[k] <= self.tin[q]) & (self.tin[q] < self.tout[k])

    def intervals(self) -> np.ndarray | None:
        """Key ``j`` is seen by its subtree. When the nodes are numbered in depth-first preorder
        (``tin`` is the identity), every subtree is the run ``[j, tout_j)`` and the mask fits;
        otherwise some subtree is scattered, and whether the mask still fits is left to the rows."""
        if not np.array_equal(self.tin, np.arange(self.tin.size)):
            return None
        return _upper_lower(np.arange(self.kv_len), self.tout, self.q_len)


def _preorder_intervals(parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Preorder index ``tin`` and ``tout = tin + subtree size`` of every node of a forest with ``parents[i] < i``."""
    parent = parents.tolist()
    size = [1] * len(parent)
    for i in range(len(parent) - 1, 0, -1):
        if parent[i] >= 0:
            size[parent[i]] += size[i]
    tin = [0] * len(parent)
    next_child_slot = [0] * len(parent)
    next_root_slot = 0
    for i, p in enumerate(parent):
        if p < 0:
            tin[i], next_root_slot = next_root_slot, next_root_slot + size[i]
        else:
            tin[i] = next_child_slot[p]
            next_child_slot[p] += size[i]
        next_child_slot[i] = tin[i] + 1
    tin_array = np.asarray(tin, dtype=np.int64)
    return tin_array, tin_array + np.asarray(size, dtype=np.int64)


class HashBuckets(FormulaSource):
    """Rows of :func:`~maskc.library.hash_buckets`."""

    def __init__(self, name: str, bucket: np.ndarray, causal: bool):
        super().__init__(name, bucket.size)
        self.bucket, self.causal = bucket, causal

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        same = self.bucket[q] == self.bucket[k]
        return same & (k <= q) if self.causal else same
