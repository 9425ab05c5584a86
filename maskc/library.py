"""The built-in mask library: the attention patterns of the literature, as formula-backed sources.

Every kind is a function that validates its arguments and returns a :class:`MaskSource` whose
:meth:`~MaskSource.rows` evaluates a vectorised numpy formula on the query and key index grids of
the requested rows only. Per-token tables (document starts, bucket ids, tree intervals) are O(n);
nothing is ever O(n × n) beyond the rows asked for, so a 131072-token library mask compiles in
bounded memory. ``True`` means the query (row) may attend the key (column).

Kinds whose key columns each mask at most two runs of query rows also give those runs directly
(:meth:`~MaskSource.intervals`, O(n)), so the compiler builds their interval plans without reading
a single row: causal, full, sliding window, documents, prefix LM, shared question, causal
blockwise, Longformer with its global tokens in a leading and/or trailing run, token trees
numbered in depth-first preorder, and stacks, unions and intersections of those where the result
still fits. BigBird and hash buckets scatter their keys and never fit; other trees and global
tokens may or may not, and the compiler decides from their rows.
"""

from __future__ import annotations

import heapq
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from maskc import intervals as iv_form
from maskc.errors import MaskError
from maskc.runtime.format import LTE, LTS, UTE, UTS
from maskc.sources import MaskSource


# --- argument checks -----------------------------------------------------------------------------


def _int(value: Any, param: str, kind: str, minimum: int) -> int:
    """``value`` as an int ``>= minimum``, or a MaskError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise MaskError(f"{kind}: {param} must be an integer, got {value!r}")
    if value < minimum:
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise MaskError(f"{kind}: {param} must be {what}, got {value}")
    return int(value)


def _int_array(values: Any, param: str, kind: str) -> np.ndarray:
    """A non-empty 1-D sequence of integers as an int64 array, or a MaskError naming the parameter."""
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise MaskError(f"{kind}: {param} must be a non-empty list of integers, got {values!r}")
    if array.dtype.kind not in "iu":
        raise MaskError(f"{kind}: {param} must hold integers only, got dtype {array.dtype}")
    return array.astype(np.int64)


def _lengths(values: Any, param: str, kind: str) -> np.ndarray:
    """Segment lengths: a non-empty list of positive integers."""
    lengths = _int_array(values, param, kind)
    bad = np.flatnonzero(lengths <= 0)
    if bad.size:
        i = int(bad[0])
        raise MaskError(f"{kind}: {param}[{i}] = {lengths[i]}; every length must be positive")
    return lengths


def _global_flags(n: int, tokens: Sequence[int], kind: str) -> np.ndarray:
    """A bool flag per token, True at the global token indices (which must lie in ``[0, n)``)."""
    flags = np.zeros(n, dtype=bool)
    if len(tokens) == 0:
        return flags
    indices = _int_array(tokens, "global_tokens", kind)
    bad = indices[(indices < 0) | (indices >= n)]
    if bad.size:
        raise MaskError(f"{kind}: global_tokens holds {bad[0]}, outside the sequence [0, {n})")
    flags[indices] = True
    return flags


def _parents(values: Any, kind: str) -> np.ndarray:
    """A parent array: entry ``i`` is -1 (a root) or the index of an earlier node."""
    parents = _int_array(values, "parents", kind)
    bad = np.flatnonzero((parents < -1) | (parents >= np.arange(parents.size)))
    if bad.size:
        i = int(bad[0])
        allowed = f"-1 (a root) or the index of an earlier node (0..{i - 1})" if i else "-1: the first node is a root"
        raise MaskError(f"{kind}: parents[{i}] = {parents[i]}; it must be {allowed}")
    return parents


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


# --- sources -------------------------------------------------------------------------------------


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
        _check_rows(self, b, h, start, stop)
        if start == stop:
            return np.zeros((0, self.kv_len), dtype=bool)
        q = np.arange(start, stop, dtype=np.int64)[:, None]
        k = np.arange(self.kv_len, dtype=np.int64)[None, :]
        return self.formula(q, k)


def _check_rows(source: MaskSource, b: int, h: int, start: int, stop: int) -> None:
    """Refuse a slice or row window outside the source's shape, rather than return wrong rows."""
    if not (0 <= b < source.batch and 0 <= h < source.heads and 0 <= start <= stop <= source.q_len):
        raise MaskError(f"{source.name}: rows({b}, {h}, {start}, {stop}) is outside the mask of shape {list(source.shape)}")


