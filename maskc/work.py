"""The work of a candidate: what running a mask one way asks of the GPU, independent of the call's shape.

A mask can run as the block-sparse kernel (partial tiles as bitmaps) or the interval kernel (partial
tiles rebuilt from column intervals, masks that fit only), at 64×64 or 128×128 tiles, with or
without an RCM token reordering (block-sparse only), with its backward through its dense pieces or
the tile kernels, or — when it is all-true or exactly causal — as dense SDPA (``"dense"`` /
``"dense_causal"``): each is a :class:`Candidate`.

What the cost model needs of a candidate is shape-independent and stored in the plan
(``meta.predictions``), so a prediction can be re-evaluated for any batch, heads, head dim and
dtype: per list kind (query-tile rows, key-tile columns) over all mask slices, the number of lists,
of full and of partial tiles, and the Pareto front of per-list ``(full, partial)`` counts — the
lists that could be the heaviest under any positive tile costs. Dense candidates need only the
visible pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from maskc.runtime.format import DENSE_VARIANTS, Plan, PlanError, piece_pairs


def pareto_front(full: np.ndarray, partial: np.ndarray) -> tuple[tuple[int, int], ...]:
    """The ``(full, partial)`` pairs no other pair dominates (both counts at least as large): the
    lists that can be the heaviest whatever the (positive) per-tile costs. Sorted by ``full`` descending."""
    if full.size == 0:
        return ()
    points = np.unique(np.stack([full, partial], axis=1).astype(np.int64), axis=0)[::-1]  # by full descending
    front, best = [], -1
    for f, p in points:
        if p > best:
            front.append((int(f), int(p)))
            best = p
    return tuple(front)


@dataclass(frozen=True)
class ListWork:
    """The lists of one kind (query-tile rows or key-tile columns) over every mask slice."""

    lists: int
    full: int
    partial: int
    front: tuple[tuple[int, int], ...]

    @classmethod
    def from_counts(cls, full: np.ndarray, partial: np.ndarray) -> "ListWork":
        return cls(int(full.size), int(full.sum(dtype=np.int64)), int(partial.sum(dtype=np.int64)), pareto_front(full, partial))

    def as_dict(self) -> dict[str, Any]:
        return {"lists": self.lists, "full": self.full, "partial": self.partial, "front": [list(p) for p in self.front]}

    @classmethod
    def from_dict(cls, d: Any) -> "ListWork":
        if not isinstance(d, dict):
            raise PlanError("prediction work lists must be a map")
        ints = [d.get(k) for k in ("lists", "full", "partial")]
        front = d.get("front")
        if not all(is_count(v) for v in ints) or not isinstance(front, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(is_count(v) for v in p) for p in front
        ):
            raise PlanError("prediction work lists must hold counts lists, full, partial and a front of [full, partial] pairs")
        return cls(*ints, tuple(tuple(p) for p in front))



def is_count(v: Any) -> bool:
    """A non-negative integer (not a boolean), as recorded counts must be."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


@dataclass(frozen=True)
class Work:
    """What a candidate asks of the GPU, independent of the workload's shape.

    ``rows``/``cols`` for the tile kernels; ``pairs`` (visible pairs over all slices) for dense SDPA;
    ``pieces``, when the mask is a few dense pieces (:mod:`maskc.pieces`), each piece's
    ``(causal, pairs)`` for a backward through them. ``batch``/``heads`` are the mask's own (1 where
    it broadcasts).
    """

    q_len: int
    kv_len: int
    batch: int
    heads: int
    pairs: int
    rows: ListWork | None = None
    cols: ListWork | None = None
    pieces: tuple[tuple[bool, int], ...] | None = None

    @classmethod
    def from_classes(cls, classes: list[np.ndarray], shape: tuple[int, int, int, int], pairs: int) -> "Work":
        """From each slice's tile classes ``[tiles_m, tiles_n]`` (0 empty, 1 full, 2 partial)."""
        stacked = np.stack(classes)
        full, partial = stacked == 1, stacked == 2
        rows = ListWork.from_counts(full.sum(2).ravel(), partial.sum(2).ravel())
        cols = ListWork.from_counts(full.sum(1).ravel(), partial.sum(1).ravel())
        return cls(shape[2], shape[3], shape[0], shape[1], pairs, rows, cols)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"q_len": self.q_len, "kv_len": self.kv_len, "batch": self.batch, "heads": self.heads, "pairs": self.pairs}
        if self.rows is not None:
            d["rows"], d["cols"] = self.rows.as_dict(), self.cols.as_dict()
        if self.pieces is not None:
            d["pieces"] = [[causal, pairs] for causal, pairs in self.pieces]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "Work":
        if not isinstance(d, dict):
            raise PlanError("prediction work must be a map")
        ints = [d.get(k) for k in ("q_len", "kv_len", "batch", "heads", "pairs")]
        if not all(is_count(v) for v in ints) or min(ints[:4]) < 1:
            raise PlanError("prediction work must hold positive q_len, kv_len, batch, heads and a pairs count")
        pieces = d.get("pieces")
        if pieces is not None:
            if not (isinstance(pieces, list) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], bool) and is_count(p[1]) for p in pieces)):
                raise PlanError("prediction work pieces must be a list of [causal, pairs]")
            pieces = tuple((p[0], p[1]) for p in pieces)
        if "rows" in d:
            return cls(*ints, ListWork.from_dict(d["rows"]), ListWork.from_dict(d.get("cols")), pieces)
        return cls(*ints, pieces=pieces)


@dataclass(frozen=True, order=True)
class Candidate:
    """One way to run a mask: a variant, a tile size, whether the tokens are reordered, and whether
    the backward runs through the mask's dense pieces instead of the tile kernels."""

    variant: str
    block: tuple[int, int]
    reordered: bool = False
    pieces: bool = False

    @property
    def name(self) -> str:
        if self.variant in DENSE_VARIANTS:
            return self.variant
        return f"{self.variant}/{self.block[0]}x{self.block[1]}{'+rcm' if self.reordered else ''}{'+pieces' if self.pieces else ''}"

    @property
    def kernel(self) -> str | None:
        """The tile kernel it runs (None for dense SDPA)."""
        return None if self.variant in DENSE_VARIANTS else self.variant



def work_of(plan: Plan) -> Work:
    """A compiled plan's own work (its lists; the visible pairs of a dense plan)."""
    work = Work(plan.q_len, plan.kv_len, plan.batch, plan.heads, plan.visible_pairs)
    if plan.variant in DENSE_VARIANTS:
        return work
    lists = []
    for prefix in ("row", "col"):
        full = plan.arrays[f"{prefix}_full"].astype(np.int64)
        lists.append(ListWork.from_counts(full, np.diff(plan.arrays[f"{prefix}_ptr"].astype(np.int64)) - full))
    return Work(work.q_len, work.kv_len, work.batch, work.heads, work.pairs, *lists, pieces_work(plan.arrays["pieces"]))


def pieces_work(pieces: np.ndarray) -> tuple[tuple[bool, int], ...] | None:
    """``(causal, pairs)`` of each dense piece (``[n, 5]`` rows as in a plan), None for no pieces."""
    if pieces.shape[0] == 0:
        return None
    return tuple((bool(c), int(p)) for c, p in zip(pieces[:, 4], piece_pairs(pieces)))


def plan_candidate(plan: Plan) -> Candidate:
    """The candidate a plan is."""
    return Candidate(plan.variant, (plan.block_m, plan.block_n), plan.reordered, plan.arrays["pieces"].shape[0] > 0)


