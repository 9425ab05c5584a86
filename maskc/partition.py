"""Ways to split a sequence's query tiles over ranks, each a function from per-tile numbers to the
rank of every tile (``owner``, int64 ``[tiles]``).

maskc's own two balance the cost model's predicted work of each tile row (``weights``):

- :func:`contiguous`: ``ranks`` consecutive runs of tiles whose heaviest run is as light as
  consecutive runs can be (a bisection on the bottleneck, each step a greedy O(ranks · log tiles)
  feasibility test on prefix sums). Neighbouring rows read neighbouring keys, so a rank needs few
  key tiles beyond its own for local masks (windows, documents);
- :func:`lpt`: longest processing time first: tiles by descending weight, each to the rank with the
  least work so far. Finer balance, scattered rows.

The baselines the systems in use today apply, for comparison on the same masks and cost model:

- :func:`head_tail`: ``2 · ranks`` equal chunks, rank ``i`` taking chunks ``i`` and
  ``2 · ranks - 1 - i`` (PyTorch context parallel's default; chunks in whole tiles here);
- :func:`ptrr`: PyTorch's processing-time round robin: a tile's processing time is the number of
  key tiles its row visits (FlexAttention's block counts); tiles by descending time (ties in tile
  order) are dealt to the ranks in rounds, alternately forwards and backwards. PyTorch requires the
  tile count to be a multiple of ``ranks``; here the last round may be short.
"""

from __future__ import annotations

import heapq

import numpy as np

BISECTION_STEPS = 64  # halvings of the bottleneck interval: far below one tile's weight in float64


def contiguous(weights: np.ndarray, ranks: int) -> np.ndarray:
    """Consecutive runs of tiles, one per rank in order, minimising the heaviest run's weight."""
    weights = np.asarray(weights, dtype=np.float64)
    prefix = np.concatenate([[0.0], np.cumsum(weights)])
    lo, hi = max(float(weights.max(initial=0.0)), prefix[-1] / ranks), float(prefix[-1])
    bounds = _bounds(prefix, ranks, hi)
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        if not lo < mid < hi:
            break
        found = _bounds(prefix, ranks, mid)
        if found is None:
            lo = mid
        else:
            hi, bounds = mid, found
    return np.repeat(np.arange(ranks), np.diff(bounds))


def _bounds(prefix: np.ndarray, ranks: int, limit: float) -> np.ndarray | None:
    """Run boundaries ``[ranks + 1]`` with no run heavier than ``limit`` and none empty, taking
    each run as long as it may be (leaving one tile for every later run), or None if impossible."""
    tiles = prefix.size - 1
    bounds = np.zeros(ranks + 1, dtype=np.int64)
    slack = limit * 1e-12  # prefix sums are rounded: a run at the limit must fit
    for r in range(ranks):
        start = bounds[r]
        stop = int(np.searchsorted(prefix, prefix[start] + limit + slack, side="right")) - 1
        stop = min(stop, tiles - (ranks - 1 - r))
        if stop <= start:
            return None
        bounds[r + 1] = stop
    return bounds if bounds[-1] == tiles else None


def lpt(weights: np.ndarray, ranks: int) -> np.ndarray:
    """Heaviest tile first, each to the rank with the least weight so far (then the fewest tiles,
    then the lowest rank), so every rank gets a tile while there are as many tiles as ranks."""
    weights = np.asarray(weights, dtype=np.float64)
    owner = np.empty(weights.size, dtype=np.int64)
    heap = [(0.0, 0, r) for r in range(ranks)]
    for t in np.argsort(-weights, kind="stable"):
        load, count, r = heapq.heappop(heap)
        owner[t] = r
        heapq.heappush(heap, (load + float(weights[t]), count + 1, r))
    return owner


def head_tail(tiles: int, ranks: int) -> np.ndarray:
    """Chunk ``i`` and chunk ``2 · ranks - 1 - i`` of ``2 · ranks`` near-equal chunks to rank ``i``."""
    chunk = np.repeat(np.arange(2 * ranks), [c.size for c in np.array_split(np.arange(tiles), 2 * ranks)])
    return np.minimum(chunk, 2 * ranks - 1 - chunk)


def ptrr(times: np.ndarray, ranks: int) -> np.ndarray:
    """Tiles by descending processing time dealt in rounds of ``ranks``, every other round backwards."""
    order = np.argsort(-np.asarray(times), kind="stable")
    position = np.arange(order.size)
    round_, seat = np.divmod(position, ranks)
    owner = np.empty(order.size, dtype=np.int64)
    owner[order] = np.where(round_ % 2 == 0, seat, ranks - 1 - seat)
    return owner
