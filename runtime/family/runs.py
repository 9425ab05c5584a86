"""Visible runs: the one run of query rows that sees each key column, and the torch operations the
binders build them from.

:class:`Runs` is what every family binder returns and what :func:`maskc.runtime.family.bind` turns
into interval vectors and tile lists. :func:`intervals_from_runs` is the canonical interval form of
a run (``plans/FORMAT.md``), the rule the Triton path applies in its first kernel too.
:func:`run_bounds` and :func:`segment_starts` find, for every token, the ends of the maximal run of
tokens it belongs to (a document, a group, an answer) with scans: no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskc.runtime.format import LTE, LTS, UTE, UTS


@dataclass(frozen=True)
class Runs:
    """Per mask slice ``s = b * heads + h`` and key column ``j``, query rows ``[start, end)`` see the key.

    ``start``/``end`` are ``[batch * heads, kv_len]`` integer tensors (any values: they are clamped
    to ``[0, q_len]`` and an empty run masks the whole column when bound). For families bound in a
    sorted order, ``perm_q [slices, q_len]`` and ``perm_k [slices, kv_len]`` (int32) give the
    caller's token at each sorted position, and the runs are in sorted coordinates: the bound mask
    is ``M'[s, i, j] = M[s, perm_q[s, i], perm_k[s, j]]``. Without them, tokens keep their order.
    """

    start: torch.Tensor
    end: torch.Tensor
    q_len: int
    batch: int
    heads: int
    perm_q: torch.Tensor | None = None
    perm_k: torch.Tensor | None = None

    @property
    def slices(self) -> int:
        return self.batch * self.heads

    @property
    def kv_len(self) -> int:
        return self.start.shape[-1]


def intervals_from_runs(start: torch.Tensor, end: torch.Tensor, q_len: int) -> torch.Tensor:
    """Canonical interval vectors ``[S, 4, kv]`` int32 of runs ``[S, kv]``: rows ``[0, start)`` and
    ``[end, q_len)`` are masked (``UTS = 0, UTE = start, LTS = end, LTE = q_len``), and an empty run
    becomes ``start = end = q_len``, the whole column masked as the upper interval, exactly as the
    compiler writes it for the same mask."""
    start, end = start.clamp(0, q_len), end.clamp(0, q_len)
    empty = start >= end
    start = start.masked_fill(empty, q_len)
    end = end.masked_fill(empty, q_len)
    rows = {LTS: end, LTE: torch.full_like(end, q_len), UTS: torch.zeros_like(start), UTE: start}
    return torch.stack([rows[i] for i in range(4)], dim=1).to(torch.int32)


def segment_starts(ids: torch.Tensor) -> torch.Tensor:
    """Bools ``[B, N]``: where a maximal run of equal ``ids`` begins (always at token 0)."""
    new = torch.ones_like(ids, dtype=torch.bool)
    new[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return new


def run_bounds(new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For runs that begin where ``new [B, N]`` is set (``new[:, 0]`` must be), each token's run
    start and end (int64 ``[B, N]``): the last start at or before it, the next start after it (or N)."""
    n = new.shape[-1]
    j = torch.arange(n, device=new.device).expand_as(new)
    start = torch.cummax(torch.where(new, j, 0), dim=-1).values
    ends_here = torch.ones_like(new)
    ends_here[:, :-1] = new[:, 1:]
    reversed_ends = torch.where(ends_here, j + 1, n).flip(-1)
    end = torch.cummin(reversed_ends, dim=-1).values.flip(-1)
    return start, end
