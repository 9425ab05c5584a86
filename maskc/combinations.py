"""Masks made of other masks: stacks over heads or batch, unions and intersections.

Each combination checks that its operands' shapes fit together when it is made, and gives its
interval vectors from theirs when all of them have some and the result still fits the form.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from maskc import intervals as iv_form
from maskc.errors import MaskError
from maskc.sources import MaskSource, check_rows

DIMS = ("heads", "batch")


class Stack(MaskSource):
    """Equally shaped single masks stacked along the heads or the batch dimension."""

    def __init__(self, sources: Sequence[MaskSource], dim: str):
        first = sources[0]
        for i, source in enumerate(sources):
            if source.shape[:2] != (1, 1):
                raise MaskError(f"stack: sources[{i}] ({source.name}) has batch and heads {list(source.shape[:2])}; only single masks (1, 1) can be stacked")
            if source.shape != first.shape:
                raise MaskError(f"stack: sources[{i}] ({source.name}) has shape {list(source.shape[2:])}, but sources[0] has {list(first.shape[2:])}")
        self.sources, self.dim = list(sources), dim
        _, _, nq, nk = first.shape
        count = len(self.sources)
        self.shape = (1, count, nq, nk) if dim == "heads" else (count, 1, nq, nk)
        names = [s.name for s in self.sources]
        self.name = f"stack({dim}={count}: {names[0]})" if len(set(names)) == 1 else f"stack({dim}: {', '.join(names)})"

    def rows(self, b: int, h: int, start: int, stop: int) -> np.ndarray:
        check_rows(self, b, h, start, stop)
        return self.sources[h if self.dim == "heads" else b].rows(0, 0, start, stop)

    def intervals(self) -> np.ndarray | None:
        """Slice ``s`` is source ``s``: their vectors stacked, when every source has them."""
        parts = [source.intervals() for source in self.sources]
        return None if any(p is None for p in parts) else np.concatenate(parts)


class Combination(MaskSource):
    """The element-wise OR (:func:`~maskc.library.union`) or AND
    (:func:`~maskc.library.intersection`) of masks of one ``[q_len, kv_len]``, broadcast over batch
    and heads."""

    def __init__(self, op: str, sources: Sequence[MaskSource]):
        first = sources[0]
        for i, source in enumerate(sources):
            if source.shape[2:] != first.shape[2:]:
                raise MaskError(f"{op}: sources[{i}] ({source.name}) is {list(source.shape[2:])}, but sources[0] is {list(first.shape[2:])}")
        batch, heads = max(s.batch for s in sources), max(s.heads for s in sources)
        for i, source in enumerate(sources):
            if source.batch not in (1, batch) or source.heads not in (1, heads):
                raise MaskError(f"{op}: sources[{i}] ({source.name}) has batch and heads {list(source.shape[:2])}, which do not broadcast to {[batch, heads]}")
        self.op, self.sources = op, list(sources)
        self.shape = (batch, heads, *first.shape[2:])
        self.name = f"{op}({', '.join(s.name for s in self.sources)})"

    def rows(self, b: int, h: int, start: int, stop: int) -> np.ndarray:
        check_rows(self, b, h, start, stop)
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
