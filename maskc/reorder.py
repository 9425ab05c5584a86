"""Token reordering: Reverse Cuthill–McKee on a self-attention mask's sparsity pattern.

A mask that is scattered only because of the order of its tokens (a band under a random
permutation, hash buckets, a random sparse graph) touches far more tiles than the same pattern with
the tokens renumbered. RCM finds such a renumbering: it orders the tokens breadth-first from a
peripheral one, so that the visible pairs gather near the diagonal. The plan then describes the
permuted mask ``M'[i, j] = M[perm[i], perm[j]]``, and the kernels read q, k, v (and write the
outputs) through the permutation.

Decisions, for the record:

- Only self-attention masks (``q_len == kv_len``) are reordered, since one permutation renumbers
  both queries and keys.
- One permutation serves every mask slice (batch and heads), whatever head reads the rows. It is
  the RCM order of the union of the slices' patterns.
- The pattern is symmetrised (``A + Aᵀ``) for RCM: a causal pair ``j <= i`` and its mirror image
  both pull ``i`` and ``j`` together.

The pattern is built from the blocks of rows the compiler reads anyway (:class:`PatternBuilder`),
into CSR — never a dense ``N × N`` copy — and is bounded by :data:`MAX_REORDER_PAIRS` visible pairs: a 16384-token mask with a band of 256 has
about 8.4M, a few tens of MB. Whether a permutation is kept is the cost model's decision
(:mod:`maskc.cost`): the slower, permuted row accesses it costs must be repaid by the tiles it saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import reverse_cuthill_mckee

from maskc.bitmaps import BitmapBuilder
from maskc.errors import MaskError
from maskc.runtime.format import inverse_permutation
from maskc.scan import Progress, read_rows
from maskc.sources import MaskSource
from maskc.work import is_count

MAX_REORDER_PAIRS = 1 << 25  # visible pairs (summed over slices) beyond which no pattern is built


class PatternBuilder:
    """Collects a mask's visible pairs, slice by slice and row block by row block, as CSR indices.

    Stops collecting (``overflow`` set) once more than ``max_pairs`` pairs were seen, so a dense
    mask never costs more than that bound in memory.
    """

    def __init__(self, shape: tuple[int, int, int, int], max_pairs: int | None = None):
        self.shape = shape
        self.max_pairs = MAX_REORDER_PAIRS if max_pairs is None else max_pairs
        self.counts = [np.zeros(shape[2], dtype=np.int64) for _ in range(shape[0] * shape[1])]
        self.columns: list[list[np.ndarray]] = [[] for _ in range(shape[0] * shape[1])]
        self.pairs = 0
        self.overflow = False

    def add(self, s: int, start: int, rows: np.ndarray) -> None:
        """Record rows ``start : start + len(rows)`` of slice ``s`` (bools ``[rows, kv_len]``)."""
        if self.overflow:
            return
        counts = rows.sum(axis=1, dtype=np.int64)
        self.pairs += int(counts.sum())
        if self.pairs > self.max_pairs:
            self.overflow = True
            self.columns = []
            return
        self.counts[s][start : start + rows.shape[0]] = counts
        self.columns[s].append(np.nonzero(rows)[1].astype(np.int32))

    def patterns(self) -> list[sp.csr_array]:
        """One boolean CSR ``[q_len, kv_len]`` per slice."""
        if self.overflow:
            raise MaskError(f"the mask has more than {self.max_pairs} visible pairs; it is too dense to reorder")
        out = []
        for counts, cols in zip(self.counts, self.columns):
            indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            indices = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int32)
            data = np.ones(indices.size, dtype=bool)
            out.append(sp.csr_array((data, indices, indptr), shape=self.shape[2:]))
        return out


def rcm_permutation(patterns: list[sp.csr_array]) -> np.ndarray:
    """The Reverse Cuthill–McKee order (int32 ``perm``, ``perm[i]`` = the token placed at ``i``) of
    the symmetrised union of the slices' patterns."""
    n = patterns[0].shape[0]
    if patterns[0].shape != (n, n):
        raise MaskError(f"only self-attention masks are reordered; this one is {patterns[0].shape[0]}x{patterns[0].shape[1]}")
    union = patterns[0]
    for p in patterns[1:]:
        union = union + p  # boolean: a pair is in the union if any slice has it
    graph = (union + union.T).tocsr()
    graph.sort_indices()
    return np.ascontiguousarray(reverse_cuthill_mckee(graph, symmetric_mode=True), dtype="<i4")