class Causal(FormulaSource):
    """Rows of :func:`causal`; key ``j`` is masked for queries ``[0, j)``."""

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        return k <= q

    def intervals(self) -> np.ndarray:
        j = np.arange(self.kv_len)
        return _upper_lower(j, np.full_like(j, self.q_len), self.q_len)


class Full(FormulaSource):
    """Rows of :func:`full`; nothing is masked."""

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        return np.ones((q.shape[0], k.shape[1]), dtype=bool)

    def intervals(self) -> np.ndarray:
        return _upper_lower(np.zeros(self.kv_len, dtype=np.int64), np.full(self.kv_len, self.q_len), self.q_len)


class SlidingWindow(FormulaSource):
    """Rows of :func:`sliding_window`."""

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
    """Rows of :func:`documents` and :func:`shared_question`: consecutive segments, a query sees
    its own segment (and, where ``shared`` is set, the shared first ``shared`` tokens causally)."""

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
    """Rows of :func:`prefix_lm`."""

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
    """Rows of :func:`causal_blockwise`."""

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
    """Rows of :func:`longformer`: a symmetric window plus global rows and columns."""

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
    """Rows of :func:`bigbird`: Longformer's window and globals plus, per query block, a table of random key blocks."""

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
    """Rows of :func:`token_tree` and :func:`medusa`: each node sees its ancestors and itself.

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
    """Rows of :func:`hash_buckets`."""

    def __init__(self, name: str, bucket: np.ndarray, causal: bool):
        super().__init__(name, bucket.size)
        self.bucket, self.causal = bucket, causal

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        same = self.bucket[q] == self.bucket[k]
        return same & (k <= q) if self.causal else same


class Stack(MaskSource):
    """Equally shaped single masks stacked along the heads or the batch dimension."""

    def __init__(self, sources: list[MaskSource], dim: str):
        self.sources, self.dim = sources, dim
        _, _, nq, nk = sources[0].shape
        count = len(sources)
        self.shape = (1, count, nq, nk) if dim == "heads" else (count, 1, nq, nk)
        names = [s.name for s in sources]
        self.name = f"stack({dim}={count}: {names[0]})" if len(set(names)) == 1 else f"stack({dim}: {', '.join(names)})"

    def rows(self, b: int, h: int, start: int, stop: int) -> np.ndarray:
        _check_rows(self, b, h, start, stop)
        return self.sources[h if self.dim == "heads" else b].rows(0, 0, start, stop)

    def intervals(self) -> np.ndarray | None:
        """Slice ``s`` is source ``s``: their vectors stacked, when every source has them."""
        parts = [source.intervals() for source in self.sources]
        return None if any(p is None for p in parts) else np.concatenate(parts)


class Combination(MaskSource):
    """The element-wise OR (:func:`union`) or AND (:func:`intersection`) of masks of one
    ``[q_len, kv_len]``, broadcast over batch and heads."""

    def __init__(self, op: str, sources: list[MaskSource], shape: tuple[int, int, int, int]):
        self.op, self.sources, self.shape = op, sources, shape
        self.name = f"{op}({', '.join(s.name for s in sources)})"

    def rows(self, b: int, h: int, start: int, stop: int) -> np.ndarray:
        _check_rows(self, b, h, start, stop)
        reduce = np.logical_or if self.op == "union" else np.logical_and
        out = None
        for source in self.sources:
            block = source.rows(b if source.batch > 1 else 0, h if source.heads > 1 else 0, start, stop)
            out = block.copy() if out is None else reduce(out, block, out=out)
        return out

    def intervals(self) -> np.ndarray | None:
        """From the operands' vectors, when all have them and the result still fits two intervals."""
        parts = []
        b, h = np.divmod(np.arange(self.batch * self.heads), self.heads)
        for source in self.sources:
            vectors = source.intervals()
            if vectors is None:
                return None
            parts.append(np.asarray(vectors)[np.where(source.batch > 1, b, 0) * source.heads + np.where(source.heads > 1, h, 0)])
        combine = iv_form.union if self.op == "union" else iv_form.intersection
        return combine(parts, self.q_len)


