"""Tile lists in fixed-capacity ELL form, and the pure-torch way to build them from visible runs.

:class:`TileLists` is the layout the kernels read: row list ``r = s * tiles_m + m`` holds entries
``[row_lo[r], row_hi[r])`` of ``row_col``/``row_tile`` inside its own capacity of ``tiles_n``
entries starting at ``r * tiles_n``; column lists likewise with capacity ``tiles_m``. The entries
are exactly those of the CSR lists that ``maskc.runtime.format.tile_lists`` derives from the same
interval vectors, in the same order (full tiles first, then partial ones, each by ascending tile),
so a bound plan and the static interval plan of the same mask are walked identically. Entries past
``hi`` are never read and hold anything.

:func:`lists_torch` builds them with torch operations only (the reference backend's path, and the
oracle of the Triton path); :func:`lists_csr` reads them back into the plan file's CSR form (a host
copy, for checks and tools).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from maskc.runtime.device import ListTensors
from maskc.runtime.format import FULL_TILE, INTERVAL_TILE, LIST_ARRAYS, LTS, UTE

EMPTY, FULL, PARTIAL = 0, 1, 2  # tile classes


@dataclass(frozen=True)
class TileLists(ListTensors):
    """The row and column lists of one bound step, int32 tensors on the step's device, for
    ``tiles_m = ceil(q_len / block_m)`` query tiles and ``tiles_n = ceil(kv_len / block_n)`` key tiles.

    ``row_lo/row_hi/row_full`` are ``[slices * tiles_m]``; ``row_col/row_tile`` are
    ``[slices * tiles_m * tiles_n]`` (capacity ``tiles_n`` per list). ``col_*`` likewise with
    ``tiles_n`` lists of capacity ``tiles_m``. Tile ids: -1 full, -2 partial (rebuilt from the
    intervals). ``row_full[r]`` counts the full entries at the front of list ``r``.
    """

    q_len: int
    kv_len: int
    block_m: int
    block_n: int
    slices: int


def tile_classes_torch(intervals: torch.Tensor, q_len: int, block_m: int, block_n: int) -> torch.Tensor:
    """Exact tile classes ``[S, tiles_m, tiles_n]`` (int8: 0 empty, 1 full, 2 partial) of canonical
    one-run vectors (:func:`~maskc.runtime.family.runs.intervals_from_runs`).

    Column ``j`` sees rows ``[UTE_j, LTS_j)``. A tile is full iff every in-bounds column's run covers
    its rows (the key tile's largest start is at most its first row and smallest end at least its
    last row + 1); it is not empty iff some column's run meets its rows: per key tile, the union of
    the columns' query-tile ranges, counted by a difference array over query tiles.
    """
    slices, _, kv_len = intervals.shape
    tiles_m, tiles_n = -(-q_len // block_m), -(-kv_len // block_n)
    start, end = intervals[:, UTE].long(), intervals[:, LTS].long()
    pad = tiles_n * block_n - kv_len
    max_start = torch.nn.functional.pad(start, (0, pad), value=0).view(slices, tiles_n, block_n).amax(-1)
    min_end = torch.nn.functional.pad(end, (0, pad), value=q_len).view(slices, tiles_n, block_n).amin(-1)
    first_row = torch.arange(tiles_m, device=intervals.device) * block_m
    last_row = (first_row + block_m).clamp(max=q_len)
    full = (max_start[:, None, :] <= first_row[None, :, None]) & (min_end[:, None, :] >= last_row[None, :, None])

    seen = (start < end).to(torch.int32)
    key_tile = torch.arange(kv_len, device=intervals.device) // block_n
    base = (torch.arange(slices, device=intervals.device)[:, None] * tiles_n + key_tile) * (tiles_m + 1)
    diff = torch.zeros(slices * tiles_n * (tiles_m + 1), dtype=torch.int32, device=intervals.device)
    diff.index_add_(0, (base + start // block_m).reshape(-1), seen.reshape(-1))
    diff.index_add_(0, (base + (end - 1) // block_m + 1).reshape(-1), -seen.reshape(-1))
    covered = diff.view(slices, tiles_n, tiles_m + 1).cumsum(-1)[..., :tiles_m].transpose(1, 2) > 0
    return torch.where(full, FULL, torch.where(covered, PARTIAL, EMPTY)).to(torch.int8)


def lists_torch(intervals: torch.Tensor, q_len: int, block_m: int, block_n: int) -> TileLists:
    """The ELL lists of canonical one-run vectors ``[S, 4, kv]``, with torch operations only."""
    classes = tile_classes_torch(intervals, q_len, block_m, block_n)
    rows = _ell(classes)
    cols = _ell(classes.transpose(1, 2))
    return TileLists(*rows, *cols, q_len=q_len, kv_len=intervals.shape[-1], block_m=block_m, block_n=block_n, slices=intervals.shape[0])


def _ell(classes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(lo, hi, full, other, tile)`` of the lists of ``classes [S, lists, other]``: a stable sort of
    each list's tiles by class rank (full, partial, empty) puts its entries in order at its front."""
    rank = torch.where(classes == FULL, 0, torch.where(classes == PARTIAL, 1, 2)).to(torch.int8)
    order = torch.sort(rank, dim=-1, stable=True).indices
    capacity = classes.shape[-1]
    lo = torch.arange(classes.shape[0] * classes.shape[1], device=classes.device, dtype=torch.int32) * capacity
    count = (classes != EMPTY).sum(-1, dtype=torch.int32).reshape(-1)
    full = (classes == FULL).sum(-1, dtype=torch.int32).reshape(-1)
    tile = torch.where(torch.gather(classes, -1, order) == FULL, FULL_TILE, INTERVAL_TILE)
    return lo, lo + count, full, order.to(torch.int32).reshape(-1), tile.to(torch.int32).reshape(-1)


def lists_csr(lists: TileLists) -> dict[str, np.ndarray]:
    """The lists in the plan file's CSR form (``row_ptr``, ``row_full``, ``row_col``, ...), as numpy
    int32 arrays on the host: exactly what ``maskc.runtime.format.tile_lists`` gives for the same
    intervals. A host copy and synchronisation: for checks and tools, never in a step."""
    out: dict[str, np.ndarray] = {}
    for prefix, other in (("row", "col"), ("col", "row")):
        lo, hi = (getattr(lists, f"{prefix}_{name}").cpu().numpy().astype(np.int64) for name in ("lo", "hi"))
        take = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)] + [np.zeros(0, dtype=np.int64)])
        out[f"{prefix}_ptr"] = np.concatenate([[0], np.cumsum(hi - lo)])
        out[f"{prefix}_full"] = getattr(lists, f"{prefix}_full").cpu().numpy()
        out[f"{prefix}_{other}"] = getattr(lists, f"{prefix}_{other}").cpu().numpy()[take]
        out[f"{prefix}_tile"] = getattr(lists, f"{prefix}_tile").cpu().numpy()[take]
    return {name: np.ascontiguousarray(out[name], dtype="<i4") for name in LIST_ARRAYS}