def bandwidth(patterns: list[sp.csr_array], perm: np.ndarray | None = None) -> int:
    """The largest ``|i - j|`` over the visible pairs of every slice (after ``perm``, when given)."""
    inverse = inverse_permutation(perm).astype(np.int64) if perm is not None else None
    widest = 0
    for pattern in patterns:
        coo = pattern.tocoo()
        rows, cols = coo.row.astype(np.int64), coo.col.astype(np.int64)
        if inverse is not None:
            rows, cols = inverse[rows], inverse[cols]
        if rows.size:
            widest = max(widest, int(np.abs(rows - cols).max()))
    return widest


class PermutedSource(MaskSource):
    """The rows of ``P·M·Pᵀ`` — row ``i`` is ``M[perm[i], perm[:]]`` — built from each slice's CSR,
    one block of rows at a time."""

    def __init__(self, patterns: list[sp.csr_array], perm: np.ndarray, shape: tuple[int, int, int, int], name: str):
        self.shape, self.name = shape, f"rcm({name})"
        self.perm = np.asarray(perm, dtype=np.int64)
        self._inverse = inverse_permutation(self.perm).astype(np.int64)
        self._patterns = patterns

    def rows(self, b: int, h: int, start: int, stop: int) -> np.ndarray:
        if not (0 <= b < self.batch and 0 <= h < self.heads and 0 <= start <= stop <= self.q_len):
            raise MaskError(f"{self.name}: rows({b}, {h}, {start}, {stop}) is outside the mask of shape {list(self.shape)}")
        picked = self._patterns[b * self.heads + h][self.perm[start:stop]]
        out = np.zeros((stop - start, self.kv_len), dtype=bool)
        row = np.repeat(np.arange(stop - start), np.diff(picked.indptr))
        out[row, self._inverse[picked.indices]] = True
        return out


@dataclass(frozen=True)
class Reordering:
    """An RCM permutation of a mask and the permuted mask as a source."""

    perm: np.ndarray
    source: PermutedSource
    bandwidth_before: int
    bandwidth_after: int

    @classmethod
    def of(cls, original: MaskSource, patterns: list[sp.csr_array]) -> "Reordering":
        perm = rcm_permutation(patterns)
        permuted = PermutedSource(patterns, perm, original.shape, original.name)
        return cls(perm, permuted, bandwidth(patterns), bandwidth(patterns, perm))

    def arrays(self, block: tuple[int, int], progress: Progress | None) -> dict[str, np.ndarray]:
        """The block-sparse arrays of the permuted mask (read from its rows) and the permutation."""
        builder = BitmapBuilder(self.source.shape, *block)
        read_rows(self.source, block[0], progress, [builder], track=False)
        return {**builder.arrays(), "perm": self.perm}

    def record(self, before: np.ndarray, after: dict[str, np.ndarray]) -> dict[str, Any]:
        """The plan's ``options.reorder``: the tiles visited before (``before``: the original mask's
        tile classes) and after (the permuted ``after`` lists), and the bandwidths."""
        full = int(after["row_full"].sum(dtype=np.int64))
        return {
            "method": "rcm",
            "tiles_before": {"full": int((before == 1).sum()), "partial": int((before == 2).sum())},
            "tiles_after": {"full": full, "partial": int(after["row_col"].shape[0]) - full},
            "bandwidth_before": self.bandwidth_before,
            "bandwidth_after": self.bandwidth_after,
        }


def shown_record(record: Any) -> dict[str, Any]:
    """What can be shown of a plan's ``options.reorder`` (plain data from a file): the fields of
    :meth:`Reordering.record` that are well-formed, never raising."""
    if not isinstance(record, dict):
        return {}
    out: dict[str, Any] = {}
    if isinstance(record.get("method"), str):
        out["method"] = record["method"]
    for name in ("tiles_before", "tiles_after"):
        tiles = record.get(name)
        if isinstance(tiles, dict) and all(is_count(tiles.get(k)) for k in ("full", "partial")):
            out[name] = {"full": tiles["full"], "partial": tiles["partial"]}
    for name in ("bandwidth_before", "bandwidth_after"):
        if is_count(record.get(name)):
            out[name] = record[name]
    return out