# --- the kinds -----------------------------------------------------------------------------------


def causal(n: int) -> MaskSource:
    """Decoder self-attention: query ``i`` sees keys ``j <= i``."""
    n = _int(n, "n", "causal", 1)
    return Causal(f"causal(n={n})", n)


def full(n: int, kv_len: int | None = None) -> MaskSource:
    """No masking: every query sees every key; ``kv_len`` (default ``n``) allows cross attention."""
    n = _int(n, "n", "full", 1)
    if kv_len is None:
        return Full(f"full(n={n})", n)
    kv_len = _int(kv_len, "kv_len", "full", 1)
    return Full(f"full(n={n}, kv_len={kv_len})", n, kv_len)


def sliding_window(n: int, window: int, causal: bool = True) -> MaskSource:
    """Local attention. ``window`` counts the keys a query sees on its side, itself included.

    Causal: query ``i`` sees ``i - window < j <= i`` (``window`` keys). Symmetric
    (``causal=False``): ``|i - j| < window`` (``2 * window - 1`` keys). ``window >= n`` is plain
    causal or full attention.
    """
    n = _int(n, "n", "sliding_window", 1)
    window = _int(window, "window", "sliding_window", 1)
    return SlidingWindow(f"sliding_window(n={n}, window={window}, causal={bool(causal)})", n, window, bool(causal))


def documents(lengths: Sequence[int], causal: bool = True) -> MaskSource:
    """Packed documents of ``lengths`` tokens (``n = sum(lengths)``); a token sees only its own
    document, causally or bidirectionally, so packing never leaks attention across documents."""
    lengths = _lengths(lengths, "lengths", "documents")
    name = f"documents(n={int(lengths.sum())}, docs={lengths.size}, causal={bool(causal)})"
    return Segments(name, lengths, bool(causal))


def prefix_lm(n: int, prefix: int) -> MaskSource:
    """Prefix LM: every token sees the prefix ``[0, prefix)`` bidirectionally; after it, causal."""
    n = _int(n, "n", "prefix_lm", 1)
    prefix = _int(prefix, "prefix", "prefix_lm", 0)
    if prefix > n:
        raise MaskError(f"prefix_lm: prefix ({prefix}) must not exceed n ({n})")
    return PrefixLM(f"prefix_lm(n={n}, prefix={prefix})", n, prefix)


def causal_blockwise(n: int, block: int) -> MaskSource:
    """Block-causal attention: the sequence is cut into blocks of ``block`` tokens (the last may be
    shorter); a query sees every key of the earlier blocks and of its own block, bidirectionally."""
    n = _int(n, "n", "causal_blockwise", 1)
    block = _int(block, "block", "causal_blockwise", 1)
    return CausalBlockwise(f"causal_blockwise(n={n}, block={block})", n, block)


def longformer(n: int, window: int, global_tokens: Sequence[int] = (), causal: bool = False) -> MaskSource:
    """Longformer: a symmetric sliding window (``|i - j| < window``) plus global tokens that see,
    and are seen by, every token. ``causal=True`` then keeps only ``j <= i``."""
    n = _int(n, "n", "longformer", 1)
    window = _int(window, "window", "longformer", 1)
    is_global = _global_flags(n, global_tokens, "longformer")
    name = f"longformer(n={n}, window={window}, globals={int(is_global.sum())}, causal={bool(causal)})"
    return Longformer(name, n, window, is_global, bool(causal))


def bigbird(
    n: int,
    window: int,
    global_tokens: Sequence[int] = (),
    random_blocks: int = 3,
    block: int = 64,
    seed: int = 0,
) -> MaskSource:
    """BigBird: Longformer's symmetric window and globals, plus for each query block of ``block``
    rows, ``random_blocks`` distinct key blocks drawn at random (seeded, so deterministic)."""
    n = _int(n, "n", "bigbird", 1)
    window = _int(window, "window", "bigbird", 1)
    is_global = _global_flags(n, global_tokens, "bigbird")
    random_blocks = _int(random_blocks, "random_blocks", "bigbird", 0)
    block = _int(block, "block", "bigbird", 1)
    seed = _int(seed, "seed", "bigbird", 0)
    blocks = -(-n // block)
    if random_blocks > blocks:
        raise MaskError(f"bigbird: random_blocks ({random_blocks}) exceeds the {blocks} key blocks of {block} tokens; lower it or the block size")
    rng = np.random.default_rng(seed)
    table = np.array([rng.choice(blocks, size=random_blocks, replace=False) for _ in range(blocks)], dtype=np.int64)
    name = f"bigbird(n={n}, window={window}, globals={int(is_global.sum())}, random_blocks={random_blocks}, block={block}, seed={seed})"
    return BigBird(name, n, window, is_global, table, block)


def shared_question(question: int, answers: Sequence[int]) -> MaskSource:
    """Shared-prefix packing (DPO, reward models): a causal question of ``question`` tokens, then
    answers of lengths ``answers``; each answer sees the whole question and itself causally, never
    another answer, so one forward pass scores every answer against one copy of the question."""
    question = _int(question, "question", "shared_question", 1)
    answers = _lengths(answers, "answers", "shared_question")
    lengths = np.concatenate([[question], answers])
    name = f"shared_question(question={question}, answers={answers.size}, n={int(lengths.sum())})"
    return Segments(name, lengths, causal=True, shared=question)


def token_tree(parents: Sequence[int]) -> MaskSource:
    """Tree attention (speculative decoding): node ``i`` sees its ancestors and itself.

    ``parents[i]`` is -1 for a root or the index of an earlier node (``parents[i] < i``), so
    ``parents[0] == -1``; several roots make a forest.
    """
    parents = _parents(parents, "token_tree")
    return TokenTree(f"token_tree(n={parents.size})", parents)


def medusa(prompt: int, parents: Sequence[int]) -> MaskSource:
    """Medusa-style verification: a causal prompt of ``prompt`` tokens, then a candidate tree
    (``parents`` relative to the tree, -1 = hangs off the last prompt token). A tree node sees the
    whole prompt plus its ancestors in the tree and itself."""
    prompt = _int(prompt, "prompt", "medusa", 1)
    tree = _parents(parents, "medusa")
    chain = np.arange(-1, prompt - 1, dtype=np.int64)
    combined = np.concatenate([chain, np.where(tree < 0, prompt - 1, tree + prompt)])
    return TokenTree(f"medusa(prompt={prompt}, nodes={tree.size})", combined)


def candidate_tree(n_nodes: int, depth: int = 4, top_k: int = 10, seed: int = 0) -> np.ndarray:
    """A realistic Medusa candidate tree of ``n_nodes`` nodes, as a parent array for :func:`medusa`.

    Each of ``depth`` heads proposes ``top_k`` tokens with seeded, sorted acceptance probabilities;
    like Medusa's tree builder, the nodes kept are the ``n_nodes`` paths of highest joint
    probability, which gives wide first levels and thinner deeper ones. Nodes come in order of
    selection, so a parent always precedes its children.
    """
    n_nodes = _int(n_nodes, "n_nodes", "candidate_tree", 1)
    depth = _int(depth, "depth", "candidate_tree", 1)
    top_k = _int(top_k, "top_k", "candidate_tree", 1)
    seed = _int(seed, "seed", "candidate_tree", 0)
    capacity = sum(top_k**d for d in range(1, depth + 1))
    if n_nodes > capacity:
        raise MaskError(f"candidate_tree: n_nodes ({n_nodes}) exceeds the {capacity} nodes of a depth-{depth}, top-{top_k} tree")
    rng = np.random.default_rng(seed)
    accept = -np.sort(-rng.dirichlet(np.full(top_k, 0.5), size=depth), axis=1)
    parents: list[int] = []
    # (-path probability, tie-break, parent, parent's path probability, level, rank): best first
    heap = [(-accept[0, 0], 0, -1, 1.0, 0, 0)]
    while len(parents) < n_nodes:
        neg_p, _, parent, parent_p, level, rank = heapq.heappop(heap)
        node = len(parents)
        parents.append(parent)
        if rank + 1 < top_k:
            heapq.heappush(heap, (-parent_p * accept[level, rank + 1], 2 * node + 1, parent, parent_p, level, rank + 1))
        if level + 1 < depth:
            heapq.heappush(heap, (neg_p * accept[level + 1, 0], 2 * node + 2, node, -neg_p, level + 1, 0))
    return np.asarray(parents, dtype=np.int64)


def hash_buckets(n: int, buckets: int, causal: bool = True, seed: int = 0) -> MaskSource:
    """Bucketed attention (Reformer-like): each token gets a seeded random bucket and sees the
    tokens of its own bucket (causally). Scattered on purpose: a test case for reordering."""
    n = _int(n, "n", "hash_buckets", 1)
    buckets = _int(buckets, "buckets", "hash_buckets", 1)
    seed = _int(seed, "seed", "hash_buckets", 0)
    bucket = np.random.default_rng(seed).integers(0, buckets, size=n)
    return HashBuckets(f"hash_buckets(n={n}, buckets={buckets}, causal={bool(causal)}, seed={seed})", bucket, bool(causal))


def stack(sources: Sequence[MaskSource], dim: str = "heads") -> MaskSource:
    """Stack single ``[q_len, kv_len]`` masks into one with a mask per head (``dim="heads"``) or
    per batch element (``dim="batch"``), e.g. a different window on every head."""
    if dim not in ("heads", "batch"):
        raise MaskError(f"stack: dim must be 'heads' or 'batch', got {dim!r}")
    sources = list(sources)
    if not sources:
        raise MaskError("stack: sources is empty; give at least one mask source")
    for i, source in enumerate(sources):
        if not isinstance(source, MaskSource):
            raise MaskError(f"stack: sources[{i}] is a {type(source).__name__}, not a MaskSource")
        if source.shape[:2] != (1, 1):
            raise MaskError(f"stack: sources[{i}] ({source.name}) has batch and heads {list(source.shape[:2])}; only single masks (1, 1) can be stacked")
        if source.shape != sources[0].shape:
            raise MaskError(f"stack: sources[{i}] ({source.name}) has shape {list(source.shape[2:])}, but sources[0] has {list(sources[0].shape[2:])}")
    return Stack(sources, dim)


def _combine(op: str, sources: Sequence[MaskSource]) -> MaskSource:
    sources = list(sources)
    if len(sources) < 2:
        raise MaskError(f"{op}: give at least two mask sources, got {len(sources)}")
    for i, source in enumerate(sources):
        if not isinstance(source, MaskSource):
            raise MaskError(f"{op}: sources[{i}] is a {type(source).__name__}, not a MaskSource")
        if source.shape[2:] != sources[0].shape[2:]:
            raise MaskError(f"{op}: sources[{i}] ({source.name}) is {list(source.shape[2:])}, but sources[0] is {list(sources[0].shape[2:])}")
    batch, heads = max(s.batch for s in sources), max(s.heads for s in sources)
    for i, source in enumerate(sources):
        if source.batch not in (1, batch) or source.heads not in (1, heads):
            raise MaskError(f"{op}: sources[{i}] ({source.name}) has batch and heads {list(source.shape[:2])}, which do not broadcast to {[batch, heads]}")
    return Combination(op, sources, (batch, heads, *sources[0].shape[2:]))


def union(*sources: MaskSource) -> MaskSource:
    """A pair is visible where it is visible in any of ``sources`` (same ``[q_len, kv_len]``; batch
    and heads of 1 broadcast), e.g. a sliding window plus a few global columns."""
    return _combine("union", sources)


def intersection(*sources: MaskSource) -> MaskSource:
    """A pair is visible where it is visible in every one of ``sources`` (shapes as for
    :func:`union`), e.g. packed documents restricted to a sliding window."""
    return _combine("intersection", sources)


KINDS: dict[str, Callable[..., MaskSource]] = {
    "causal": causal,
    "full": full,
    "sliding-window": sliding_window,
    "documents": documents,
    "prefix-lm": prefix_lm,
    "longformer": longformer,
    "bigbird": bigbird,
    "shared-question": shared_question,
    "token-tree": token_tree,
    "medusa": medusa,
    "hash-buckets": hash_buckets,
}
"""The library's kinds by their CLI name (``maskc mask KIND``)."""
